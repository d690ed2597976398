"""`@revoke_within` flows from the permit to the Result and into the decision's audit
event (fresh and cached), through the real gRPC server; the gRPC response keeps only
`max_credential_ttl` (proto/ is unchanged; docs/api.md)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import jsonschema

from sidecar.client import StepguardClient
from sidecar.core.bundle import Source, build_bundle
from sidecar.core.engine import evaluate
from sidecar.core.event import CallMeta, build_event
from sidecar.core.model import AuthzRequest, Decision, EntityUid, Result
from tests.helpers import BUSINESS_HOURS, ROOT, grant_request, running_sidecar

SCHEMA = "entity U; entity R; action a appliesTo { principal: [U], resource: [R] };"
STORE = '[{"uid": {"type": "R", "id": "r"}, "attrs": {}, "parents": []}]'


def _decide(policies: str) -> tuple[AuthzRequest, Result]:
    bundle = build_bundle(
        [Source("p.cedar", policies)],
        Source("s.cedarschema", SCHEMA),
        [Source("entities.json", STORE)],
    )
    request = AuthzRequest(EntityUid("U", "u"), EntityUid("Action", "a"), EntityUid("R", "r"), {})
    return request, evaluate(bundle, request)


def test_the_smallest_revoke_within_of_the_determining_permits_binds() -> None:
    request, result = _decide(
        '@id("day") @revoke_within("P1D") permit (principal, action, resource);\n'
        '@id("hour") @revoke_within("PT1H") @max_credential_ttl("PT5M")\n'
        "permit (principal, action, resource);\n"
        '@id("none") permit (principal, action, resource);\n'
    )
    assert result.decision is Decision.ALLOW
    assert result.obligations.revoke_within == timedelta(hours=1)
    assert result.obligations.max_credential_ttl == timedelta(minutes=5)
    event = build_event(
        "d1", BUSINESS_HOURS, request, result, CallMeta(), cached=False, latency_s=0
    )
    assert event["obligations"] == {"max_credential_ttl_s": 300.0, "revoke_within_s": 3600.0}
    schema = json.loads((ROOT / "sidecar/audit/event.schema.json").read_text())
    assert (
        "revoke_within_s" in schema["$defs"]["decision"]["properties"]["obligations"]["properties"]
    )


def test_a_deny_carries_no_obligation() -> None:
    request, result = _decide(
        '@revoke_within("P1D") permit (principal, action, resource);\n'
        "forbid (principal, action, resource);\n"
    )
    assert result.decision is Decision.DENY
    assert result.obligations.revoke_within is None
    event = build_event(
        "d1", BUSINESS_HOURS, request, result, CallMeta(), cached=False, latency_s=0
    )
    assert event["obligations"] == {}


def test_the_trail_records_revoke_within_fresh_and_cached(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running, StepguardClient(running.tcp) as client:
        first = client.authorize(grant_request())
        second = client.authorize(grant_request())
        assert first.allowed and second.allowed
        # the answer carries it too (AuthorizeResponse.obligations.revoke_within)
        assert first.max_credential_ttl is None
        assert first.revoke_within == second.revoke_within == timedelta(hours=24)
        events = running.audit_events()
    grants = [e for e in events if e["id"] in (first.decision_id, second.decision_id)]
    assert [e["cached"] for e in grants] == [False, True]
    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "sidecar/audit/event.schema.json").read_text())
    )
    for event in grants:
        validator.validate(event)
        assert event["obligations"] == {"revoke_within_s": 86400.0}
        assert event["reasons"][0]["policy"] == "provisioning-workloads-change-identities"
