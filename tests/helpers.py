"""Real servers for tests: the stepguard sidecar on loopback and a Unix socket."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sidecar.serving.config import Settings
from sidecar.serving.server import Sidecar

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
    audit: Path

    def audit_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]


@contextmanager
def running_sidecar(
    tmp: Path,
    *,
    policies: Path = POLICIES,
    clock: Callable[[], datetime] = lambda: BUSINESS_HOURS,
    **overrides: Any,
) -> Iterator[Running]:
    settings = Settings(
        policies=policies,
        listen="127.0.0.1:0",
        socket=tmp / "stepguard.sock",
        metrics_listen="127.0.0.1:0",
        audit_file=str(tmp / "audit.jsonl"),
        grace_s=2.0,
        **overrides,
    )
    sidecar = Sidecar(settings, clock=clock)
    endpoints = sidecar.start()
    assert endpoints.tcp and endpoints.socket and endpoints.metrics
    try:
        yield Running(
            sidecar, endpoints.tcp, endpoints.socket, endpoints.metrics, tmp / "audit.jsonl"
        )
    finally:
        sidecar.stop(grace=1.0)


@dataclass
class ServeProcess:
    """A real `stepguard serve` subprocess and the endpoints it announced."""

    proc: subprocess.Popen[str]
    serving: dict[str, Any]

    @property
    def stderr(self) -> IO[str]:
        assert self.proc.stderr is not None
        return self.proc.stderr

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
    try:
        assert proc.stdout is not None
        first = first_line(proc.stdout)
        serving: dict[str, Any] = json.loads(first) if first.startswith("{") else {}
        assert serving.get("event") == "serving", (
            f"stepguard serve did not start (exit {proc.poll()}): stdout {first!r}"
        )
        yield ServeProcess(proc, serving)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


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
