"""The audit trail under a real `stepguard serve`: killed, starved of space, then healthy again.

Each test runs the real sidecar (a subprocess, or in-process Sidecar for the
tmpfs case) with real clients on loopback, and checks the trail on disk with
the real `stepguard audit verify`.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.audit.segments import collect
from sidecar.audit.verify import verify
from sidecar.core.jsonreq import request_from_json
from tests.conftest import missing
from tests.helpers import running_sidecar

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]
SERVICE = "stepguard.v1.Authorizer"
UNAVAILABLE = "audit trail unavailable"

SCHEMA = """
entity User;
entity Doc;
type Ctx = {
  now: datetime,
  workflow_id?: String,
  run_id?: String,
  step_id?: String,
  api_token?: String,
};
action read appliesTo { principal: [User], resource: [Doc], context: Ctx };
"""
POLICY = """
@id("alice-reads")
permit (principal == User::"alice", action == Action::"read", resource);
"""


USERS = ("alice", "bob", "carol")


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies")


def write_policies(directory: Path) -> Path:
    """The toy bundle these tests serve: alice reads, bob and carol are known."""
    directory.mkdir()
    (directory / "schema.cedarschema").write_text(SCHEMA)
    (directory / "read.cedar").write_text(POLICY)
    # The store says who the principals and resources are (request-entities.yaml: none).
    users = [{"uid": {"type": "User", "id": u}, "attrs": {}, "parents": []} for u in USERS]
    doc = {"uid": {"type": "Doc", "id": "d1"}, "attrs": {}, "parents": []}
    (directory / "entities.json").write_text(json.dumps([*users, doc]))
    return directory


def ask(who: str, run: str = "r", step: str = "s", token: str = "") -> pb.AuthorizeRequest:
    context: dict[str, Any] = {"workflow_id": "wf", "run_id": run, "step_id": step}
    if token:
        context["attributes"] = {"api_token": token}
    return request_from_json(
        {
            "principal": {"type": "User", "id": who},
            "action": {"type": "Action", "id": "read"},
            "resource": {"type": "Doc", "id": "d1"},
            "context": context,
        }
    )


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    grpc: str
    metrics: str | None
    log: Path


@contextmanager
def serve(
    tmp: Path,
    policies: Path,
    audit: Path,
    *extra: str,
    preexec_fn: Callable[[], None] | None = None,
    name: str = "serve",
) -> Iterator[Served]:
    """`stepguard serve` on 127.0.0.1:0; its log goes to a file (no pipe to fill up)."""
    log = tmp / f"{name}.log"
    said = tmp / f"{name}.stdout"  # the serving line (logs are on stderr)
    with log.open("wb") as out, said.open("wb") as stdout:
        proc = subprocess.Popen(
            [
                *STEPGUARD,
                "serve",
                "--policies",
                str(policies),
                "--listen",
                "127.0.0.1:0",
                "--audit-file",
                str(audit),
                *("--workers", "1"),  # one process: SIGKILL kills the writer itself
                *extra,
            ],
            stderr=out,
            stdout=stdout,
            preexec_fn=preexec_fn,  # only setrlimit and signal, before exec
        )
    try:
        serving = wait_serving(proc, said, log)
        yield Served(proc, serving["grpc"], serving.get("metrics"), log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def wait_serving(proc: subprocess.Popen[bytes], stdout: Path, log: Path) -> dict[str, Any]:
    """The serving line `stepguard serve` prints on stdout once it listens."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in stdout.read_text(errors="replace").splitlines():
            if line.startswith('{"event": "serving"'):
                loaded: dict[str, Any] = json.loads(line)
                return loaded
        if proc.poll() is not None:
            raise AssertionError(f"stepguard serve exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"stepguard serve did not start: {log.read_text()}")


def trail_decisions(audit: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for trail in collect([audit]):
        for seg in trail.segments:
            for raw in seg.read_bytes().splitlines():
                rec = json.loads(raw)
                if rec["kind"] == "decision":
                    out[rec["id"]] = rec
    return out


def trail_records(audit: Path, kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(raw)
        for trail in collect([audit])
        for seg in trail.segments
        for raw in seg.read_bytes().splitlines()
        if json.loads(raw)["kind"] == kind
    ]


def verify_cli(audit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPGUARD, "audit", "verify", str(audit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def health_of(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status)


def audit_gauge(metrics: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("stepguard_audit_healthy "):
            return float(line.split()[1])
    raise AssertionError("stepguard_audit_healthy is not exported")


def wait_for(check: Callable[[], bool], what: str | Callable[[], str], timeout: float = 60) -> None:
    """Poll; on a timeout, say what was awaited (a callable is asked only then)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.02)


@dataclass
class Load:
    """Clients that keep asking until stopped; every answer they receive is kept."""

    target: str
    who: Callable[[int], str]
    clients: int = 8
    answers: list[tuple[str, int, str]] = field(default_factory=list)  # id, decision, reason
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for k in range(self.clients):
            t = threading.Thread(target=self._run, args=(k,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _run(self, k: int) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            i = 0
            while not self.stop.is_set():
                try:
                    resp = stub.Authorize(ask(self.who(i), f"run-{k}", f"step-{i}"), timeout=10)
                except grpc.RpcError as exc:
                    self.failures.append(str(exc.code()))
                    return
                self.answers.append((resp.decision_id, resp.decision, resp.reason))
                i += 1

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["flush", "fsync"])
def test_sigkill_under_load_loses_no_answered_decision(
    tmp_path: Path, policies: Path, durability: str
) -> None:
    audit = tmp_path / "trail" / "audit.jsonl"
    flags = ("--metrics-listen", "off", "--audit-durability", durability)
    with serve(tmp_path, policies, audit, *flags, "--audit-rotate-bytes", "65536") as server:
        load = Load(server.grpc, lambda i: "alice" if i % 3 else "bob").start()
        wait_for(
            lambda: len(load.answers) >= 400,
            lambda: (
                f"400 answered decisions (got {len(load.answers)}, client errors "
                f"{load.failures}); server log: {server.log.read_text()[-2000:]}"
            ),
            timeout=120,
        )
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        load.finish()
    answered = list(load.answers)
    assert len(answered) >= 400
    assert load.failures, "the clients should have seen the server die"
    # A write torn by the crash (simulated: SIGKILL cannot cut a write(2) short).
    torn = b'{"seq":123456,"prev":"ab'
    with audit.open("ab") as f:
        f.write(torn)
    # Restart on the same trail: it recovers, continues the chain, answers again.
    with serve(tmp_path, policies, audit, *flags, name="restart") as server:
        with grpc.insecure_channel(server.grpc) as channel:
            after = pb_grpc.AuthorizerStub(channel).Authorize(ask("alice"), timeout=10)
        assert after.decision == pb.DECISION_ALLOW
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    trail = trail_decisions(audit)
    missing = [i for i, _, _ in answered if i not in trail]
    assert missing == [], f"{len(missing)} answered decisions are not in the trail"
    for decision_id, decision, _ in answered:
        want = "ALLOW" if decision == pb.DECISION_ALLOW else "DENY"
        assert trail[decision_id]["decision"] == want
    assert after.decision_id in trail
    assert len(collect([audit])[0].segments) > 1  # rotation happened under the load too
    kept = list(audit.parent.glob("audit.jsonl.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn
    recovery = trail_records(audit, "recovery")
    assert [(r["reason"], r["bytes"]) for r in recovery] == [("torn_tail", len(torn))]
    result = verify_cli(audit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: ")


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["flush", "fsync"])
def test_file_size_cap_denies_with_reason_then_recovers(
    tmp_path: Path, policies: Path, durability: str
) -> None:
    """RLIMIT_FSIZE caps the trail (write() gets EFBIG: SIGXFSZ is ignored).

    With fsync the asyncio server queues events for the trail's committer
    instead of writing them on the loop: failures must still reach every answer.
    """
    audit = tmp_path / "trail" / "audit.jsonl"
    cap = 24 * 1024

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (cap, resource.RLIM_INFINITY))

    flags = ("--metrics-listen", "127.0.0.1:0", "--grace", "5", "--audit-durability", durability)
    with serve(tmp_path, policies, audit, *flags, preexec_fn=limit_file_size) as server:
        assert server.metrics is not None
        assert health_of(server.grpc) == health_pb2.HealthCheckResponse.SERVING
        load = Load(server.grpc, lambda i: "alice", clients=4).start()

        def refused() -> int:
            return sum(1 for _, d, r in list(load.answers) if d == pb.DECISION_DENY)

        wait_for(lambda: refused() >= 30, "DENYs once the trail is full")
        assert health_of(server.grpc) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert audit_gauge(server.metrics) == 0.0
        assert audit.stat().st_size <= cap
        # Space returns: lift the cap of the running sidecar.
        resource.prlimit(
            server.proc.pid,
            resource.RLIMIT_FSIZE,
            (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
        )
        wait_for(
            lambda: health_of(server.grpc) == health_pb2.HealthCheckResponse.SERVING,
            "SERVING after space returned",
        )
        allowed_before = sum(1 for _, d, _ in list(load.answers) if d == pb.DECISION_ALLOW)
        wait_for(
            lambda: (
                sum(1 for _, d, _ in list(load.answers) if d == pb.DECISION_ALLOW)
                >= allowed_before + 30
            ),
            "ALLOWs again after recovery",
        )
        assert audit_gauge(server.metrics) == 1.0
        load.finish()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    assert load.failures == []
    trail = trail_decisions(audit)
    allows = [(i, r) for i, d, r in load.answers if d == pb.DECISION_ALLOW]
    denies = [(i, r) for i, d, r in load.answers if d == pb.DECISION_DENY]
    # No ALLOW without its event; every DENY says why, and none of them is in the trail.
    assert all(i in trail and trail[i]["decision"] == "ALLOW" for i, _ in allows)
    assert denies and all(UNAVAILABLE in r and "File too large" in r for _, r in denies)
    assert not any(i in trail for i, _ in denies)
    outages = trail_records(audit, "outage")
    assert outages and sum(o["refused_events"] for o in outages) == len(denies)
    assert "File too large" in outages[0]["first_error"]
    result = verify_cli(audit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outage" in result.stdout


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.slow
def test_full_filesystem_denies_then_recovers(tmp_path: Path, policies: Path) -> None:
    """A real small filesystem (tmpfs) filled up; needs root and mount rights."""
    from sidecar.serving.config import Settings
    from sidecar.serving.server import Sidecar

    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "256k"):
        missing("cannot mount a tmpfs here (needs root with mount rights)")
    try:
        audit = disk / "audit.jsonl"
        sidecar = Sidecar(
            Settings(
                policies=policies,
                listen="127.0.0.1:0",
                metrics_listen="127.0.0.1:0",
                audit_file=str(audit),
                grace_s=1.0,
            )
        )
        endpoints = sidecar.start()
        target = str(endpoints.tcp)
        try:
            filler = disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(fd)
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.AuthorizerStub(channel)
                # Writes still fit in the trail's last, partly used page; then ENOSPC.
                answers = [stub.Authorize(ask("alice", step=str(i)), timeout=10) for i in range(20)]
                denied = [a for a in answers if a.decision == pb.DECISION_DENY]
                early = [a for a in answers if a.decision == pb.DECISION_ALLOW]
                assert len(denied) >= 10
                assert all(UNAVAILABLE in d.reason and "No space" in d.reason for d in denied)
                assert health_of(target) == health_pb2.HealthCheckResponse.NOT_SERVING
                assert endpoints.metrics is not None
                assert audit_gauge(endpoints.metrics) == 0.0
                filler.unlink()  # space returns; the probe brings the trail back by itself
                wait_for(
                    lambda: health_of(target) == health_pb2.HealthCheckResponse.SERVING,
                    "SERVING after space returned",
                )
                allowed = stub.Authorize(ask("alice", token="tok-secret-1"), timeout=10)
                assert allowed.decision == pb.DECISION_ALLOW
        finally:
            sidecar.stop(grace=1.0)
        trail = trail_decisions(audit)
        assert allowed.decision_id in trail
        assert all(a.decision_id in trail for a in early)  # no ALLOW without its event
        assert not any(d.decision_id in trail for d in denied)
        assert "tok-secret-1" not in audit.read_text()  # redacted by default
        assert trail[allowed.decision_id]["context"]["api_token"].startswith("redacted:")
        outage = trail_records(audit, "outage")
        assert sum(o["refused_events"] for o in outage) == len(denied)
        report = verify(collect([audit])[0])
        assert report.ok, report.problem
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_health_follows_the_trail_in_process(tmp_path: Path, policies: Path) -> None:
    from sidecar.audit.sink import MemorySink

    sink = MemorySink()
    with running_sidecar(tmp_path, policies=policies, sink=sink) as run:
        target = run.tcp
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            sink.fail_with = "disk on fire"
            resp = stub.Authorize(ask("alice"), timeout=5)
            assert resp.decision == pb.DECISION_DENY and UNAVAILABLE in resp.reason
            assert health_of(target) == health_pb2.HealthCheckResponse.NOT_SERVING
            sink.fail_with = None
            assert stub.Authorize(ask("alice"), timeout=5).decision == pb.DECISION_ALLOW
            assert health_of(target) == health_pb2.HealthCheckResponse.SERVING


def test_query_answers_who_was_allowed_and_when(
    tmp_path: Path, policies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sidecar.cli.main import main

    audit = tmp_path / "audit.jsonl"
    with serve(tmp_path, policies, audit, "--metrics-listen", "off") as server:
        with grpc.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            ids = {
                who: stub.Authorize(ask(who, run="run-7"), timeout=5).decision_id
                for who in ("alice", "bob", "carol")
            }
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    capsys.readouterr()
    assert main(["audit", "query", str(audit), "--decision", "ALLOW", "--format", "json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [ids["alice"]]
    assert rows[0]["reasons"][0]["policy"] == "alice-reads"
    assert main(["audit", "query", str(audit), "--principal", 'User::"bob"', "--run", "run-7"]) == 0
    out = capsys.readouterr().out
    assert ids["bob"] in out and ids["alice"] not in out and "DENY" in out
    assert main(["audit", "query", str(tmp_path), "--principal", "*o*", "--format", "json"]) == 0
    got = {json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()}
    assert got == {ids["bob"], ids["carol"]}
    assert main(["audit", "query", str(audit), "--until", "2000-01-01", "--verify"]) == 0
    assert "no matching records" in capsys.readouterr().out


def test_fsync_answers_wait_for_the_disk_and_failures_reach_every_item(
    tmp_path: Path, policies: Path
) -> None:
    """Durability fsync on the asyncio server: events go to the trail's committer thread.

    An answer leaves only once its event is on disk (it is in the file when the
    answer arrives); when the commit fails, single calls, every batch item and
    every stream item are DENY saying why, and the trail recovers by itself.
    """
    from sidecar.audit.filesink import FileSink
    from sidecar.serving.config import Settings
    from sidecar.serving.server import Sidecar

    class FullDisk(FileSink):
        full = False

        def _append(self, data: bytes) -> None:
            # The segment is open with O_DSYNC: a write whose bytes reached the file
            # but not the disk reports the disk's EIO itself (the batch is cut off).
            super()._append(data)
            if self.full:
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.path))

    audit = tmp_path / "audit.jsonl"
    sink = FullDisk(audit, durability="fsync", probe_interval_s=0.05)
    settings = Settings(
        policies=policies,
        listen="127.0.0.1:0",
        metrics_listen=None,
        audit_file=str(audit),
        audit_durability="fsync",
        cache_max_entries=0,
    )
    assert settings.server_mode == "asyncio"
    sidecar = Sidecar(settings, sink=sink)
    target = str(sidecar.start().tcp)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            first = stub.Authorize(ask("alice", step="first"), timeout=10)
            assert first.decision == pb.DECISION_ALLOW
            assert first.decision_id in audit.read_text()  # on disk before the answer
            sink.full = True
            single = stub.Authorize(ask("alice", step="single"), timeout=10)
            batch = stub.AuthorizeBatch(
                pb.AuthorizeBatchRequest(items=[ask("alice", step=f"b{i}") for i in range(3)]),
                timeout=10,
            )
            stream = list(
                stub.AuthorizeStream(
                    iter([pb.AuthorizeStreamRequest(id=i, request=ask("alice")) for i in (7, 8)]),
                    timeout=10,
                )
            )
            refused = [single, *(r.response for r in batch.results)]
            refused += [r.response for r in stream]
            assert [r.id for r in stream] == [7, 8]
            assert len(refused) == 6
            for answer in refused:
                assert answer.decision == pb.DECISION_DENY, answer
                assert UNAVAILABLE in answer.reason and "Input/output error" in answer.reason
                assert not answer.determining_policies
            failures = sidecar.metrics.registry.get_sample_value(
                "stepguard_audit_write_failures_total"
            )
            assert failures is not None and failures >= 6
            sink.full = False
            wait_for(lambda: sink.healthy, "the trail recovers by itself")
            again = stub.Authorize(ask("alice", step="again"), timeout=10)
            assert again.decision == pb.DECISION_ALLOW
    finally:
        sidecar.stop(grace=1.0)
    trail = trail_decisions(audit)
    assert first.decision_id in trail and again.decision_id in trail
    assert not any(r.decision_id in trail for r in refused)
    outages = trail_records(audit, "outage")
    assert sum(o["refused_events"] for o in outages) == 6
    report = verify(collect([audit])[0])
    assert report.ok, report.problem
