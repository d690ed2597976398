"""The plan's property (issue 21): a plan's answers hold when the unknowns become known.

For generated plan steps over the example bundle (every workload, action and
target; context fields present, absent, or unknown), and several bindings of
the unknowns drawn per step:

- a step planned ALLOW or DENY gets that decision under every binding, when
  the bound request is decided normally (JSON form -> validation -> engine,
  as `stepguard check` decides it);
- a DEPENDS step's residuals, with the binding put in place of the unknowns
  and decided by Cedar (`decide_bound`), give the normal decision.

The bindings are drawn around the policies' edges (business hours' ends,
weekends, the calendar's range, time bounds, break-glass tickets and
approvers, workflows with and without an owner, one the store lacks).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import Decision
from sidecar.core.plan import Verdict, decide_bound, plan_step
from sidecar.core.planreq import plan_from_json, plan_from_proto
from sidecar.core.validate import Limits, datetime_text, request_from_proto
from tests.helpers import POLICIES

BUNDLE: Bundle = load_bundle(POLICIES)
WORKLOADS = [
    "spiffe://example.org/ns/identity/sa/provisioner",
    "spiffe://example.org/ns/identity/sa/deprovisioner",
    "spiffe://example.org/ns/comms/sa/notifier",
    "spiffe://example.org/ns/identity/sa/default",
    "spiffe://example.org/ns/unknown/sa/stranger",  # admitted bare, never acts
]
ACTIONS = [
    "create_account",
    "grant_access",
    "change_access",
    "issue_credential",
    "revoke_access",
    "disable_credential",
    "delete_account",
    "verify_revocation",
    "lookup_identity",
    "notify",
]
FITTING = {
    WORKLOADS[0]: ACTIONS[:4],
    WORKLOADS[1]: ACTIONS[4:8],
    WORKLOADS[2]: ACTIONS[8:],
}
TARGETS = ["okta", "aws-prod", "github", "google-workspace", "jira", "slack"]
USERS = ["maria", "tom", "ines", "dana", "olga", "lee"]
WORKFLOWS = ["onboarding", "leaver", "legacy-offboarding"]
SENSITIVITY = ["low", "medium", "high", "critical"]
TICKETS = ["BG-1", "BG-", "CHG-7", "bg-2", "XBG-1"]

# Around the calendar's edges: 08:00 and 18:00 UTC, a Wednesday, a Sunday, a
# holiday, and outside the calendar's range [2026-01-01, 2028-01-01).
_DAYS = [
    datetime(2026, 11, 25, tzinfo=UTC),  # Wednesday
    datetime(2026, 11, 29, tzinfo=UTC),  # Sunday
    datetime(2026, 12, 25, tzinfo=UTC),  # a holiday
    datetime(2025, 12, 31, tzinfo=UTC),  # before the calendar
    datetime(2027, 12, 31, tzinfo=UTC),  # its last day
    datetime(2028, 1, 3, tzinfo=UTC),  # after it (a Monday)
]
_TIMES = [
    timedelta(hours=h, milliseconds=ms)
    for h in (0, 3, 7, 8, 12, 17, 18, 23)
    for ms in (0, -1, 1)
    if not (h == 0 and ms < 0)
]


def instants() -> st.SearchStrategy[datetime]:
    edge = st.builds(lambda d, t: d + t, st.sampled_from(_DAYS), st.sampled_from(_TIMES))
    anywhere = st.datetimes(
        min_value=datetime(2025, 6, 1), max_value=datetime(2028, 6, 1), timezones=st.just(UTC)
    ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
    return st.one_of(edge, anywhere)


def ref(type_: str, id_: str) -> dict[str, str]:
    return {"type": type_, "id": id_}


@st.composite
def approvals(draw: st.DrawFn, *, ticket: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "approver": ref("User", draw(st.sampled_from(USERS))),
        "approved_at": "2026-11-25T09:00:00Z",
    }
    if ticket if ticket is not None else draw(st.booleans()):
        out["ticket"] = draw(st.sampled_from(TICKETS))
    return out


@st.composite
def time_bounds(draw: st.DrawFn) -> dict[str, str]:
    out = {}
    start = draw(instants())
    if draw(st.booleans()):
        out["not_before"] = datetime_text(start)
    if draw(st.booleans()):
        out["not_after"] = datetime_text(start + draw(st.sampled_from(_TIMES)))
    return out


# The context fields a step may know, leave out, or leave unknown: name -> strategy.
FIELDS: dict[str, Any] = {
    "requester": st.sampled_from(USERS).map(lambda u: ref("User", u)),
    "sensitivity": st.sampled_from(SENSITIVITY),
    "approval": approvals(),
    "time_bound": time_bounds(),
    "workflow": st.sampled_from([*WORKFLOWS, "unheard-of"]),
}


@st.composite
def planned(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A plan step in the JSON form and its unknown paths; `now` is unknown, or the
    step says when it runs (`at`), so Cedar and the simplifier meet it both ways."""
    context: dict[str, Any] = {"workflow_id": "w", "run_id": "r", "step_id": "s"}
    unknown = []
    for name, strategy in FIELDS.items():
        fate = draw(st.sampled_from(["known", "absent", "unknown"]))
        if fate == "unknown":
            unknown.append(name)
        elif fate == "known":
            value = draw(strategy)
            if name == "workflow":
                context.setdefault("attributes", {})["workflow"] = {
                    "__entity": ref("Workflow", value)
                }
            else:
                context[name] = value
    if "approval" in context and "ticket" not in context["approval"] and draw(st.booleans()):
        unknown.append("approval.ticket")
    principal = draw(st.sampled_from(WORKLOADS))
    # Half the time an action the workload's groups are given, so allowed steps are common.
    fitting = FITTING.get(principal, ACTIONS)
    action = draw(st.one_of(st.sampled_from(ACTIONS), st.sampled_from(fitting)))
    step = {
        "step_id": "s",
        "principal": ref("Workload", principal),
        "action": ref("Action", action),
        "resource": ref("TargetSystem", draw(st.sampled_from(TARGETS))),
        "context": context,
        "unknown": unknown,
    }
    if draw(st.booleans()):
        step["at"] = datetime_text(draw(instants()))
    return step, unknown


@st.composite
def bindings(draw: st.DrawFn, step: dict[str, Any], unknown: list[str]) -> dict[str, Any]:
    """Values for the unknowns, in the JSON request form (what the run will send); a
    step planned `at` a time runs then."""
    at = step.get("at")
    now = datetime.fromisoformat(at.replace("Z", "+00:00")) if at else draw(instants())
    out: dict[str, Any] = {"now": now}
    for path in unknown:
        if path == "approval.ticket":
            out[path] = draw(st.sampled_from(TICKETS))
        elif path == "approval":
            out[path] = draw(approvals())
        else:
            out[path] = draw(FIELDS[path])
    return out


def bound_request(step: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    request = {k: copy.deepcopy(step[k]) for k in ("principal", "action", "resource", "context")}
    ctx = request["context"]
    for path, value in values.items():
        if path == "now":
            continue
        if path == "workflow":
            ctx.setdefault("attributes", {})["workflow"] = {"__entity": ref("Workflow", value)}
        elif path == "approval.ticket":
            ctx["approval"]["ticket"] = value
        else:
            ctx[path] = value
    return request


def cedar_values(values: dict[str, Any]) -> dict[str, Any]:
    """The same values as the Cedar context holds them (what validation makes of them)."""

    def dt(text: str) -> dict[str, Any]:
        ms = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return {"__extn": {"fn": "datetime", "arg": datetime_text(ms)}}

    out: dict[str, Any] = {}
    for path, value in values.items():
        if path == "now":
            out[path] = {"__extn": {"fn": "datetime", "arg": datetime_text(value)}}
        elif path in ("requester",):
            out[path] = {"__entity": value}
        elif path == "workflow":
            out[path] = {"__entity": ref("Workflow", value)}
        elif path == "approval":
            approval = {
                "approver": {"__entity": value["approver"]},
                "approved_at": dt(value["approved_at"]),
            }
            if "ticket" in value:
                approval["ticket"] = value["ticket"]
            out[path] = approval
        elif path == "time_bound":
            out[path] = {k: dt(v) for k, v in value.items()}
        else:
            out[path] = value
    return out


def normal_decision(request: dict[str, Any], now: datetime) -> Decision:
    msg = request_from_json(request)
    model = request_from_proto(msg, BUNDLE, Limits(), now=now)
    return evaluate(BUNDLE, model).decision


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_plans_hold_under_every_binding_drawn(data: st.DataObject) -> None:
    step, unknown = data.draw(planned())
    plan = plan_from_proto(plan_from_json({"run_id": "r", "steps": [step]}), BUNDLE, Limits())
    (planned_step,) = plan.steps
    verdict = plan_step(BUNDLE, planned_step)
    for _ in range(3):
        values = data.draw(bindings(step, unknown))
        actual = normal_decision(bound_request(step, values), values["now"])
        if verdict.verdict is Verdict.ALLOW:
            assert actual is Decision.ALLOW, (verdict.reason, values)
        elif verdict.verdict is Verdict.DENY:
            assert actual is Decision.DENY, (verdict.reason, values)
        else:
            bound = cedar_values(values)
            if "at" in step:
                del bound["now"]  # known: it is in the planned context already
            predicted = decide_bound(BUNDLE, verdict, planned_step, bound)
            assert predicted is actual, (verdict.reason, values)


def test_the_generator_reaches_every_verdict() -> None:
    """Not a tautology: the property meets ALLOW, DENY and DEPENDS steps alike."""
    seen: set[Verdict] = set()

    @settings(max_examples=150, deadline=None)
    @given(planned())
    def collect(drawn: tuple[dict[str, Any], list[str]]) -> None:
        plan = plan_from_proto(
            plan_from_json({"run_id": "r", "steps": [drawn[0]]}), BUNDLE, Limits()
        )
        seen.add(plan_step(BUNDLE, plan.steps[0]).verdict)

    collect()
    assert seen == {Verdict.ALLOW, Verdict.DENY, Verdict.DEPENDS}
