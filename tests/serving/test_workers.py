"""`stepguard serve --workers N`: worker processes that are one server (issue 19).

Real `stepguard serve` subprocesses, real sockets, real trails: the workers
answer as one process does, share the load over TCP and the Unix socket, take
a policy change each, report one health and one set of metrics, drain on
SIGTERM, and a worker killed with SIGKILL comes back with the same index and
continues its own audit chain.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.client import StepDecision, StepguardClient, spread_over_workers
from sidecar.core.errors import ConfigError
from sidecar.serving.config import build_settings, usable_cores
from tests.helpers import (
    POLICIES,
    ServeProcess,
    grant_request,
    notify_request,
    serve_process,
)

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]
WEDNESDAY_10 = "2026-11-25T10:00:00Z"
NO_NOTIFY = 'action == Action::"lookup_identity"'
# Other connections: gRPC shares a connection between channels to one target
# unless asked not to, and one connection reaches one worker.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def requests() -> list[dict[str, Any]]:
    """Allowed, denied by policy, denied for self-approval, and a malformed request."""
    bad = notify_request()
    bad["principal"] = {"id": bad["principal"]["id"]}  # no type
    return [notify_request(), grant_request(), grant_request(approver=None),
            grant_request(approver="maria"), bad]  # fmt: skip


def answer(decision: StepDecision) -> tuple[Any, ...]:
    """What must not depend on which process answered (the decision id does)."""
    return (
        decision.kind,
        decision.allowed,
        decision.reason,
        decision.determining_policies,
        decision.errors,
        decision.policy_revision,
        decision.max_credential_ttl,
    )


def get(address: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as resp:
        return str(resp.read().decode())


def healthz(server: ServeProcess) -> dict[str, Any]:
    return dict(json.loads(get(server.serving["metrics"], "/healthz")))


def until(check: Any, what: str, attempts: int = 600) -> Any:
    """Poll `check()` until it is truthy (a bounded number of tries, 50 ms apart)."""
    for _ in range(attempts):
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def events(trail: Path) -> list[dict[str, Any]]:
    lines = trail.read_text().splitlines() if trail.exists() else []
    return [json.loads(line) for line in lines if line]


def decisions_in(trail: Path) -> list[dict[str, Any]]:
    return [e for e in events(trail) if "decision" in e]


@contextmanager
def serving(tmp: Path, *extra: str, policies: Path = POLICIES) -> Iterator[ServeProcess]:
    args = (
        *("--policies", str(policies), "--listen", "127.0.0.1:0"),
        *("--socket", str(tmp / "grpc.sock"), "--metrics-listen", "127.0.0.1:0"),
        *("--audit-file", str(tmp / "audit.jsonl"), "--grace", "5"),
        *("--fixed-clock", WEDNESDAY_10, "--non-production"),
        *extra,
    )
    with serve_process(*args) as server:
        try:
            yield server
        finally:
            if server.proc.poll() is None:
                server.terminate()


def test_workers_answer_as_one_process_does_over_tcp_and_the_socket(tmp_path: Path) -> None:
    asked = requests()
    with (
        serving(tmp_path / "one", "--workers", "1") as one,
        StepguardClient(one.serving["grpc"]) as client,
    ):
        expected = [answer(client.authorize(r)) for r in asked]
    kinds = {e[0].name for e in expected}
    assert {"ALLOW", "DENY", "INVALID_REQUEST"} <= kinds, expected

    with serving(tmp_path / "two", "--workers", "2") as two:
        assert two.serving["workers"] == 2
        for _ in range(12):  # a new connection each time: the kernel picks a worker
            with StepguardClient(two.serving["grpc"], options=OWN_CONNECTION) as client:
                assert [answer(client.authorize(r)) for r in asked] == expected
        with StepguardClient(f"unix://{two.serving['socket']}") as client:
            for _ in range(6):  # round-robin over both worker sockets
                assert [answer(client.authorize(r)) for r in asked] == expected
            batch = client.authorize_batch(asked)
            assert [answer(d) for d in batch] == expected


def test_load_spreads_over_every_worker_over_tcp_and_the_socket(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "2") as server:
        trails = [tmp_path / "audit.w0.jsonl", tmp_path / "audit.w1.jsonl"]
        assert not (tmp_path / "audit.jsonl").exists()
        for _ in range(40):
            with StepguardClient(server.serving["grpc"], options=OWN_CONNECTION) as client:
                assert client.authorize(notify_request()).allowed
        by_tcp = [len(decisions_in(t)) for t in trails]
        assert sum(by_tcp) == 40 and all(by_tcp), by_tcp  # 2**-39: not by chance

        # One client on the well-known socket path reaches every worker.
        assert os.readlink(tmp_path / "grpc.sock") in ("grpc.w0.sock", "grpc.w1.sock")
        target, _ = spread_over_workers(f"unix://{tmp_path / 'grpc.sock'}", ())
        assert target == f"unix:{tmp_path / 'grpc.w0.sock'},{tmp_path / 'grpc.w1.sock'}"
        with StepguardClient(f"unix://{tmp_path / 'grpc.sock'}") as client:

            def grown() -> list[int] | None:
                assert client.authorize(notify_request()).allowed
                counts = [len(decisions_in(t)) for t in trails]
                return counts if all(c > n for c, n in zip(counts, by_tcp, strict=True)) else None

            warm = until(grown, "the client reaches both worker sockets", attempts=200)
            for _ in range(20):  # both connected: round-robin, call by call
                assert client.authorize(notify_request()).allowed
        by_socket = [len(decisions_in(t)) - n for t, n in zip(trails, warm, strict=True)]
        assert by_socket == [10, 10], by_socket

        # The well-known path answers clients that do not spread (grpcurl, other languages).
        plain = socket.socket(socket.AF_UNIX)
        plain.connect(str(tmp_path / "grpc.sock"))
        plain.close()
        assert server.terminate() == 0
    for trail in trails:
        done = subprocess.run(
            [*STEPGUARD, "audit", "verify", str(trail)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_default_is_one_worker_per_usable_core(tmp_path: Path) -> None:
    cores = usable_cores()
    with serving(tmp_path) as server:
        assert server.serving["workers"] == cores
        health = healthz(server)
        assert [w["worker"] for w in health["workers"]] == list(range(cores))
        assert health["ok"] is True and all(w["serving"] for w in health["workers"])
        names = ["audit.jsonl"] if cores == 1 else [f"audit.w{i}.jsonl" for i in range(cores)]
        with StepguardClient(f"unix://{server.serving['socket']}") as client:

            def everyone_decided() -> bool:
                assert client.authorize(notify_request()).allowed
                return all(decisions_in(tmp_path / n) for n in names)

            until(everyone_decided, "every worker decides", attempts=200)


def test_health_and_metrics_are_those_of_all_workers(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "2") as server:
        health = healthz(server)
        assert health["ok"] is True and health["audit_healthy"] is True
        assert len({w["pid"] for w in health["workers"]}) == 2
        assert health["policy_revision"] == health["workers"][0]["policy_revision"]
        with StepguardClient(f"unix://{server.serving['socket']}") as client:
            for _ in range(6):
                assert client.authorize(notify_request()).allowed
            assert not client.authorize(grant_request(approver=None)).allowed
        text = get(server.serving["metrics"], "/metrics")
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("stepguard_")
        }
        allowed = sum(v for k, v in samples.items() if k.startswith(
            'stepguard_decisions_total{') and 'decision="ALLOW"' in k)  # fmt: skip
        assert allowed == 6  # counted in two processes, served as one sum
        assert samples["stepguard_audit_healthy"] == 1
        revision = health["policy_revision"]
        assert samples[f'stepguard_policy_revision_info{{revision="{revision}"}}'] == 1
        assert samples["stepguard_policies_loaded"] == health["policies"]
        assert "pid=" not in text  # one series per metric, not one per worker
        # The chart's exec probe: `stepguard healthcheck` over the well-known socket path.
        probe = subprocess.run(
            [
                *(*STEPGUARD, "healthcheck", "--socket", server.serving["socket"]),
                *("--service", "stepguard.v1.Authorizer"),
            ],
            capture_output=True,
            text=True,
        )
        assert probe.returncode == 0 and "SERVING" in probe.stdout, probe
        # gRPC health over the shared TCP port: whichever worker answers, all serve.
        for _ in range(4):
            with grpc.insecure_channel(server.serving["grpc"], options=OWN_CONNECTION) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                status = stub.Check(
                    health_pb2.HealthCheckRequest(service="stepguard.v1.Authorizer"), timeout=10
                ).status
                assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_policy_change_reaches_every_worker(tmp_path: Path) -> None:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root, ignore=shutil.ignore_patterns("tests"))
    run = tmp_path / "run"
    run.mkdir()
    with serving(run, "--workers", "2", "--watch", "--watch-interval", "0.05", policies=root) as s:
        before = healthz(s)["policy_revision"]
        sockets = [f"unix:{run / 'grpc.w0.sock'}", f"unix:{run / 'grpc.w1.sock'}"]
        for target in sockets:  # each worker's own socket: that worker answers
            with StepguardClient(target) as client:
                assert client.authorize(notify_request()).allowed
        source = root / "read_only.cedar"
        changed = source.read_text().replace('action in Action::"read-only"', NO_NOTIFY)
        (root / "read_only.cedar.new").write_text(changed)
        os.replace(root / "read_only.cedar.new", source)

        def everyone_moved() -> bool:
            health = healthz(s)
            return health["policy_revision"] not in (None, before) and health["ok"]

        until(everyone_moved, "every worker reloads")
        after = healthz(s)["policy_revision"]
        served = [
            line
            for line in get(s.serving["metrics"], "/metrics").splitlines()
            if line.startswith("stepguard_policy_revision_info")
        ]
        assert served == [f'stepguard_policy_revision_info{{revision="{after}"}} 1.0']
        for target in sockets:
            with StepguardClient(target) as client:
                decision = client.authorize(notify_request())
                assert not decision.allowed and decision.policy_revision != before
    for i in (0, 1):
        last = decisions_in(run / f"audit.w{i}.jsonl")[-1]
        assert last["decision"] == "DENY" and last["policy_revision"] != before


def test_sigterm_drains_every_worker_and_cleans_up(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "2") as server:
        pids = [w["pid"] for w in healthz(server)["workers"]]
        with StepguardClient(f"unix://{server.serving['socket']}") as client:
            for _ in range(4):
                assert client.authorize(notify_request()).allowed
        assert server.terminate() == 0
        log = server.stderr.read()
    both = [tmp_path / "audit.w0.jsonl", tmp_path / "audit.w1.jsonl"]
    assert sum(len(decisions_in(t)) for t in both) == 4
    assert log.count("sidecar.serving.server: stepguard stopped") == 2, log
    assert "stepguard supervisor stopped (clean)" in log
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("grpc"))
    assert left == []  # the link and every worker's socket are gone
    for i in (0, 1):
        trail = tmp_path / f"audit.w{i}.jsonl"
        assert trail.exists()
        done = subprocess.run([*STEPGUARD, "audit", "verify", str(trail)], capture_output=True)
        assert done.returncode == 0, done


def test_a_killed_worker_is_restarted_and_its_chain_continues(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "2", "--log-level", "WARNING") as server:
        w1 = tmp_path / "audit.w1.jsonl"
        with StepguardClient(f"unix:{tmp_path / 'grpc.w1.sock'}") as client:
            for _ in range(3):
                assert client.authorize(notify_request()).allowed
        seq_before = events(w1)[-1]["seq"]
        old = healthz(server)["workers"][1]["pid"]

        os.kill(old, signal.SIGKILL)
        # Meanwhile one health: not every worker serves, so no worker says SERVING.
        with grpc.insecure_channel(f"unix:{tmp_path / 'grpc.w0.sock'}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            ask = health_pb2.HealthCheckRequest(service="stepguard.v1.Authorizer")
            until(
                lambda: (
                    stub.Check(ask, timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING
                ),
                "worker 0 reports that worker 1 is down",
            )

        def back() -> dict[str, Any] | None:
            health = healthz(server)
            w = health["workers"][1]
            return health if health["ok"] and w["pid"] != old and w["serving"] else None

        health = until(back, "worker 1 is restarted")
        assert health["workers"][1]["restarts"] == 1
        assert health["workers"][0]["restarts"] == 0
        with StepguardClient(f"unix:{tmp_path / 'grpc.w1.sock'}") as client:
            for _ in range(3):
                assert client.authorize(notify_request()).allowed
        after = events(w1)
        assert after[-1]["seq"] > seq_before
        assert len(decisions_in(w1)) == 6
        assert server.terminate() == 0
    done = subprocess.run(
        [*STEPGUARD, "audit", "verify", str(tmp_path / "audit.w1.jsonl")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_taken_port_is_refused_with_workers(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        done = subprocess.run(
            [
                *(*STEPGUARD, "serve", "--policies", str(POLICIES), "--workers", "2"),
                *("--listen", f"127.0.0.1:{port}", "--metrics-listen", "off", "--socket", "off"),
                *("--audit-file", str(tmp_path / "audit.jsonl")),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        taken.close()
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_the_old_workers_setting_is_refused_with_its_new_name(tmp_path: Path) -> None:
    config = tmp_path / "stepguard.yaml"
    config.write_text("workers: 16\n")
    with pytest.raises(ConfigError, match="now `threads`") as refused:
        build_settings({}, {}, config)
    assert "worker_processes" in str(refused.value)
    with pytest.raises(ConfigError, match="now `threads`"):
        build_settings({}, {"STEPGUARD_WORKERS": "16"})
    config.write_text("threads: 4\nworker_processes: 3\naudit_file: a.jsonl\n")
    settings = build_settings({}, {}, config)
    assert (settings.threads, settings.workers) == (4, 3)
    assert build_settings({}, {"STEPGUARD_THREADS": "5"}).threads == 5
    (tmp_path / "old.yaml").write_text("workers: 8\n")
    done = subprocess.run(
        [*STEPGUARD, "serve", "--config", str(tmp_path / "old.yaml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "now `threads`" in done.stderr, done.stderr


def test_a_trail_on_stdout_takes_one_worker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes one writer"):
        build_settings({"worker_processes": 2, "audit_file": "-"})
    assert build_settings({"audit_file": "-"}).workers == 1  # the default adapts
    assert build_settings({"audit_file": str(tmp_path / "a.jsonl")}).workers == usable_cores()


@pytest.mark.parametrize(
    ("files", "affinity", "cores"),
    [
        ({"cpu.max": "150000 100000\n"}, 8, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "50000 100000\n"}, 8, 1),  # half a CPU: at least one
        ({"cpu.max": "max 100000\n"}, 8, 8),  # no quota: the affinity
        ({"cpu.max": "1600000 100000\n"}, 4, 4),  # more quota than cores: the cores
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 6, 6),
        ({}, 2, 2),  # no cgroup files at all
    ],
)
def test_usable_cores_reads_the_cgroup_quota(
    tmp_path: Path, files: dict[str, str], affinity: int, cores: int
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cores(tmp_path, affinity=affinity, proc_cgroup=tmp_path / "none") == cores


def test_usable_cores_follows_this_process_cgroup_and_its_parents(tmp_path: Path) -> None:
    """Without a private cgroup namespace the quota sits below the root, maybe on a parent."""
    pod = tmp_path / "kubepods.slice" / "pod1"
    container = pod / "cri-abc"
    container.mkdir(parents=True)
    (container / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.max").write_text("250000 100000\n")  # the pod's limit: 2.5 CPUs
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/kubepods.slice/pod1/cri-abc\n")
    assert usable_cores(tmp_path, affinity=16, proc_cgroup=proc) == 3
    (container / "cpu.max").write_text("100000 100000\n")  # tighter below: it wins
    assert usable_cores(tmp_path, affinity=16, proc_cgroup=proc) == 1


def test_the_client_spreads_only_over_worker_sockets(tmp_path: Path) -> None:
    well_known = tmp_path / "grpc.sock"
    held = []
    for name in ("grpc.w1.sock", "grpc.w0.sock", "grpc.w10.sock"):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / name))
        held.append(sock)
    (tmp_path / "grpc.w2.sock").write_text("not a socket")
    (tmp_path / "other.w3.sock").write_text("")
    try:
        target, options = spread_over_workers(f"unix://{well_known}", [("a", 1)])
        names = ["grpc.w0.sock", "grpc.w1.sock", "grpc.w10.sock"]
        assert target == "unix:" + ",".join(str(tmp_path / n) for n in names)
        assert list(options) == [("a", 1), ("grpc.lb_policy_name", "round_robin")]
        one = f"unix:{tmp_path / 'grpc.w0.sock'}"
        assert spread_over_workers(one, ()) == (one, ())  # a worker's own socket: as given
        assert spread_over_workers("127.0.0.1:1", ()) == ("127.0.0.1:1", ())
        assert spread_over_workers(f"unix:{tmp_path}/none.sock", ())[0].endswith("none.sock")
    finally:
        for sock in held:
            sock.close()


def test_each_worker_pins_its_chain_in_its_own_checkpoint_file(tmp_path: Path) -> None:
    pins = tmp_path / "pins"
    pins.mkdir()
    with serving(tmp_path, "--workers", "2", "--audit-checkpoints", str(pins / "ckpt.jsonl")) as s:
        with StepguardClient(f"unix://{s.serving['socket']}") as client:
            for _ in range(6):
                assert client.authorize(notify_request()).allowed
        assert s.terminate() == 0
    assert sorted(p.name for p in pins.iterdir()) == ["ckpt.w0.jsonl", "ckpt.w1.jsonl"]
    for i in (0, 1):
        trail, pinned = tmp_path / f"audit.w{i}.jsonl", pins / f"ckpt.w{i}.jsonl"
        done = subprocess.run(
            [*STEPGUARD, "audit", "verify", str(trail), "--checkpoints", str(pinned)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_sigterm_lets_every_worker_finish_its_open_calls(tmp_path: Path) -> None:
    """Draining, not killing: a stream open on each worker is still answered after SIGTERM."""
    with serving(tmp_path, "--workers", "2", "--grace", "60") as server:
        clients = [StepguardClient(f"unix:{tmp_path / f'grpc.w{i}.sock'}") for i in (0, 1)]
        streams = [client.stream() for client in clients]
        for stream in streams:
            assert stream.authorize(notify_request()).allowed
        log: list[str] = []
        reader = threading.Thread(target=lambda: log.extend(server.stderr), daemon=True)
        reader.start()
        server.proc.send_signal(signal.SIGTERM)
        until(  # the supervisor and each worker say they got it
            lambda: sum("signal 15: shutting down" in line for line in list(log)) == 3,
            "every process hears SIGTERM",
        )
        for stream in streams:  # their servers no longer accept calls, but finish these
            decision = stream.authorize(notify_request())
            assert decision.allowed and stream.broken == "", (decision, stream.broken)
        assert server.proc.poll() is None  # still draining: the streams are open
        for stream, client in zip(streams, clients, strict=True):
            stream.close()
            client.close()
        assert server.proc.wait(timeout=120) == 0
    for i in (0, 1):
        assert len(decisions_in(tmp_path / f"audit.w{i}.jsonl")) == 2


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """No orphan keeps the port or the trail: a worker whose supervisor is gone stops."""
    with serving(tmp_path, "--workers", "2") as server:
        pids = [w["pid"] for w in healthz(server)["workers"]]
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            try:  # a zombie (exited, not yet reaped by init) is gone too
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return True
            return stat.rsplit(")", 1)[1].split()[0] == "Z"

        until(lambda: all(gone(pid) for pid in pids), "both workers stop")
    for i in (0, 1):  # each closed its trail as on a SIGTERM
        trail = tmp_path / f"audit.w{i}.jsonl"
        done = subprocess.run([*STEPGUARD, "audit", "verify", str(trail)], capture_output=True)
        assert done.returncode == 0, done


def test_every_worker_serves_authzen_on_one_port(tmp_path: Path) -> None:
    """The AuthZEN port is shared like the gRPC one: new connections spread over the
    workers, each decision in the chain of the worker that made it."""
    from tests.serving.authzen.authzen_client import CERT, Pdp

    reads = {
        "subject": {"type": "user", "id": "alice"},
        "action": {"name": "read"},
        "resource": {"type": "record", "id": "record-1"},
    }
    extra = ("--workers", "2", "--authzen-listen", "127.0.0.1:0")
    answers = []
    with serving(tmp_path, *extra, policies=CERT) as server:
        assert server.serving["authzen"].startswith("127.0.0.1:"), server.serving
        for _ in range(40):  # a new connection each time: the kernel picks a worker
            pdp = Pdp(server.serving["authzen"])
            answers.append(pdp.evaluation({**reads, "options": {"stepguard_explain": True}}).json())
            pdp.close()
        assert server.terminate() == 0
    assert all(a["decision"] is True for a in answers)
    trails = [tmp_path / "audit.w0.jsonl", tmp_path / "audit.w1.jsonl"]
    ids = [{e["id"] for e in decisions_in(t)} for t in trails]
    assert all(ids), [len(i) for i in ids]  # both workers answered: 2**-39 not by chance
    assert {a["context"]["decision_id"] for a in answers} == ids[0] | ids[1]


def test_a_taken_authzen_port_stops_the_workers_before_they_start(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        args = (
            *("--policies", str(POLICIES), "--listen", "127.0.0.1:0"),
            *("--audit-file", str(tmp_path / "audit.jsonl"), "--workers", "2"),
            *("--authzen-listen", f"127.0.0.1:{port}"),
        )
        done = subprocess.run(
            [*STEPGUARD, "serve", *args], capture_output=True, text=True, timeout=120
        )
    finally:
        taken.close()
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert not list(tmp_path.glob("audit.w*.jsonl"))  # no worker started
