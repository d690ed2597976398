"""decision/plans.py: a plan as the server makes it (workload binding, context.caller,
the trail refusing the plan), with the real engine and a real bundle."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit.sink import MemorySink
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.errors import AuditError
from sidecar.core.event import CallMeta
from sidecar.core.plan import Verdict
from sidecar.core.planreq import Plan, plan_from_json, plan_from_proto
from sidecar.core.validate import Limits
from sidecar.decision.plans import PlanRecorder
from tests.helpers import NOTIFIER, POLICIES, notify_request, plan_step

CLOCK = lambda: datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # noqa: E731


def _plan(bundle_dir: Path, *steps: dict[str, Any]) -> tuple[Bundle, Plan]:
    bundle = load_bundle(bundle_dir)
    return bundle, plan_from_proto(
        plan_from_json({"run_id": "r", "steps": list(steps)}), bundle, Limits()
    )


def test_under_workload_binding_a_workload_plans_only_itself() -> None:
    bundle, plan = _plan(POLICIES, plan_step(notify_request(), "notify"))
    recorder = PlanRecorder(MemorySink(), CLOCK, bind_workload_identity=True)
    other = recorder.plan(bundle, plan, CallMeta(identity="spiffe://example.org/ns/x/sa/y"))
    (verdict,) = other.verdicts
    assert verdict.verdict is Verdict.DENY
    assert "a workload may only ask about itself" in verdict.reason
    itself = recorder.plan(bundle, plan, CallMeta(identity=NOTIFIER["id"]))
    assert itself.verdicts[0].verdict is Verdict.ALLOW


def test_a_policy_reading_the_caller_makes_the_step_depend_on_it(tmp_path: Path) -> None:
    """The server adds context.caller only for an authenticated caller: a plan cannot know."""
    shutil.copytree(POLICIES, tmp_path / "p", ignore=shutil.ignore_patterns("tests"))
    (tmp_path / "p" / "caller.cedar").write_text(
        '@id("notify-needs-a-caller")\n'
        'forbid (principal, action == Action::"notify", resource)\n'
        "unless { context has caller };\n"
    )
    recorder = PlanRecorder(None, CLOCK)
    bundle, plan = _plan(tmp_path / "p", plan_step(notify_request(), "notify"))
    (verdict,) = recorder.plan(bundle, plan, CallMeta()).verdicts
    assert verdict.verdict is Verdict.DEPENDS
    assert "whether the step's caller is authenticated" in verdict.reason
    bundle, plan = _plan(POLICIES, plan_step(notify_request(), "notify"))  # nobody reads it
    assert recorder.plan(bundle, plan, CallMeta()).verdicts[0].verdict is Verdict.ALLOW


def test_a_trail_that_refuses_the_plan_raises() -> None:
    sink = MemorySink()
    sink.fail_with = "disk full"
    bundle, plan = _plan(POLICIES, plan_step(notify_request(), "notify"))
    with pytest.raises(AuditError):
        PlanRecorder(sink, CLOCK).plan(bundle, plan, CallMeta())
