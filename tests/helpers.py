"""Real servers for tests: the stepguard sidecar on loopback and a Unix socket."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sidecar.audit.sink import AuditSink
from sidecar.client import StepguardClient, channel_credentials
from sidecar.serving.config import Settings
from sidecar.serving.server import Sidecar
from tests.pki import Pair

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
# A Wednesday, 10:00 UTC: inside the example calendar's business hours.
BUSINESS_HOURS = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

NOTIFIER = {"type": "Workload", "id": "spiffe://example.org/ns/comms/sa/notifier"}
PROVISIONER = {"type": "Workload", "id": "spiffe://example.org/ns/identity/sa/provisioner"}


def notify_request() -> dict[str, Any]:
    """A read-only step the example policies permit."""
    return {
        "principal": NOTIFIER,
        "action": {"type": "Action", "id": "notify"},
        "resource": {"type": "TargetSystem", "id": "slack"},
        "context": {"workflow_id": "onboarding", "run_id": "r1", "step_id": "notify"},
    }


def grant_request(*, approver: str | None = "ines", requester: str = "maria") -> dict[str, Any]:
    """An identity-changing step; without an independent approval it is denied."""
    ctx: dict[str, Any] = {
        "requester": {"type": "User", "id": requester},
        "workflow_id": "onboarding",
        "run_id": "r1",
        "step_id": "grant",
        "sensitivity": "medium",
        "attributes": {"workflow": {"__entity": {"type": "Workflow", "id": "onboarding"}}},
    }
    if approver is not None:
        ctx["approval"] = {
            "approver": {"type": "User", "id": approver},
            "approved_at": "2026-11-25T09:00:00Z",
            "ticket": "CHG-1",
        }
    return {
        "principal": PROVISIONER,
        "action": {"type": "Action", "id": "grant_access"},
        "resource": {"type": "TargetSystem", "id": "jira"},
        "context": ctx,
    }


@dataclass
class Running:
    sidecar: Sidecar
    tcp: str
    socket: str
    metrics: str
    audit: Path  # the trail's file (unused when a sink was given)
    authzen: str | None = None

    def audit_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]


@contextmanager
def running_sidecar(
    tmp: Path,
    *,
    policies: Path = POLICIES,
    clock: Callable[[], datetime] = lambda: BUSINESS_HOURS,
    sink: AuditSink | None = None,
    **overrides: Any,
) -> Iterator[Running]:
    """A real sidecar on loopback and a Unix socket in `tmp`, stopped after. `sink`: the
    trail to write instead of `tmp/audit.jsonl` (a `MemorySink` a test can make fail)."""
    settings = Settings(
        **{
            "policies": policies,
            "listen": "127.0.0.1:0",
            "socket": tmp / "stepguard.sock",
            "metrics_listen": "127.0.0.1:0",
            "audit_file": str(tmp / "audit.jsonl"),
            "grace_s": 2.0,
            **overrides,
        }
    )
    sidecar = Sidecar(settings, clock=clock, sink=sink)
    endpoints = sidecar.start()
    assert endpoints.tcp and endpoints.socket and endpoints.metrics
    try:
        yield Running(
            sidecar,
            endpoints.tcp,
            endpoints.socket,
            endpoints.metrics,
            tmp / "audit.jsonl",
            endpoints.authzen,
        )
    finally:
        sidecar.stop(grace=1.0)


class Drained:
    """A child's pipe read to its end by a thread, so the child never blocks on a full
    pipe (a server that logs a traceback per failed call fills 64 KiB quickly); its
    lines, as they come, for a test to wait on."""

    def __init__(self, stream: IO[str], timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        except (OSError, ValueError):
            pass  # the pipe closed under us: what came is kept
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def __iter__(self) -> Iterator[str]:
        """Every line, waiting for the next until the pipe ends; AssertionError when none
        comes within `timeout_s` (a test must not hang)."""
        i = 0
        while True:
            line = self._line(i)
            if line is None:
                return
            i += 1
            yield line

    def _line(self, i: int) -> str | None:
        """Line `i` once it has come; None when the pipe ended before it."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: i < len(self._lines) or self._ended, self.timeout_s
            ):
                raise AssertionError(f"no line within {self.timeout_s:g} s: {self.text()!r}")
            return self._lines[i] if i < len(self._lines) else None

    def text(self) -> str:
        """What came so far."""
        with self._changed:
            return "".join(self._lines)

    def read(self) -> str:
        """Everything, once the pipe has ended (the child and its children gone)."""
        if not self.ended(self.timeout_s):
            raise AssertionError(f"the pipe did not end within {self.timeout_s:g} s")
        return self.text()

    def ended(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the pipe to end; whether it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def tls_client(
    tmp: Path, running: Running, roots: bytes, pair: Pair | None, **options: Any
) -> StepguardClient:
    """A StepguardClient over TLS to `running`, from files (as a worker reads its SVID):
    `roots` to trust, and `pair` as its client certificate (mutual TLS) when given."""
    name = f"client-{len(list(tmp.glob('client-*'))) if tmp.exists() else 0}"
    directory = tmp / name
    directory.mkdir(parents=True)
    (directory / "roots.pem").write_bytes(roots)
    cert = key = None
    if pair is not None:
        cert, key = pair.write(directory, "svid")
    creds = channel_credentials(directory / "roots.pem", cert, key)
    return StepguardClient(running.tcp, credentials=creds, timeout=5, options=list(options.items()))


@dataclass
class ServeProcess:
    """A real `stepguard serve` subprocess and the endpoints it announced; its stderr
    (the logs) drained as it runs."""

    proc: subprocess.Popen[str]
    serving: dict[str, Any]
    stderr: Drained

    def terminate(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def first_line(stream: IO[str], timeout_s: float = 60.0) -> str:
    """The first line from a child's pipe; "" when none comes in time (a test must not hang)."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        return stream.readline() if sel.select(timeout_s) else ""


@contextmanager
def serve_process(*args: str, env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    """Start `stepguard serve ARGS`, wait for its `serving` line, kill it if still up at the end.

    The serving line is the first line on stdout (logs are on stderr), unless the
    trail is on stdout (`--audit-file -`): not supported here.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    logs = Drained(proc.stderr)
    try:
        first = first_line(proc.stdout)
        serving: dict[str, Any] = json.loads(first) if first.startswith("{") else {}
        if serving.get("event") != "serving":
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            logs.ended(5)
            raise AssertionError(
                f"stepguard serve did not start (exit {proc.returncode}): stdout {first!r}, "
                f"stderr {logs.text()[-2000:]!r}"
            )
        yield ServeProcess(proc, serving, logs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        # A worker the kill left behind may still hold the pipe: then it stays open.
        if logs.ended(10):
            proc.stderr.close()


DEPROVISIONER = {"type": "Workload", "id": "spiffe://example.org/ns/identity/sa/deprovisioner"}


def plan_step(request: dict[str, Any], step_id: str, *unknown: str, **extra: Any) -> dict[str, Any]:
    """A planned step (docs/api.md, "Plans"): a request, its id and its unknown fields."""
    return {"step_id": step_id, **request, "unknown": list(unknown), **extra}


def leaver_plan(run_id: str = "leaver-run-1") -> dict[str, Any]:
    """A leaver run whose step 2 (the provisioner revoking access) is certainly denied:
    only deprovisioning workloads may remove access."""
    ctx = {
        "workflow_id": "leaver",
        "run_id": run_id,
        "attributes": {"workflow": {"__entity": {"type": "Workflow", "id": "leaver"}}},
    }

    def step(principal: dict[str, str], action: str, target: str) -> dict[str, Any]:
        return {
            "principal": principal,
            "action": {"type": "Action", "id": action},
            "resource": {"type": "TargetSystem", "id": target},
            "context": ctx,
        }

    return {
        "run_id": run_id,
        "workflow_id": "leaver",
        "steps": [
            plan_step(step(DEPROVISIONER, "revoke_access", "github"), "revoke-github"),
            plan_step(step(PROVISIONER, "revoke_access", "okta"), "revoke-okta"),
            plan_step(step(DEPROVISIONER, "disable_credential", "aws-prod"), "disable-aws"),
        ],
    }


def joiner_plan(run_id: str = "joiner-run-1", target: str = "jira") -> dict[str, Any]:
    """A joiner run: on a medium target it is allowed whatever the time; on a critical
    one (okta) its identity-changing steps depend on the time (business hours)."""
    grant = grant_request()
    grant["resource"] = {"type": "TargetSystem", "id": target}
    grant["context"]["run_id"] = run_id
    if target != "jira":
        grant["context"].pop("sensitivity")
    create = {**grant, "action": {"type": "Action", "id": "create_account"}}
    return {
        "run_id": run_id,
        "workflow_id": "onboarding",
        "steps": [plan_step(create, "create"), plan_step(grant, "grant")],
    }


def assert_trail_verifies(path: Path, *args: str, timeout: float = 300) -> str:
    """`stepguard audit verify PATH ARGS` in a fresh process passes; its output."""
    verified = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "audit", "verify", str(path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return verified.stdout
