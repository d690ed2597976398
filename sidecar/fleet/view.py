"""The fleet view: which sidecars report, what bundle each serves, and what is wrong.

Read from the store (every sidecar's shipped records and its shipper's last
report), so it answers for the whole fleet from one place. A sidecar whose
latest decision was made under another bundle revision than the fleet's
newest is *revision drift*, recorded as a finding (and resolved once it serves
the newest); gaps, forks and bad hashes come from the collectors
(continuity.py). Findings are shown, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from sidecar.fleet import store


@dataclass
class SidecarView:
    sidecar: str
    chains: int
    events: int
    last_event: str  # the newest record's own time
    last_received: str  # when the store received the newest record
    revision: str  # the bundle revision of its newest decision
    revision_since: str
    report: dict[str, Any] = field(default_factory=dict)
    reporting: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "sidecar": self.sidecar,
            "chains": self.chains,
            "events": self.events,
            "last_event": self.last_event,
            "last_received": self.last_received,
            "bundle_revision": self.revision,
            "reporting": self.reporting,
            "shipper": self.report,
        }


def fleet(conn: psycopg.Connection[Any], *, stale_s: float = 60.0) -> list[SidecarView]:
    rows = conn.execute(
        "SELECT sidecar, count(DISTINCT chain), count(*), max(time), max(received_at) "
        "FROM stepguard_events GROUP BY sidecar ORDER BY sidecar"
    ).fetchall()
    revisions = {
        s: (str(r or ""), str(t or ""))
        for s, r, t in conn.execute(
            "SELECT DISTINCT ON (sidecar) sidecar, "
            "convert_from(line, 'UTF8')::jsonb ->> 'policy_revision', time "
            "FROM stepguard_events WHERE kind = 'decision' ORDER BY sidecar, time DESC, seq DESC"
        ).fetchall()
    }
    reports = {
        s: (dict(r), at)
        for s, r, at in conn.execute(
            "SELECT sidecar, report, reported_at FROM stepguard_sidecars"
        ).fetchall()
    }
    now = datetime.now(UTC)
    out: list[SidecarView] = []
    names = sorted({r[0] for r in rows} | set(reports))
    by_name = {r[0]: r for r in rows}
    for name in names:
        _, chains, events, last_event, received = by_name.get(name, (name, 0, 0, "", None))
        revision, since = revisions.get(name, ("", ""))
        report, reported_at = reports.get(name, ({}, None))
        latest = max((t for t in (received, reported_at) if t is not None), default=None)
        view = SidecarView(
            name,
            int(chains),
            int(events),
            str(last_event or ""),
            received.isoformat() if received else "",
            revision or str(report.get("bundle_revision", "")),
            since,
            report,
            latest is not None and (now - latest).total_seconds() <= stale_s,
        )
        out.append(view)
    return out


def record_drift(conn: psycopg.Connection[Any], views: list[SidecarView]) -> str:
    """Findings for sidecars not serving the fleet's newest revision; resolve the rest.
    Returns the newest revision ("" when no decision was shipped yet)."""
    serving = [v for v in views if v.revision]
    if not serving:
        return ""
    newest = max(serving, key=lambda v: v.revision_since).revision
    for v in serving:
        if v.revision != newest:
            store.add_finding(
                conn,
                v.sidecar,
                "",
                -1,
                kind="revision_drift",
                message=(
                    f"serves bundle revision {v.revision[:16]}, the fleet's newest is "
                    f"{newest[:16]}: roll the sidecar (its policies were not updated)"
                ),
                detail={"revision": v.revision, "newest": newest},
            )
        else:
            conn.execute(
                "UPDATE stepguard_findings SET resolved_at = now() WHERE sidecar = %s AND "
                "kind = 'revision_drift' AND resolved_at IS NULL",
                (v.sidecar,),
            )
    return newest
