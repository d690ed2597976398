"""Hot reload under load: a real server, real clients, policies changed on disk mid-traffic.

Client threads call Authorize without pause over TCP and the Unix socket while
the policy directory changes twice: a valid change (notifications no longer
allowed), then a broken one. Every call must succeed, carry the old or the new
revision, and be decided exactly as that revision decides it; the broken
change must be refused while the last good bundle keeps serving.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.jsonreq import request_from_json
from sidecar.core.validate import Limits, request_from_proto
from sidecar.serving.server import POLICY_HEALTH, SERVICE_NAME
from tests.helpers import (
    BUSINESS_HOURS,
    POLICIES,
    grant_request,
    notify_request,
    running_sidecar,
)

REQUESTS = [notify_request(), grant_request(), grant_request(approver=None)]
NO_NOTIFY = 'action == Action::"lookup_identity"'
DEADLINE_S = 60.0


@dataclass(frozen=True)
class Answer:
    thread: int
    request: int
    revision: str
    decision: int


def expected(bundle: Bundle) -> list[int]:
    """What `bundle` decides for each request, at the server's (fixed) clock."""
    out: list[int] = []
    for data in REQUESTS:
        request = request_from_proto(request_from_json(data), bundle, Limits(), now=BUSINESS_HOURS)
        allowed = evaluate(bundle, request).allowed
        out.append(pb.DECISION_ALLOW if allowed else pb.DECISION_DENY)
    return out


def save_by_rename(path: Path, text: str) -> None:
    """Save as editors do: write a new file, rename it over the old one."""
    tmp = path.with_name(path.name + ".swp-new")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Load:
    """Client threads that call Authorize until stopped, recording every answer."""

    def __init__(self, targets: list[str], per_target: int = 3) -> None:
        self.answers: list[Answer] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n, target), daemon=True)
            for n, target in enumerate(t for t in targets for _ in range(per_target))
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=DEADLINE_S)

    def count(self, revision: str) -> int:
        with self._lock:
            return sum(a.revision == revision for a in self.answers)

    def _run(self, n: int, target: str) -> None:
        messages = [request_from_json(r) for r in REQUESTS]
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            i = n
            while not self._stop.is_set():
                k = i % len(messages)
                i += 1
                try:
                    resp = stub.Authorize(messages[k], timeout=10)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failures.append(f"thread {n}: {exc.code()}: {exc.details()}")
                    continue
                with self._lock:
                    self.answers.append(Answer(n, k, resp.policy_revision, resp.decision))


def test_reload_under_concurrent_load(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies, ignore=shutil.ignore_patterns("tests"))
    old = load_bundle(policies)
    target = policies / "read_only.cedar"
    good = target.read_text()
    changed = good.replace('action in Action::"read-only"', NO_NOTIFY)
    staged = tmp_path / "staged"
    shutil.copytree(policies, staged)
    (staged / "read_only.cedar").write_text(changed)
    new = load_bundle(staged)
    decides = {old.revision: expected(old), new.revision: expected(new)}
    assert decides[old.revision][0] != decides[new.revision][0]  # the change flips notify

    with running_sidecar(
        tmp_path / "run", policies=policies, watch=True, watch_interval_s=0.05
    ) as running:
        sidecar = running.sidecar
        with Load([running.tcp, f"unix:{running.socket}"]) as load:
            wait_for(lambda: load.count(old.revision) >= 200, "traffic on the old revision")
            save_by_rename(target, changed)
            wait_for(lambda: load.count(new.revision) >= 200, "traffic on the new revision")
            assert sidecar.holder.current().revision == new.revision

            # A broken change: refused, the new bundle keeps serving.
            save_by_rename(
                target, changed + "\npermit (principal, action, resource)\nwhen { context.nope };\n"
            )
            watcher = sidecar.watcher
            assert watcher is not None
            wait_for(lambda: watcher.status().failures == 1, "the refusal")
            served = load.count(new.revision)
            wait_for(lambda: load.count(new.revision) >= served + 200, "traffic after it")
        health = _health(running.tcp)
        detail = _get_json(f"http://{running.metrics}/healthz?verbose=1")
        metrics = _get(f"http://{running.metrics}/metrics")
        events = running.audit_events()

    assert load.failures == [], load.failures[:5]
    revisions = {a.revision for a in load.answers}
    assert revisions == {old.revision, new.revision}
    wrong = [a for a in load.answers if a.decision != decides[a.revision][a.request]]
    assert wrong == [], wrong[:5]
    for n in {a.thread for a in load.answers}:  # per client: never back to the old bundle
        seen = [a.revision for a in load.answers if a.thread == n]
        first_new = seen.index(new.revision)
        assert set(seen[first_new:]) == {new.revision}, f"thread {n} went back"

    # The trail records the same: each decision with the revision that made it.
    decisions = [e for e in events if e.get("kind", "decision") == "decision"]
    assert len(decisions) == len(load.answers)
    allow = {"ALLOW": pb.DECISION_ALLOW, "DENY": pb.DECISION_DENY}
    for event in decisions:
        index = _request_index(event)
        assert allow[event["decision"]] == decides[event["policy_revision"]][index]

    # The refusal is visible: health detail, gRPC health, metrics.
    assert health[""] == health[SERVICE_NAME] == health_pb2.HealthCheckResponse.SERVING
    assert health[POLICY_HEALTH] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert detail["policy_revision"] == new.revision
    reload = detail["reload"]
    assert reload["watching"] is True and reload["ok"] is False
    assert reload["reloads"] == 1 and reload["failures"] == 1
    line = len((changed + "\npermit (principal, action, resource)\n").splitlines()) + 1
    assert reload["error"].startswith(f"read_only.cedar:{line}:16: validation error")
    assert 'stepguard_policy_reloads_total{result="success"} 1.0' in metrics
    assert 'stepguard_policy_reloads_total{result="failure"} 1.0' in metrics
    assert "stepguard_policy_reload_error 1.0" in metrics
    assert f'stepguard_policy_revision_info{{revision="{new.revision}"}} 1.0' in metrics


def _request_index(event: dict[str, Any]) -> int:
    if event["action"]["id"] == "notify":
        return 0
    return 1 if "approval" in event["context"] else 2


def _health(target: str) -> dict[str, int]:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            for name in ("", SERVICE_NAME, POLICY_HEALTH)
        }


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def _get_json(url: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_get(url))
    return data


def test_healthz_without_watch(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        detail = _get_json(f"http://{running.metrics}/healthz")
        assert "stepguard_decisions_total" in _get(f"http://{running.metrics}/metrics")
    assert detail["reload"] == {"watching": False}
    assert detail["policies"] == 12 and len(detail["policy_revision"]) == 64
