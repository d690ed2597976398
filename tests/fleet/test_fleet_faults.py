"""The fleet under faults, with real servers: a shipper killed mid-batch, a broker that is
down or full, and the retention hold on the sidecar's segments."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

from sidecar.client import StepguardClient
from tests.audit.trails import make_trail
from tests.fleet.fleet import (
    cli,
    collector,
    fleet_env,
    shipper,
    status,
    store_lines,
    stream_messages,
    trail_lines,
    wait_for,
)
from tests.fleet.servers import Nats, NatsNode, free_port, nats_server
from tests.helpers import notify_request, running_sidecar


def cursor_seqs(state: Path) -> dict[str, int]:
    try:
        data = json.loads((state / "cursor.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: int(v["seq"]) for k, v in data["chains"].items()}


def test_a_shipper_killed_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, nats: Nats, pg_dsn: str
) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    make_trail(trail, 4000, rotate_bytes=64 * 1024)
    lines = trail_lines(trail)
    state = tmp_path / "state"
    with shipper(trail, nats.urls, "pod-k", state=state) as ship:
        # the first acknowledged batch moved the cursor; later batches are in flight
        wait_for(lambda: bool(cursor_seqs(state)), ship.output)
        ship.stop(signal.SIGKILL)
        before = cursor_seqs(state)["audit.jsonl"]
        assert before < len(lines) - 1  # killed with records still to send
        ship.start()  # the same cursor: resends what was unacknowledged
        wait_for(lambda: cursor_seqs(state).get("audit.jsonl") == len(lines) - 1, ship.output)
    # the broker kept each record once: the repeats had the same Nats-Msg-Id
    assert stream_messages(nats.urls) == len(lines)
    with collector(pg_dsn, nats.urls, log_dir=tmp_path) as c:
        wait_for(lambda: store_lines(pg_dsn, "pod-k") == lines, c.output)
        # written to the store, acknowledged, then removed from the (work-queue) stream
        wait_for(lambda: stream_messages(nats.urls) == 0, c.output)


def test_a_full_stream_stops_shipping_and_says_so_while_decisions_go_on(
    tmp_path: Path, nats: Nats, pg_dsn: str
) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    state = tmp_path / "state"
    env = fleet_env(nats.urls)
    with running_sidecar(trail) as sidecar, StepguardClient(sidecar.tcp) as client:
        for _ in range(40):
            assert client.authorize(notify_request()).allowed
        with shipper(
            trail,
            nats.urls,
            "pod-f",
            "--metrics-listen",
            "127.0.0.1:0",
            state=state,
        ) as ship:
            ship.env["STEPGUARD_STREAM_MAX_BYTES"] = "20000"  # far less than the trail
            ship.stop()
            ship.start()
            wait_for(lambda: status(state).get("state") == "broker_full", ship.output)
            said = status(state)
            assert "is full" in said["message"] and "decisions go on" in said["message"]
            assert said["lag_events"] > 0
            shown = cli("ship", "--status", "--state-dir", str(state), env=env)
            assert shown.returncode == 1 and "broker_full" in shown.stdout
            # the sidecar does not wait for the shipper: decisions go on and are recorded
            for _ in range(20):
                assert client.authorize(notify_request()).allowed
            # a collector drains the stream: shipping resumes and catches up by itself
            with collector(pg_dsn, nats.urls, log_dir=tmp_path):
                wait_for(
                    lambda: store_lines(pg_dsn, "pod-f") == trail_lines(trail),
                    lambda: f"{len(store_lines(pg_dsn, 'pod-f'))} {status(state)}",
                )
                wait_for(lambda: status(state).get("state") == "caught_up", ship.output)
            ok = cli("ship", "--status", "--state-dir", str(state), env=env)
            assert ok.returncode == 0, ok.stdout


def test_a_broker_that_is_down_is_waited_for_and_the_lag_shown(tmp_path: Path, pg_dsn: str) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    make_trail(trail, 300)
    records = len(trail_lines(trail))  # the decisions, the segment header, the shutdown
    state = tmp_path / "state"
    root = tmp_path / "nats"
    root.mkdir()
    node = NatsNode("n1", root, free_port(), free_port())
    metrics_port = free_port()
    with shipper(
        trail, [node.url], "pod-d", "--metrics-listen", f"127.0.0.1:{metrics_port}", state=state
    ) as ship:
        wait_for(lambda: status(state).get("state") == "broker_unavailable", ship.output)
        assert status(state)["lag_events"] == records and status(state)["lag_seconds"] > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            text = r.read().decode()
        assert f"stepguard_ship_lag_events {records}.0" in text
        assert "stepguard_ship_up 0.0" in text
        node.start()  # the broker comes (back): the shipper catches up by itself
        try:
            node.wait_ready()
            wait_for(lambda: status(state).get("state") == "caught_up", ship.output)
            assert status(state)["lag_events"] == 0
            with collector(pg_dsn, [node.url], log_dir=tmp_path):
                wait_for(lambda: store_lines(pg_dsn, "pod-d") == trail_lines(trail), ship.output)
        finally:
            node.stop()


def test_rotated_segments_are_held_until_the_collectors_watermark_passes_them(
    tmp_path: Path, pg_dsn: str
) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    make_trail(trail, 600, rotate_bytes=8 * 1024)
    lines = trail_lines(trail)
    rotated = sorted(p.name for p in trail.iterdir() if p.name.startswith("audit.jsonl.0"))
    assert len(rotated) >= 4
    state = tmp_path / "state"
    root = tmp_path / "nats"
    root.mkdir()
    with (
        nats_server(root) as nats,
        shipper(trail, nats.urls, "pod-r", "--prune-committed", state=state) as ship,
    ):
        wait_for(lambda: status(state).get("state") == "caught_up", ship.output)
        # acknowledged by the broker, but in no store yet: every segment is held
        wait_for(lambda: status(state).get("time", "") > "", ship.output)
        held = sorted(p.name for p in trail.iterdir() if p.name.startswith("audit.jsonl.0"))
        assert held == rotated
        with collector(pg_dsn, nats.urls, log_dir=tmp_path) as c:
            wait_for(lambda: store_lines(pg_dsn, "pod-r") == lines, c.output)
            wait_for(
                lambda: (
                    sorted(p.name for p in trail.iterdir() if ".0000" in p.name) == rotated[-1:]
                ),
                lambda: str(sorted(p.name for p in trail.iterdir())) + ship.output(),
            )
        marks = json.loads((state / "watermark.json").read_text())
        assert marks["chains"] == {"audit.jsonl": len(lines) - 1}
    # what was pruned is in the store, and the store's trail verifies whole
    verified = cli("audit", "verify", "--store", pg_dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr
