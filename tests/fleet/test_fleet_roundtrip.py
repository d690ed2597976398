"""Ship and collect for real: a sidecar's trail (two workers' chains, rotated segments) goes
through a real nats-server into a real PostgreSQL, exactly once, and `audit query`,
`audit verify` and `evidence` give the same answers on the store as on the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from sidecar.client import StepguardClient
from sidecar.fleet import store
from tests.fleet.fleet import (
    cli,
    collector,
    findings,
    shipper,
    status,
    store_lines,
    trail_lines,
    wait_for,
)
from tests.fleet.servers import Nats
from tests.helpers import POLICIES, grant_request, notify_request, serve_process


def serve_args(trail: Path, *extra: str) -> tuple[str, ...]:
    return (
        *("--policies", str(POLICIES), "--listen", "127.0.0.1:0", "--socket", "off"),
        *("--metrics-listen", "off", "--audit-file", str(trail / "audit.jsonl")),
        *("--audit-rotate-bytes", "4096", *extra),
    )


def decide(target: str, n: int) -> None:
    with StepguardClient(target) as client:
        for i in range(n):
            request: dict[str, Any] = grant_request() if i % 3 == 0 else notify_request()
            request["context"]["run_id"] = f"r{i}"
            client.authorize(request)


def without_paths(out: str) -> list[Any]:
    """JSON lines of a command, minus what names the files they came from."""
    found = []
    for line in out.splitlines():
        obj = json.loads(line)
        for key in ("trail", "files", "part_of", "problem", "unchecked", "notes"):
            obj.pop(key, None)
        found.append(obj)
    return found


def test_a_trail_reaches_the_store_once_and_answers_the_same(
    tmp_path: Path, nats: Nats, pg_dsn: str
) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    with serve_process(*serve_args(trail, "--workers", "2")) as server:
        decide(server.serving["grpc"], 60)
        with (
            shipper(trail, nats.urls, "pod-a") as ship,
            collector(pg_dsn, nats.urls, log_dir=tmp_path),
        ):
            wait_for(
                lambda: len(store_lines(pg_dsn, "pod-a")) == len(trail_lines(trail)),
                lambda: (
                    f"{len(store_lines(pg_dsn, 'pod-a'))} of {len(trail_lines(trail))}; "
                    + ship.output()
                ),
            )
            decide(server.serving["grpc"], 30)  # more while shipping: followed live
            assert server.terminate() == 0
            wait_for(
                lambda: store_lines(pg_dsn, "pod-a") == trail_lines(trail),
                lambda: ship.output(),
            )
            state = trail.parent / "ship-state-pod-a"
            wait_for(lambda: status(state).get("lag_events") == 0, lambda: str(status(state)))
    files = trail_lines(trail)
    chains = {c for c, _ in files}
    assert chains == {"audit.w0.jsonl", "audit.w1.jsonl"}
    assert any(p.name.endswith(".000001") for p in trail.iterdir())  # it rotated
    # every record once, byte for byte
    assert store_lines(pg_dsn, "pod-a") == files
    assert findings(pg_dsn) == []
    with psycopg.connect(pg_dsn) as conn:
        assert store.count(conn) == len(files)
        wm: dict[str, int] = dict(
            conn.execute(
                "SELECT chain, seq FROM stepguard_watermarks WHERE sidecar = 'pod-a'"
            ).fetchall()
        )
    assert wm == {c: max(q for cc, q in files if cc == c) for c in chains}

    # the same answers from the store as from the files
    on_files = cli("audit", "query", str(trail), "--all-kinds", "--format", "json")
    on_store = cli("audit", "query", "--store", pg_dsn, "--all-kinds", "--format", "json")
    assert on_files.returncode == on_store.returncode == 0, on_store.stderr
    assert on_store.stdout == on_files.stdout and on_files.stdout.count("\n") == len(files)
    denied = ("--decision", "DENY", "--format", "csv")
    assert (
        cli("audit", "query", "--store", pg_dsn, *denied).stdout
        == cli("audit", "query", str(trail), *denied).stdout
    )
    v_files = cli("audit", "verify", "--json", "--accept-missing-anchor", str(trail))
    v_store = cli("audit", "verify", "--json", "--store", pg_dsn)
    assert v_files.returncode == v_store.returncode == 0, v_store.stdout + v_store.stderr
    assert without_paths(v_store.stdout) == without_paths(v_files.stdout)
    e_files = cli("evidence", "exceptions", "--json", "--accept-missing-anchor", str(trail))
    e_store = cli("evidence", "exceptions", "--json", "--store", pg_dsn)
    assert e_files.returncode == e_store.returncode == 0, e_store.stderr
    a, b = json.loads(e_files.stdout), json.loads(e_store.stdout)
    for answer in (a, b):  # the chains' paths differ (a temp dir for the store): their names
        for chain in answer["verification"]["chains"]:
            chain["chain"] = Path(chain["chain"]).name
            chain["trail"] = Path(chain["trail"]).name
    assert a == b and a["verification"]["ok"]

    # the fleet view: one sidecar, its bundle, no finding
    fleet = cli("fleet", "status", "--store", pg_dsn, "--json")
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    view = json.loads(fleet.stdout)
    [pod] = view["sidecars"]
    assert pod["sidecar"] == "pod-a" and pod["events"] == len(files)
    assert pod["bundle_revision"] and pod["bundle_revision"] == view["newest_revision"]
    assert view["open_findings"] == 0
