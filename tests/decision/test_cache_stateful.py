"""The cache never changes a decision: a stateful Hypothesis test on two real servers.

Two sidecars run side by side on loopback, one with the decision cache on and
one with it off, sharing one injected clock. Hypothesis drives random
sequences of requests (with and without time bounds that start or end
mid-second), reloads of policies and of entities, and clock moves (small
steps, jumps across business-hours boundaries and back in time), and after
every request requires both servers to answer the same decision, determining
policies, errors, obligations and revision. It also checks that the cache
never serves an ALLOW while the clock is outside the request's time bound.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.bundle import Bundle as PolicyBundle
from sidecar.core.bundle import load_bundle
from sidecar.core.jsonreq import request_from_json
from tests.helpers import Running, running_sidecar

ROOT = Path(__file__).resolve().parents[2]
# Anchors near the example calendar's edges: business hours are 08:00-18:00 UTC
# on weekdays; 2026-11-25 is a Wednesday, 2026-11-29 a Sunday.
ANCHORS = [
    datetime(2026, 11, 25, 7, 59, 59, 300_000, tzinfo=UTC),
    datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
    datetime(2026, 11, 25, 17, 59, 58, 650_000, tzinfo=UTC),
    datetime(2026, 11, 29, 3, 0, 0, 999_000, tzinfo=UTC),
]
W = "spiffe://example.org/ns/{}/sa/{}"


def _ref(type_: str, id_: str) -> dict[str, str]:
    return {"type": type_, "id": id_}


def _request(
    principal: str,
    action: str,
    target: str,
    *,
    approver: str | None,
    ticket: str = "CHG-1",
    workflow: str | None = "onboarding",
    sensitivity: str | None = None,
) -> dict[str, Any]:
    ctx: dict[str, Any] = {"requester": _ref("User", "maria"), "workflow_id": "wf", "step_id": "s"}
    if workflow:
        ctx["attributes"] = {"workflow": {"__entity": _ref("Workflow", workflow)}}
    if approver:
        ctx["approval"] = {
            "approver": _ref("User", approver),
            "approved_at": "2026-11-20T09:00:00Z",
            "ticket": ticket,
        }
    if sensitivity:
        ctx["sensitivity"] = sensitivity
    return {
        "principal": _ref("Workload", principal),
        "action": _ref("Action", action),
        "resource": _ref("TargetSystem", target),
        "context": ctx,
    }


PROVISIONER = W.format("identity", "provisioner")
DEPROVISIONER = W.format("identity", "deprovisioner")
REQUESTS = [
    _request(W.format("comms", "notifier"), "notify", "slack", approver=None),
    _request(PROVISIONER, "grant_access", "jira", approver="ines"),
    _request(PROVISIONER, "grant_access", "jira", approver="maria"),  # self-approved
    _request(PROVISIONER, "grant_access", "okta", approver="ines"),  # critical: hours
    _request(PROVISIONER, "grant_access", "okta", approver="dana", ticket="BG-7"),
    _request(PROVISIONER, "issue_credential", "github", approver="ines", sensitivity="high"),
    _request(PROVISIONER, "issue_credential", "slack", approver="ines"),
    _request(DEPROVISIONER, "revoke_access", "okta", approver=None, workflow="leaver"),
    _request(DEPROVISIONER, "revoke_access", "aws-prod", approver=None, workflow="onboarding"),
    _request(W.format("identity", "default"), "grant_access", "jira", approver="ines"),
]


def _variants(root: Path) -> list[PolicyBundle]:
    """Policy bundles to reload between: policy changes and an entity change."""
    base = ROOT / "policies"
    dirs = []

    def variant(name: str) -> Path:
        path = root / name
        shutil.copytree(base, path)
        dirs.append(path)
        return path

    variant("example")
    (variant("no-notify") / "zz.cedar").write_text(
        '@id("no-notify")\nforbid (principal, action == Action::"notify", resource);\n'
    )
    entities = variant("ines-left") / "entities.json"
    data = json.loads(entities.read_text())
    for ent in data:  # ines is no longer an identity approver
        if ent["uid"] == {"type": "User", "id": "ines"}:
            ent["parents"] = []
    entities.write_text(json.dumps(data))
    # Without the time-bound and business-hours rules nothing reads context.now:
    # the cache then keys without it, and only its own time-bound check keeps a
    # cached ALLOW inside the request's bound.
    timeless = variant("timeless")
    (timeless / "time_bounds.cedar").unlink()
    (timeless / "business_hours.cedar").unlink()
    bundles = [load_bundle(d) for d in dirs]
    assert len({b.revision for b in bundles}) == len(bundles)
    assert "now" not in bundles[-1].context_reads
    return bundles


class Clock:
    def __init__(self) -> None:
        self.at = ANCHORS[1]

    def __call__(self) -> datetime:
        return self.at


class World:
    """The two servers and what they share; started once for the module."""

    def __init__(
        self, on: Running, off: Running, clock: Clock, bundles: list[PolicyBundle]
    ) -> None:
        self.on, self.off, self.clock, self.bundles = on, off, clock, bundles
        self.channels = [grpc.insecure_channel(r.tcp) for r in (on, off)]
        self.stubs = [pb_grpc.AuthorizerStub(c) for c in self.channels]
        self.served_cached = 0
        self.requests = 0

    def cached_count(self) -> float:
        registry = self.on.sidecar.metrics.registry
        return sum(
            registry.get_sample_value(
                "stepguard_decisions_total", {"decision": d, "cached": "true"}
            )
            or 0.0
            for d in ("ALLOW", "DENY")
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("cache-stateful")
    clock = Clock()
    bundles = _variants(tmp / "variants")
    (tmp / "on").mkdir()
    (tmp / "off").mkdir()
    with (
        running_sidecar(tmp / "on", clock=clock) as on,
        running_sidecar(tmp / "off", clock=clock, cache_max_entries=0) as off,
    ):
        assert on.sidecar.decider.cache is not None and off.sidecar.decider.cache is None
        w = World(on, off, clock, bundles)
        yield w
        for c in w.channels:
            c.close()


def _outcome(resp: pb.AuthorizeResponse) -> tuple[Any, ...]:
    return (
        resp.decision,
        frozenset(p.id for p in resp.determining_policies),
        frozenset((e.policy_id, e.message) for e in resp.errors),
        resp.obligations.SerializeToString(deterministic=True),
        resp.policy_revision,
    )


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


offsets_ms = st.integers(min_value=-2500, max_value=2500)


class CacheIsInvisible(RuleBasedStateMachine):
    world: World

    @initialize(anchor=st.sampled_from(ANCHORS), variant=st.integers(0, 3))
    def start(self, anchor: datetime, variant: int) -> None:
        w = self.world
        w.clock.at = anchor
        cache = w.on.sidecar.decider.cache
        assert cache is not None
        cache.clear()
        self._swap(variant)

    def _swap(self, variant: int) -> None:
        for running in (self.world.on, self.world.off):
            running.sidecar.holder.swap(self.world.bundles[variant])

    @rule(variant=st.integers(0, 3))
    def reload(self, variant: int) -> None:
        self._swap(variant)

    @rule(step_ms=st.integers(min_value=-1500, max_value=1500))
    def tick(self, step_ms: int) -> None:
        self.world.clock.at += timedelta(milliseconds=step_ms)

    @rule(anchor=st.sampled_from(ANCHORS), jitter_ms=st.integers(-1200, 1200))
    def jump(self, anchor: datetime, jitter_ms: int) -> None:
        self.world.clock.at = anchor + timedelta(milliseconds=jitter_ms)

    sent = Bundle("sent")

    @rule(
        target=sent,
        which=st.integers(0, len(REQUESTS) - 1),
        not_before=st.none() | offsets_ms,
        not_after=st.none() | offsets_ms,
    )
    def authorize(
        self, which: int, not_before: int | None, not_after: int | None
    ) -> dict[str, Any]:
        req = REQUESTS[which]
        if not_before is not None or not_after is not None:
            # Bounds near the clock, at arbitrary milliseconds.
            bound: dict[str, str] = {}
            base = self.world.clock.at
            if not_before is not None:
                bound["not_before"] = _iso(base + timedelta(milliseconds=not_before))
            if not_after is not None:
                not_after = not_after if not_before is None else max(not_after, not_before)
                bound["not_after"] = _iso(base + timedelta(milliseconds=not_after))
            req = {**req, "context": {**req["context"], "time_bound": bound}}
        self._both(req)
        return req

    @rule(req=sent, repeat=st.integers(2, 4))
    def resend(self, req: dict[str, Any], repeat: int) -> None:
        """The same step again, after whatever moved since, then at once again: the cache's case."""
        for _ in range(repeat):
            self._both(req)

    def _both(self, req: dict[str, Any]) -> None:
        w = self.world
        msg = request_from_json(req)
        before = w.cached_count()
        on = w.stubs[0].Authorize(msg, timeout=10)
        off = w.stubs[1].Authorize(msg, timeout=10)
        assert _outcome(on) == _outcome(off), (req, w.clock.at)
        w.requests += 1
        if w.cached_count() > before:
            w.served_cached += 1
            bound = req["context"].get("time_bound", {})
            if on.decision == pb.DECISION_ALLOW:
                now = _iso(w.clock.at)
                assert bound.get("not_before", now) <= now <= bound.get("not_after", now)

    @invariant()
    def cache_stays_bounded(self) -> None:
        cache = self.world.on.sidecar.decider.cache
        assert cache is not None
        stats = cache.stats()
        assert stats.entries <= stats.max_entries and stats.bytes <= stats.max_bytes


def test_cache_on_and_off_decide_alike(world: World) -> None:
    CacheIsInvisible.world = world
    run_state_machine_as_test(
        CacheIsInvisible,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # Not vacuous: a good share of the answers came from the cache.
    assert world.served_cached > world.requests // 10, (world.served_cached, world.requests)
