"""The bundled example policies (policies/), decided through load_bundle and evaluate.

Each rule of policies/README.md has cases that allow and cases that deny, and
every case checks the decision and the ids of the determining policies.

Times used below (the calendar in policies/entities.json opens 08:00-18:00 UTC
on weekdays that are not holidays):
2026-11-25 is a Wednesday, 2026-11-29 a Sunday, 2026-12-25 a Friday holiday.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.model import AuthzRequest, Decision, EntityData, EntityUid, Result

POLICIES = Path(__file__).resolve().parents[2] / "policies"

WEDNESDAY_10 = "2026-11-25T10:00:00Z"
WEDNESDAY_23 = "2026-11-25T23:00:00Z"
SUNDAY_03 = "2026-11-29T03:00:00Z"

PROVISIONER = EntityUid("Workload", "spiffe://example.org/ns/identity/sa/provisioner")
DEPROVISIONER = EntityUid("Workload", "spiffe://example.org/ns/identity/sa/deprovisioner")
NOTIFIER = EntityUid("Workload", "spiffe://example.org/ns/comms/sa/notifier")
ETL_WORKER = EntityUid("Workload", "spiffe://example.org/ns/etl/sa/worker")
SHARED_DEFAULT = EntityUid("Workload", "spiffe://example.org/ns/identity/sa/default")
ROBOT = EntityUid("ServiceAccount", "svc-idm-robot")

# Determining policy ids, as policies/README.md lists them.
PROVISION = "provisioning-workloads-change-identities"
APPROVAL = "identity-change-requires-independent-approval"
OWNED = "identity-change-requires-owned-workflow"
TIME_BOUND = "step-outside-time-bound"
TTL_HIGH = "issue-credential-high-sensitivity"
TTL_STANDARD = "issue-credential-standard-sensitivity"
SHARED = "shared-accounts-never-act"
UNREGISTERED = "unregistered-workloads-never-act"
DEPROVISION = "deprovisioning-workloads-remove-access"
LEAVER = "leaver-deprovisioning-any-time"
BREAK_GLASS = "sensitive-target-after-hours-requires-break-glass"
READ = "step-runners-read-and-notify"


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(POLICIES)


def datetime_(value: str) -> dict[str, Any]:
    return {"__extn": {"fn": "datetime", "arg": value}}


def entity(type_: str, id_: str) -> dict[str, Any]:
    return {"__entity": {"type": type_, "id": id_}}


def step_context(
    now: str = WEDNESDAY_10,
    *,
    requester: str | None = "maria",
    approver: str | None = "ines",
    ticket: str | None = None,
    workflow: str | None = "onboarding",
    **extra: Any,
) -> dict[str, Any]:
    """A Cedar context as the server builds it; by default a well-approved onboarding step."""
    ctx: dict[str, Any] = {
        "now": datetime_(now),
        "workflow_id": workflow or "adhoc",
        "run_id": "run-0001",
        "step_id": "step",
        "attempt": 1,
    }
    if requester is not None:
        ctx["requester"] = entity("User", requester)
    if workflow is not None:
        ctx["workflow"] = entity("Workflow", workflow)
    if approver is not None:
        ctx["approval"] = {
            "approver": entity("User", approver),
            "approved_at": datetime_("2026-11-24T16:00:00Z"),
        }
        if ticket is not None:
            ctx["approval"]["ticket"] = ticket
    ctx.update(extra)
    return ctx


def leaver_context(now: str = SUNDAY_03, **overrides: Any) -> dict[str, Any]:
    """A leaver step: triggered by HR, no approval needed."""
    return step_context(
        now, **{"requester": "maria", "approver": None, "workflow": "leaver", **overrides}
    )


def decide(
    bundle: Bundle,
    action: str,
    target: str,
    context: dict[str, Any],
    *,
    principal: EntityUid = PROVISIONER,
    entities: tuple[EntityData, ...] = (),
) -> Result:
    request = AuthzRequest(
        principal=principal,
        action=EntityUid("Action", action),
        resource=EntityUid("TargetSystem", target),
        context={**context, "target_system": target},
        entities=entities,
    )
    return evaluate(bundle, request)


def assert_allowed(result: Result, *policy_ids: str) -> None:
    assert result.decision is Decision.ALLOW, result.summary()
    assert {r.id for r in result.reasons} == set(policy_ids), result.summary()
    assert result.errors == ()


def assert_denied(result: Result, *policy_ids: str) -> None:
    """Denied by exactly these forbids (none: no permit applied)."""
    assert result.decision is Decision.DENY, result.summary()
    assert {r.id for r in result.reasons} == set(policy_ids), result.summary()
    assert result.errors == ()
    assert result.obligations.max_credential_ttl is None


# --- the bundle itself -------------------------------------------------------


def test_every_policy_has_a_stable_id_and_a_description(bundle: Bundle) -> None:
    assert set(bundle.policies) == {
        PROVISION,
        APPROVAL,
        OWNED,
        TIME_BOUND,
        TTL_HIGH,
        TTL_STANDARD,
        SHARED,
        UNREGISTERED,
        DEPROVISION,
        LEAVER,
        BREAK_GLASS,
        READ,
    }
    for pid, info in bundle.policies.items():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", pid), pid
        assert info.annotations["id"] == pid
        assert info.annotations.get("description"), f"{pid} has no @description"
        if info.max_credential_ttl is not None:
            assert info.effect == "permit", f"{pid}: a forbid never determines an ALLOW"


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.cedar")), ids=lambda p: p.name)
def test_policy_files_are_formatted_and_validate(path: Path) -> None:
    text = path.read_text()
    assert cedarpy.format_policies(text) == text
    schema = cedarpy.Schema.from_str((POLICIES / "schema.cedarschema").read_text())
    result = cedarpy.validate_policies(text, schema)
    assert result.validation_passed, [str(e) for e in result.errors]


# --- rule 1: identity changes need an independent approval and an owned workflow


@pytest.mark.parametrize("action", ["create_account", "grant_access", "change_access"])
def test_approved_identity_change_in_owned_workflow_is_allowed(bundle: Bundle, action: str) -> None:
    result = decide(bundle, action, "jira", step_context())
    assert_allowed(result, PROVISION)
    assert result.obligations.max_credential_ttl is None


def test_self_approval_is_denied(bundle: Bundle) -> None:
    # ines may approve identity changes, but not the one she asked for.
    result = decide(bundle, "grant_access", "jira", step_context(requester="ines"))
    assert_denied(result, APPROVAL)


def test_missing_approval_is_denied(bundle: Bundle) -> None:
    assert_denied(decide(bundle, "grant_access", "jira", step_context(approver=None)), APPROVAL)


def test_approval_without_a_named_requester_is_denied(bundle: Bundle) -> None:
    # Independence from the requester cannot be checked without one.
    result = decide(bundle, "create_account", "slack", step_context(requester=None))
    assert_denied(result, APPROVAL)


def test_approver_outside_the_approvers_group_is_denied(bundle: Bundle) -> None:
    result = decide(bundle, "grant_access", "jira", step_context(approver="tom"))
    assert_denied(result, APPROVAL)


def test_break_glass_approvers_are_identity_approvers(bundle: Bundle) -> None:
    result = decide(bundle, "grant_access", "jira", step_context(approver="dana"))
    assert_allowed(result, PROVISION)


def test_approver_that_is_the_principal_is_denied(bundle: Bundle) -> None:
    # Approvers are Users and principals are workloads, so a workload approving
    # its own step does not even form a valid request: DENY, no policy, an error.
    ctx = step_context()
    ctx["approval"]["approver"] = entity(PROVISIONER.type, PROVISIONER.id)
    result = decide(bundle, "grant_access", "jira", ctx)
    assert result.decision is Decision.DENY
    assert result.reasons == ()
    assert result.errors
    assert 'is not valid for `Action::"grant_access"`' in result.errors[0].message


def test_workflow_without_an_owner_is_denied(bundle: Bundle) -> None:
    result = decide(bundle, "grant_access", "jira", step_context(workflow="legacy-offboarding"))
    assert_denied(result, OWNED)


@pytest.mark.parametrize("workflow", [None, "not-registered"])
def test_missing_or_unknown_workflow_is_denied(bundle: Bundle, workflow: str | None) -> None:
    result = decide(bundle, "create_account", "slack", step_context(workflow=workflow))
    assert_denied(result, OWNED)


def test_both_identity_guardrails_report_together(bundle: Bundle) -> None:
    ctx = step_context(approver=None, workflow=None)
    assert_denied(decide(bundle, "change_access", "jira", ctx), APPROVAL, OWNED)


# --- rule 2: a step runs only inside its time bound --------------------------


def bound(not_before: str | None = None, not_after: str | None = None) -> dict[str, Any]:
    tb: dict[str, Any] = {}
    if not_before is not None:
        tb["not_before"] = datetime_(not_before)
    if not_after is not None:
        tb["not_after"] = datetime_(not_after)
    return tb


@pytest.mark.parametrize(
    "time_bound",
    [
        bound("2026-11-25T09:00:00Z", "2026-11-25T11:00:00Z"),
        bound("2026-11-25T10:00:00Z", "2026-11-25T10:00:00Z"),  # both ends inclusive
        bound(not_before="2026-11-25T09:59:59Z"),
        bound(not_after="2026-11-25T10:00:01Z"),
        bound(),
    ],
    ids=["inside", "both-ends-inclusive", "only-not-before", "only-not-after", "empty"],
)
def test_step_inside_its_time_bound_is_allowed(bundle: Bundle, time_bound: dict[str, Any]) -> None:
    result = decide(bundle, "grant_access", "jira", step_context(time_bound=time_bound))
    assert_allowed(result, PROVISION)


@pytest.mark.parametrize(
    "time_bound",
    [
        bound("2026-11-25T10:00:01Z", "2026-11-25T12:00:00Z"),
        bound("2026-11-25T08:00:00Z", "2026-11-25T09:59:59Z"),
        bound(not_before="2026-11-26T00:00:00Z"),
        bound(not_after="2026-11-24T00:00:00Z"),
    ],
    ids=["too-early", "too-late", "only-not-before", "only-not-after"],
)
def test_step_outside_its_time_bound_is_denied(bundle: Bundle, time_bound: dict[str, Any]) -> None:
    result = decide(bundle, "grant_access", "jira", step_context(time_bound=time_bound))
    assert_denied(result, TIME_BOUND)


def test_time_bound_also_holds_for_leaver_steps(bundle: Bundle) -> None:
    ctx = leaver_context(time_bound=bound(not_after="2026-11-29T02:00:00Z"))
    assert_denied(decide(bundle, "revoke_access", "okta", ctx, principal=DEPROVISIONER), TIME_BOUND)


# --- rule 3: short-lived credentials on high and critical targets ------------


@pytest.mark.parametrize("target", ["okta", "aws-prod", "github", "google-workspace"])
def test_credential_for_high_or_critical_target_lives_15_minutes(
    bundle: Bundle, target: str
) -> None:
    result = decide(bundle, "issue_credential", target, step_context())
    assert_allowed(result, TTL_HIGH)
    assert result.obligations.max_credential_ttl == timedelta(minutes=15)


@pytest.mark.parametrize("target", ["slack", "jira"])
def test_credential_for_low_or_medium_target_lives_an_hour(bundle: Bundle, target: str) -> None:
    result = decide(bundle, "issue_credential", target, step_context())
    assert_allowed(result, TTL_STANDARD)
    assert result.obligations.max_credential_ttl == timedelta(hours=1)


def test_caller_can_raise_sensitivity(bundle: Bundle) -> None:
    result = decide(bundle, "issue_credential", "jira", step_context(sensitivity="high"))
    assert_allowed(result, TTL_HIGH)
    assert result.obligations.max_credential_ttl == timedelta(minutes=15)


def test_caller_cannot_lower_sensitivity(bundle: Bundle) -> None:
    result = decide(bundle, "issue_credential", "okta", step_context(sensitivity="low"))
    assert_allowed(result, TTL_HIGH)
    assert result.obligations.max_credential_ttl == timedelta(minutes=15)


def test_unknown_target_counts_as_high(bundle: Bundle) -> None:
    # Requests never reach Cedar with an unknown target (validation denies it as unknown,
    # tests/core/test_request_entities.py); the policies still fail closed on their own.
    result = decide(bundle, "issue_credential", "new-saas", step_context())
    assert_allowed(result, TTL_HIGH)
    assert result.obligations.max_credential_ttl == timedelta(minutes=15)


def test_credential_issuance_still_needs_approval(bundle: Bundle) -> None:
    result = decide(bundle, "issue_credential", "okta", step_context(requester="ines"))
    assert_denied(result, APPROVAL)


# --- rule 4: workload identities, never shared accounts ----------------------


def test_shared_workload_is_denied_even_in_a_trusted_group(bundle: Bundle) -> None:
    # The namespace's default service account sits in the provisioning group.
    result = decide(bundle, "grant_access", "jira", step_context(), principal=SHARED_DEFAULT)
    assert_denied(result, SHARED)


def test_service_account_is_denied(bundle: Bundle) -> None:
    result = decide(bundle, "notify", "slack", step_context(), principal=ROBOT)
    assert_denied(result, SHARED)


def test_unregistered_workload_is_denied_as_unregistered(bundle: Bundle) -> None:
    """Not as shared: the reason must point the reader to the store (issue 16)."""
    stranger = EntityUid("Workload", "spiffe://example.org/ns/etl/sa/stranger")
    result = decide(bundle, "notify", "slack", step_context(), principal=stranger)
    assert_denied(result, UNREGISTERED)


def test_workload_outside_the_granting_group_gets_no_permit(bundle: Bundle) -> None:
    result = decide(bundle, "grant_access", "jira", step_context(), principal=ETL_WORKER)
    assert_denied(result)


def test_own_workload_identity_may_notify(bundle: Bundle) -> None:
    ctx = step_context(approver=None)
    assert_allowed(decide(bundle, "notify", "slack", ctx, principal=NOTIFIER), READ)


# --- rule 5: leaver deprovisioning is never blocked by business hours ---------


@pytest.mark.parametrize(
    "action", ["revoke_access", "disable_credential", "delete_account", "verify_revocation"]
)
def test_leaver_revocation_is_allowed_at_3am_on_sunday(bundle: Bundle, action: str) -> None:
    result = decide(bundle, action, "okta", leaver_context(SUNDAY_03), principal=DEPROVISIONER)
    assert_allowed(result, DEPROVISION, LEAVER)


def test_leaver_revocation_needs_no_requester_or_approval(bundle: Bundle) -> None:
    ctx = leaver_context(requester=None)
    result = decide(bundle, "revoke_access", "aws-prod", ctx, principal=DEPROVISIONER)
    assert_allowed(result, DEPROVISION, LEAVER)


def test_leaver_workflow_without_owner_is_blocked_at_night(bundle: Bundle) -> None:
    ctx = leaver_context(workflow="legacy-offboarding")
    result = decide(bundle, "revoke_access", "okta", ctx, principal=DEPROVISIONER)
    assert_denied(result, BREAK_GLASS)


def test_deprovisioning_outside_a_leaver_workflow_is_blocked_at_night(bundle: Bundle) -> None:
    ctx = leaver_context(workflow="onboarding")
    result = decide(bundle, "disable_credential", "okta", ctx, principal=DEPROVISIONER)
    assert_denied(result, BREAK_GLASS)


def test_unowned_leaver_revocation_is_allowed_in_business_hours(bundle: Bundle) -> None:
    ctx = leaver_context(WEDNESDAY_10, workflow="legacy-offboarding")
    result = decide(bundle, "revoke_access", "okta", ctx, principal=DEPROVISIONER)
    assert_allowed(result, DEPROVISION)


def test_leaver_exemption_does_not_cover_identity_changes(bundle: Bundle) -> None:
    ctx = step_context(SUNDAY_03, workflow="leaver")
    assert_denied(decide(bundle, "grant_access", "okta", ctx), BREAK_GLASS)


def test_provisioning_workload_cannot_deprovision(bundle: Bundle) -> None:
    assert_denied(decide(bundle, "revoke_access", "slack", leaver_context()))


# --- rule 6: high and critical targets after hours need break-glass ----------


def test_high_sensitivity_grant_at_night_without_break_glass_is_denied(bundle: Bundle) -> None:
    result = decide(bundle, "grant_access", "okta", step_context(WEDNESDAY_23))
    assert_denied(result, BREAK_GLASS)


def test_high_sensitivity_grant_at_night_with_break_glass_is_allowed(bundle: Bundle) -> None:
    ctx = step_context(WEDNESDAY_23, approver="dana", ticket="BG-1042")
    assert_allowed(decide(bundle, "grant_access", "okta", ctx), PROVISION)


def test_break_glass_credential_keeps_the_short_ttl(bundle: Bundle) -> None:
    ctx = step_context(SUNDAY_03, approver="dana", ticket="BG-1042")
    result = decide(bundle, "issue_credential", "aws-prod", ctx)
    assert_allowed(result, TTL_HIGH)
    assert result.obligations.max_credential_ttl == timedelta(minutes=15)


@pytest.mark.parametrize(
    ("approver", "ticket", "requester"),
    [
        ("dana", "CHG-1042", "maria"),  # not a break-glass ticket
        ("dana", None, "maria"),  # no ticket at all
        ("ines", "BG-1042", "maria"),  # approver is not a break-glass approver
    ],
    ids=["change-ticket", "no-ticket", "not-break-glass-approver"],
)
def test_incomplete_break_glass_is_denied(
    bundle: Bundle, approver: str, ticket: str | None, requester: str
) -> None:
    ctx = step_context(WEDNESDAY_23, approver=approver, ticket=ticket, requester=requester)
    assert_denied(decide(bundle, "grant_access", "github", ctx), BREAK_GLASS)


def test_break_glass_self_approval_is_denied(bundle: Bundle) -> None:
    ctx = step_context(WEDNESDAY_23, approver="dana", ticket="BG-1042", requester="dana")
    assert_denied(decide(bundle, "grant_access", "okta", ctx), APPROVAL, BREAK_GLASS)


@pytest.mark.parametrize(
    "now",
    [
        "2026-11-25T08:00:00Z",
        "2026-11-25T17:59:59Z",
        "2026-11-23T12:00:00Z",  # Monday
        "2027-06-04T09:30:00Z",  # Friday
    ],
)
def test_high_sensitivity_grant_in_business_hours_is_allowed(bundle: Bundle, now: str) -> None:
    assert_allowed(decide(bundle, "grant_access", "okta", step_context(now)), PROVISION)


@pytest.mark.parametrize(
    "now",
    [
        "2026-11-25T07:59:59Z",
        "2026-11-25T18:00:00Z",
        "2026-11-28T12:00:00Z",  # Saturday
        "2026-11-29T12:00:00Z",  # Sunday
        "2026-12-25T11:00:00Z",  # holiday (a Friday)
        "2025-12-03T10:00:00Z",  # a Wednesday before the calendar's range
        "2028-03-01T10:00:00Z",  # a Wednesday after the calendar's range
    ],
)
def test_high_sensitivity_grant_out_of_hours_is_denied(bundle: Bundle, now: str) -> None:
    assert_denied(decide(bundle, "grant_access", "okta", step_context(now)), BREAK_GLASS)


def test_low_and_medium_targets_need_no_break_glass(bundle: Bundle) -> None:
    assert_allowed(decide(bundle, "grant_access", "slack", step_context(SUNDAY_03)), PROVISION)
    assert_allowed(decide(bundle, "create_account", "jira", step_context(SUNDAY_03)), PROVISION)


def test_declared_high_sensitivity_needs_break_glass(bundle: Bundle) -> None:
    ctx = step_context(WEDNESDAY_23, sensitivity="critical")
    assert_denied(decide(bundle, "grant_access", "jira", ctx), BREAK_GLASS)


def test_unknown_target_needs_break_glass_at_night(bundle: Bundle) -> None:
    ctx = step_context(WEDNESDAY_23)
    assert_denied(decide(bundle, "create_account", "new-saas", ctx), BREAK_GLASS)


def test_read_only_steps_on_critical_targets_are_not_hour_bound(bundle: Bundle) -> None:
    ctx = step_context(SUNDAY_03, approver=None)
    assert_allowed(decide(bundle, "lookup_identity", "okta", ctx, principal=ETL_WORKER), READ)


# --- whole workflows ---------------------------------------------------------


def test_onboarding_workflow_runs_end_to_end(bundle: Bundle) -> None:
    steps = [
        ("lookup_identity", "okta", PROVISIONER, READ, None),
        ("create_account", "okta", PROVISIONER, PROVISION, None),
        ("grant_access", "github", PROVISIONER, PROVISION, None),
        ("issue_credential", "aws-prod", PROVISIONER, TTL_HIGH, timedelta(minutes=15)),
        ("issue_credential", "jira", PROVISIONER, TTL_STANDARD, timedelta(hours=1)),
        ("notify", "slack", NOTIFIER, READ, None),
    ]
    for action, target, principal, policy_id, ttl in steps:
        result = decide(bundle, action, target, step_context(), principal=principal)
        assert_allowed(result, policy_id)
        assert result.obligations.max_credential_ttl == ttl, action


def test_leaver_workflow_runs_end_to_end_at_night(bundle: Bundle) -> None:
    for action, target in [
        ("revoke_access", "okta"),
        ("revoke_access", "github"),
        ("disable_credential", "aws-prod"),
        ("verify_revocation", "okta"),
    ]:
        result = decide(bundle, action, target, leaver_context(), principal=DEPROVISIONER)
        assert_allowed(result, DEPROVISION, LEAVER)
    assert_allowed(decide(bundle, "notify", "slack", leaver_context(), principal=NOTIFIER), READ)


def test_request_supplied_target_is_decided_by_its_attributes(bundle: Bundle) -> None:
    target = EntityData(EntityUid("TargetSystem", "new-wiki"), {"sensitivity": "low"})
    result = decide(bundle, "issue_credential", "new-wiki", step_context(), entities=(target,))
    assert_allowed(result, TTL_STANDARD)
    assert result.obligations.max_credential_ttl == timedelta(hours=1)
