"""The fleet on a three-node JetStream cluster (R3 stream) under a load of decisions: one
node (the stream's leader) and one of two collectors are killed with SIGKILL mid-load,
then restarted. Every record the sidecar's workers wrote reaches PostgreSQL exactly once,
and the store's trail verifies."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import nats as natslib

from sidecar.client import StepguardClient
from tests.fleet.fleet import (
    cli,
    collector,
    findings,
    serving,
    shipper,
    store_lines,
    trail_lines,
    wait_for,
)
from tests.fleet.servers import nats_cluster
from tests.fleet.test_fleet_roundtrip import serve_args
from tests.helpers import notify_request

MAX_DECISIONS = 6000  # the load is bounded in count, and paced
PACE_S = 0.004  # about 250 decisions a second: the faults happen while it runs


class Load:
    """Decisions from one client thread until stopped (or MAX_DECISIONS)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.done = 0
        self.allowed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with StepguardClient(self.target) as client:
            while not self.stop.is_set() and self.done < MAX_DECISIONS:
                request = notify_request()
                request["context"]["run_id"] = f"r{self.done}"
                if client.authorize(request).allowed:
                    self.allowed += 1
                self.done += 1
                self.stop.wait(PACE_S)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def stream_leader(urls: list[str]) -> str:
    async def go() -> str:
        nc = await natslib.connect(servers=urls)
        try:
            info = await nc.jetstream().stream_info("STEPGUARD_AUDIT")
            assert info.cluster is not None
            return str(info.cluster.leader)
        finally:
            await nc.close()

    return asyncio.run(go())


def test_a_node_and_a_collector_killed_under_load_lose_and_duplicate_nothing(
    tmp_path: Path, pg_dsn: str
) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    root = tmp_path / "nats"
    root.mkdir()
    with (
        nats_cluster(root) as cluster,
        # one trail of the directory, named by its file (as the chart does: a pod's own)
        shipper(trail / "audit.jsonl", cluster.urls, "pod-c", replicas=3) as ship,
        collector(pg_dsn, cluster.urls, name="c1", log_dir=tmp_path, replicas=3) as c1,
        collector(pg_dsn, cluster.urls, name="c2", log_dir=tmp_path, replicas=3),
    ):
        with serving(*serve_args(trail, "--workers", "2"), log=tmp_path / "serve.log") as (
            server,
            target,
        ):
            load = Load(target)
            try:
                wait_for(lambda: len(store_lines(pg_dsn, "pod-c")) > 200, ship.output)
                leader = next(n for n in cluster.nodes if n.name == stream_leader(cluster.urls))
                leader.kill()
                c1.kill()
                at_kill = load.done
                wait_for(lambda: load.done > at_kill + 500, "decisions without a node, collector")
                assert load.thread.is_alive()
                leader.start()
                c1.start()
                leader.wait_ready()
                at_restart = load.done
                wait_for(lambda: load.done > at_restart + 300, "decisions after the restarts")
                assert load.thread.is_alive()  # the faults came and went under load
            finally:
                load.finish()
            server.terminate()  # SIGTERM, as Kubernetes stops a pod
            assert server.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert load.done == load.allowed  # the sidecar never waited on the fleet
        files = trail_lines(trail)  # everything the workers wrote, shutdown records too
        wait_for(
            lambda: store_lines(pg_dsn, "pod-c") == files,
            lambda: f"{len(store_lines(pg_dsn, 'pod-c'))} of {len(files)}: {ship.output()}",
            timeout=120,
        )
    # exactly once: every (chain, seq) is one row with the sidecar's own bytes
    assert store_lines(pg_dsn, "pod-c") == files
    assert {c for c, _ in files} == {"audit.w0.jsonl", "audit.w1.jsonl"}
    assert findings(pg_dsn) == []
    verified = cli("audit", "verify", "--store", pg_dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr
