"""Pre-flight plans in the core (core/plan.py, core/planreq.py, core/residual.py).

Also pins what cedarpy 4.12.2's experimental `is_authorized_partial` does, so
that an upgrade that changes it fails here first.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from sidecar.core import plan as plan_mod
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.errors import InvalidRequest
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import Decision, PolicyErrors
from sidecar.core.plan import Verdict, decide_bound, plan_step
from sidecar.core.planreq import plan_from_json, plan_from_proto
from sidecar.core.validate import Limits, request_from_proto
from tests.helpers import POLICIES, grant_request

WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SUNDAY_03 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
DEPROVISIONER = {"type": "Workload", "id": "spiffe://example.org/ns/identity/sa/deprovisioner"}
SHARED = {"type": "Workload", "id": "spiffe://example.org/ns/identity/sa/default"}


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(POLICIES)


def _step(
    request: dict[str, Any], unknown: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {**copy.deepcopy(request), "unknown": unknown or [], **extra}


def _plan(bundle: Bundle, *steps: dict[str, Any]) -> list[plan_mod.StepVerdict]:
    plan = plan_from_proto(plan_from_json({"run_id": "r1", "steps": list(steps)}), bundle, Limits())
    return [plan_step(bundle, s) for s in plan.steps]


def _okta(request: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(request)
    out["resource"] = {"type": "TargetSystem", "id": "okta"}
    out["context"].pop("sensitivity", None)
    return out


def _decide(bundle: Bundle, request: dict[str, Any], now: datetime) -> Decision:
    msg = request_from_json(request)
    return evaluate(bundle, request_from_proto(msg, bundle, Limits(), now=now)).decision


def test_a_joiner_step_on_a_medium_target_is_allowed_whatever_the_time(bundle: Bundle) -> None:
    (verdict,) = _plan(bundle, _step(grant_request()))
    assert verdict.verdict is Verdict.ALLOW
    assert verdict.unknown == ("now",)  # the step's time is unknown unless `at` says it
    assert [r.id for r in verdict.determining] == ["provisioning-workloads-change-identities"]
    for now in (WEDNESDAY_10, SUNDAY_03):
        assert _decide(bundle, grant_request(), now) is Decision.ALLOW


def test_a_shared_account_is_denied_whatever_the_time_naming_the_forbid(bundle: Bundle) -> None:
    request = grant_request()
    request["principal"] = SHARED
    (verdict,) = _plan(bundle, _step(request))
    assert verdict.verdict is Verdict.DENY
    assert [r.id for r in verdict.determining] == ["shared-accounts-never-act"]
    assert "shared-accounts-never-act" in verdict.reason


def test_no_approval_is_a_certain_deny_and_no_permit_one_too(bundle: Bundle) -> None:
    no_approval, revoke = _plan(
        bundle,
        _step(grant_request(approver=None), step_id="grant"),
        _step(
            {**grant_request(), "action": {"type": "Action", "id": "revoke_access"}},
            step_id="revoke",
        ),
    )
    assert no_approval.verdict is Verdict.DENY
    assert [r.id for r in no_approval.determining] == [
        "identity-change-requires-independent-approval"
    ]
    assert revoke.verdict is Verdict.DENY  # the provisioner may not revoke: no permit applies
    assert revoke.determining == ()
    assert "no policy permits" in revoke.reason


def test_a_critical_target_depends_on_the_time_in_words_and_in_cedar(bundle: Bundle) -> None:
    (verdict,) = _plan(bundle, _step(_okta(grant_request())))
    assert verdict.verdict is Verdict.DEPENDS
    assert [r.id for r in verdict.residuals] == [
        "sensitive-target-after-hours-requires-break-glass"
    ]
    assert verdict.satisfied == ("provisioning-workloads-change-identities",)
    assert "the step runs at or after 2026-01-01 and before 2028-01-01" in verdict.reason
    assert "and before 18:00 UTC" in verdict.reason
    assert "at or after 08:00 UTC" in verdict.reason
    assert "business day" in verdict.reason
    (res,) = verdict.residuals
    assert res.effect == "forbid"
    assert 'unknown("now")' in res.cedar
    assert res.cedar.startswith('@id("sensitive-target-after-hours-requires-break-glass")')
    assert res.source.startswith("business_hours.cedar:")
    # The residual with the time bound decides as the engine does.
    step = _steps(bundle, _step(_okta(grant_request())))[0]
    for now in (WEDNESDAY_10, SUNDAY_03):
        value = {"__extn": {"fn": "datetime", "arg": now.strftime("%Y-%m-%dT%H:%M:%SZ")}}
        predicted = decide_bound(bundle, verdict, step, {"now": value})
        assert predicted is _decide(bundle, _okta(grant_request()), now)
    assert _decide(bundle, _okta(grant_request()), SUNDAY_03) is Decision.DENY


def _steps(bundle: Bundle, *steps: dict[str, Any]) -> tuple[plan_mod.PlannedStep, ...]:
    return plan_from_proto(plan_from_json({"steps": list(steps)}), bundle, Limits()).steps


def test_a_known_time_settles_the_step(bundle: Bundle) -> None:
    weekday, weekend = _plan(
        bundle,
        _step(_okta(grant_request()), step_id="a", at="2026-11-25T10:00:00Z"),
        _step(_okta(grant_request()), step_id="b", at="2026-11-29T03:00:00Z"),
    )
    assert (weekday.verdict, weekend.verdict) == (Verdict.ALLOW, Verdict.DENY)
    assert weekday.unknown == ()
    assert [r.id for r in weekend.determining] == [
        "sensitive-target-after-hours-requires-break-glass"
    ]


def test_an_unknown_ticket_says_it_needs_a_break_glass_ticket(bundle: Bundle) -> None:
    request = _okta(grant_request(approver="dana"))
    del request["context"]["approval"]["ticket"]
    (verdict,) = _plan(bundle, _step(request, ["approval.ticket"], at="2026-11-29T03:00:00Z"))
    assert verdict.verdict is Verdict.DEPENDS
    assert 'the approval\'s ticket matches "BG-*"' in verdict.reason
    step = _steps(bundle, _step(request, ["approval.ticket"], at="2026-11-29T03:00:00Z"))[0]
    for ticket, expected in (("BG-7", Decision.ALLOW), ("CHG-1", Decision.DENY)):
        assert decide_bound(bundle, verdict, step, {"approval.ticket": ticket}) is expected
        bound = copy.deepcopy(request)
        bound["context"]["approval"]["ticket"] = ticket
        assert _decide(bundle, bound, SUNDAY_03) is expected


def test_a_leaver_step_is_allowed_at_any_hour(bundle: Bundle) -> None:
    request = {
        "principal": DEPROVISIONER,
        "action": {"type": "Action", "id": "revoke_access"},
        "resource": {"type": "TargetSystem", "id": "okta"},
        "context": {"attributes": {"workflow": {"__entity": {"type": "Workflow", "id": "leaver"}}}},
    }
    (verdict,) = _plan(bundle, _step(request))
    assert verdict.verdict is Verdict.ALLOW
    assert {r.id for r in verdict.determining} == {
        "deprovisioning-workloads-remove-access",
        "leaver-deprovisioning-any-time",
    }


@pytest.mark.parametrize(
    ("unknown", "field", "says"),
    [
        (["approvl"], "steps[0].unknown[0]", "not declared by the schema"),
        (["approval.tickt"], "steps[0].unknown[0]", "not declared by the schema"),
        (["approval"], "steps[0].unknown[0]", "given in the request too"),
        (["workflow.owner"], "steps[0].unknown[0]", "must be a record"),
        (["a b"], "steps[0].unknown[0]", "plain names"),
        (["caller"], "steps[0].unknown[0]", "set by the server"),
        (["now", "now"], "steps[0].unknown[1]", "listed twice"),
    ],
)
def test_unknown_fields_are_checked_against_the_schema(
    bundle: Bundle, unknown: list[str], field: str, says: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        _plan(bundle, _step(grant_request(), unknown))
    assert err.value.field == field
    assert says in err.value.detail


def test_a_bad_request_in_a_step_names_its_field(bundle: Bundle) -> None:
    request = grant_request()
    request["action"]["id"] = "grant_acess"
    with pytest.raises(InvalidRequest) as err:
        _plan(bundle, _step(grant_request()), _step(request, step_id="second"))
    assert err.value.field == "steps[1].request.action"
    assert "did you mean" in str(err.value)
    with pytest.raises(InvalidRequest) as err:
        _plan(bundle, _step(grant_request(), at="yesterday"))
    assert err.value.field == "steps[0].at"


# --- fail safe: whatever partial evaluation does wrong is DEPENDS, never ALLOW --------------


def _allowed_step(bundle: Bundle) -> plan_mod.PlannedStep:
    return _steps(bundle, _step(grant_request()))[0]


def test_an_exception_from_partial_evaluation_is_depends(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("experimental feature broke")

    monkeypatch.setattr(cedarpy, "is_authorized_partial", boom)
    verdict = plan_step(bundle, _allowed_step(bundle))
    assert verdict.verdict is Verdict.DEPENDS
    assert "experimental feature broke" in verdict.reason


def test_errors_or_missing_residuals_are_depends(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cedarpy.is_authorized_partial

    class Errored:
        def __init__(self, inner: Any, errors: list[str], drop: str) -> None:
            self.decision = inner.decision
            self.residuals = {k: v for k, v in inner.residuals.items() if k != drop}
            self.diagnostics = type("D", (), {"errors": errors})()

    for errors, drop, says in (
        (["while evaluating policy x: boom"], "", "reported errors"),
        ([], "provisioning-workloads-change-identities", "no residual for"),
    ):
        monkeypatch.setattr(
            cedarpy,
            "is_authorized_partial",
            lambda *a, e=errors, d=drop, **k: Errored(real(*a, **k), e, d),
        )
        verdict = plan_step(bundle, _allowed_step(bundle))
        assert verdict.verdict is Verdict.DEPENDS
        assert says in verdict.reason


def test_under_policy_errors_deny_an_open_permit_keeps_it_from_allow(bundle: Bundle) -> None:
    """A permit still open could error at run time and turn ALLOW into DENY."""
    verdict = plan_mod._verdict(
        bundle,
        _allowed_step(bundle),
        PolicyErrors.DENY,
        {"provisioning-workloads-change-identities": True, "step-runners-read-and-notify": None},
        {
            "provisioning-workloads-change-identities": {"effect": "permit", "conditions": []},
            "step-runners-read-and-notify": {"effect": "permit", "conditions": []},
        },
    )
    assert verdict.verdict is Verdict.DEPENDS
    verdict = plan_mod._verdict(
        bundle,
        _allowed_step(bundle),
        PolicyErrors.CEDAR,
        {"provisioning-workloads-change-identities": True, "step-runners-read-and-notify": None},
        {
            "provisioning-workloads-change-identities": {"effect": "permit", "conditions": []},
            "step-runners-read-and-notify": {"effect": "permit", "conditions": []},
        },
    )
    assert verdict.verdict is Verdict.ALLOW


# --- what cedarpy 4.12.2's experimental API does (pinned) ------------------------------------


def _partial_request(context: Any) -> dict[str, Any]:
    return {
        "principal": 'Workload::"spiffe://example.org/ns/identity/sa/provisioner"',
        "action": 'Action::"grant_access"',
        "resource": 'TargetSystem::"okta"',
        "context": context,
    }


_CONTEXT = {
    "requester": {"__entity": {"type": "User", "id": "maria"}},
    "approval": {
        "approver": {"__entity": {"type": "User", "id": "ines"}},
        "approved_at": {"__extn": {"fn": "datetime", "arg": "2026-11-25T09:00:00Z"}},
    },
    "workflow": {"__entity": {"type": "Workflow", "id": "onboarding"}},
    "now": plan_mod.unknown_value("now"),
}


def test_pinned_a_schema_refuses_unknowns_in_the_context(bundle: Bundle) -> None:
    answer = cedarpy.is_authorized_partial(
        _partial_request(_CONTEXT), bundle.policy_set, bundle.entities, bundle.schema
    )
    assert answer.decision is cedarpy.Decision.NoDecision
    assert any("validation" in e.lower() for e in answer.diagnostics.errors)


def test_pinned_residuals_cover_every_policy_and_leave_record_reads_open(bundle: Bundle) -> None:
    """Pitfall 2: one unknown and one extension value in the context leave every
    `context has ...` open; core/residual.py closes them."""
    answer = cedarpy.is_authorized_partial(
        _partial_request(_CONTEXT), bundle.policy_set, bundle.entities
    )
    assert answer.decision is cedarpy.Decision.NoDecision
    assert set(answer.residuals) == set(bundle.policies)
    assert "identity-change-requires-owned-workflow" in answer.diagnostics.nontrivial_residuals
    body = str(answer.residuals["step-outside-time-bound"])
    assert "'unknown': [{'Value': 'now'}]" in body
    assert answer.residuals["shared-accounts-never-act"]["conditions"] == [
        {"kind": "when", "body": {"Value": False}}
    ]


def test_pinned_without_extension_values_cedar_settles_it_alone(bundle: Bundle) -> None:
    context = {k: v for k, v in _CONTEXT.items() if k != "approval"}
    answer = cedarpy.is_authorized_partial(
        _partial_request(context), bundle.policy_set, bundle.entities
    )
    assert answer.decision is cedarpy.Decision.Deny
    assert set(answer.diagnostics.must_be_determining) == {
        "identity-change-requires-independent-approval"
    }


def test_plan_module_is_the_only_caller_of_partial_evaluation() -> None:
    root = Path(__file__).resolve().parents[2] / "sidecar"
    callers = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if "is_authorized_partial(" in p.read_text()
    ]
    assert callers == ["core/plan.py"]


def test_an_entity_the_store_lacks_is_absent_not_unknown(bundle: Bundle) -> None:
    """Pitfall 4: partial evaluation reads `Workflow::"unheard-of"` as unknown; a decision
    reads it as absent (no attributes). The plan reads it as the decision does."""
    request = {
        "principal": DEPROVISIONER,
        "action": {"type": "Action", "id": "revoke_access"},
        "resource": {"type": "TargetSystem", "id": "okta"},
        "context": {
            "attributes": {"workflow": {"__entity": {"type": "Workflow", "id": "unheard-of"}}}
        },
    }
    (verdict,) = _plan(bundle, _step(request))
    assert verdict.verdict is Verdict.DEPENDS
    assert verdict.satisfied == ("deprovisioning-workloads-remove-access",)
    assert [r.id for r in verdict.residuals] == [
        "sensitive-target-after-hours-requires-break-glass"
    ]  # the leaver permit is settled false: the unheard-of workflow has no owner
    step = _steps(bundle, _step(request))[0]
    for now in (WEDNESDAY_10, SUNDAY_03):
        value = {"__extn": {"fn": "datetime", "arg": now.strftime("%Y-%m-%dT%H:%M:%SZ")}}
        assert decide_bound(bundle, verdict, step, {"now": value}) is _decide(bundle, request, now)


def test_a_misspelt_plan_field_is_refused_naming_it(bundle: Bundle) -> None:
    """A misspelt `unknown` would leave the field known and change the answer."""
    with pytest.raises(InvalidRequest) as err:
        _plan(bundle, {**_step(grant_request()), "unknwn": ["approval"]})
    assert err.value.field == "steps[0].unknwn"
    assert "did you mean" in str(err.value) and "unknown" in str(err.value)
    with pytest.raises(InvalidRequest) as err:
        plan_from_json({"run": "r", "steps": []})
    assert err.value.field == "run"
    with pytest.raises(InvalidRequest) as err:
        plan_from_json({"steps": [{**_step(grant_request()), "request": grant_request()}]})
    assert err.value.field == "steps[0]"
