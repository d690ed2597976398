"""`stepguard fleet status`: the sidecars reporting, their bundles, lag and findings."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sidecar.cli.collect import store_flag
from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_FAILED, EXIT_OK
from sidecar.core.textsafe import escape


def register(subparsers: Any) -> None:
    fleet = subparsers.add_parser("fleet", help="the fleet seen from the central store")
    sub = fleet.add_subparsers(required=True, metavar="COMMAND")
    status = sub.add_parser(
        "status",
        help="sidecars reporting, bundle revisions, last shipped, integrity findings",
        description="Read the store: every sidecar that shipped records, its bundle "
        "revision, when it last shipped, its shipper's lag; revision drift (a sidecar "
        "serving an older bundle) is recorded as a finding. Exit 3 while any finding is open.",
    )
    store_flag(status, help_text="the PostgreSQL store")
    status.add_argument(
        "--stale",
        type=float,
        default=60.0,
        help="seconds of silence before a sidecar counts as not reporting",
    )
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    from sidecar.fleet import store, view

    dsn = args.store or os.environ.get("STEPGUARD_STORE", "")
    if not dsn:
        print("stepguard: error: fleet status needs --store postgresql://...", file=sys.stderr)
        return EXIT_ERROR
    with store.connect(dsn) as conn:
        conn.autocommit = True
        store.ensure_schema(conn)
        views = view.fleet(conn, stale_s=args.stale)
        newest = view.record_drift(conn, views)
        found = store.findings(conn)
    open_findings = [f for f in found if f.resolved_at is None]
    if args.json:
        out = {
            "sidecars": [v.to_json() for v in views],
            "newest_revision": newest,
            "findings": [f.to_json() for f in found],
            "open_findings": len(open_findings),
        }
        print(json.dumps(out, sort_keys=True, default=str))
    else:
        print(_table(views, newest))
        print()
        if found:
            print("findings:")
            for f in found:
                state = "open" if f.resolved_at is None else f"resolved {f.resolved_at}"
                where = f"{f.sidecar}/{f.chain}" + (f" seq {f.seq}" if f.seq >= 0 else "")
                print(escape(f"  {f.kind:<15} {where}: {f.message} ({state}, {f.found_at})"))
        else:
            print("findings: none")
    return EXIT_FAILED if open_findings else EXIT_OK


def _table(views: list[Any], newest: str) -> str:
    head = (
        "sidecar",
        "reporting",
        "bundle",
        "drift",
        "events",
        "last event",
        "last shipped",
        "lag",
        "state",
    )
    rows = [head]
    for v in views:
        lag = v.report.get("lag_events")
        rows.append(
            (
                v.sidecar,
                "yes" if v.reporting else "NO",
                v.revision[:12],
                "DRIFT" if v.revision and newest and v.revision != newest else "",
                str(v.events),
                v.last_event,
                str(v.report.get("last_shipped_at") or v.last_received),
                "" if lag is None else f"{lag} ({v.report.get('lag_seconds', 0)} s)",
                str(v.report.get("state", "")),
            )
        )
    widths = [max(len(escape(r[i])) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(escape(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
