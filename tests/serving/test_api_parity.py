"""The same request gets the same decision over gRPC and over AuthZEN (issue 16, point 14).

One real sidecar serves both APIs. Each request is written once in the gRPC
JSON form (`sidecar.core.jsonreq`), translated into the AuthZEN request that says
the same thing (`to_authzen`), and sent both ways; ALLOW on one must be ALLOW
on the other (an error or a refusal counts as not allowed). The requests are
every case of the example suites (policies/tests, at each case's `now`) and
the fuzz corpus of tests/serving/test_fuzz_servicer.py.

A few gRPC requests have no AuthZEN equivalent and are skipped (Hypothesis
`event`s say how often): entity parents (AuthZEN has none), an action type
other than `Action` (AuthZEN names actions only), attributes for an entity the
store holds (AuthZEN requires such properties to be ignored, gRPC refuses
them), free-form attributes named like a typed field, and a negative
`attempt` (a check of gRPC's typed field).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.authoring.testing.suites import SuiteSpec, load_yaml
from sidecar.core.errors import InvalidRequest
from sidecar.core.jsonreq import request_from_json
from sidecar.core.validate import RESERVED_CONTEXT
from tests.helpers import BUSINESS_HOURS, NOTIFIER, POLICIES, Running, running_sidecar
from tests.serving.authzen.authzen_client import Pdp
from tests.serving.test_fuzz_servicer import ENTITIES, requests


def _suite_specs() -> list[tuple[str, SuiteSpec]]:
    out = []
    for path in sorted((POLICIES / "tests").glob("*.yaml")):
        doc = load_yaml(path)
        if "cases" in doc or "matrix" in doc:  # not a fixtures-only file
            out.append((path.name, SuiteSpec.parse(doc, path)))
    return out


# The suites' own fixture entities (a target only their cases know) join the store
# of the one bundle both APIs serve here, as `stepguard test` adds them per suite.
SUITE_ENTITIES = [dict(e) for _, spec in _suite_specs() for e in spec.entities]
STORE = {(e["uid"]["type"], e["uid"]["id"]) for e in [*ENTITIES, *SUITE_ENTITIES]}


class Untranslatable(Exception):
    """The gRPC request has no AuthZEN equivalent."""


def _instant(text: str) -> str:
    """An RFC 3339 instant in Cedar's form, at Cedar's resolution (gRPC truncates to ms)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _entity(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("parents"):
        raise Untranslatable("parents")
    out = {"type": data["type"], "id": data["id"]}
    if data.get("attributes"):
        if (data["type"], data["id"]) in STORE:
            raise Untranslatable("attributes of a stored entity")
        out["properties"] = data["attributes"]
    return out


def to_authzen(req: dict[str, Any]) -> dict[str, Any]:
    """The AuthZEN evaluation that asks what the gRPC JSON request asks."""
    action = req["action"]
    if action.get("type") != "Action":
        raise Untranslatable("action type")
    ctx_in = req.get("context") or {}
    ctx: dict[str, Any] = {}
    for name, value in (ctx_in.get("attributes") or {}).items():
        if name in RESERVED_CONTEXT:
            raise Untranslatable("attribute named like a typed field")
        ctx[name] = value
    for name in ("workflow_id", "run_id", "step_id", "target_system"):
        if ctx_in.get(name):
            ctx[name] = ctx_in[name]
    if ctx_in.get("attempt"):
        if ctx_in["attempt"] < 0:
            raise Untranslatable("negative attempt")
        ctx["attempt"] = ctx_in["attempt"]
    if "requester" in ctx_in:
        ctx["requester"] = {"__entity": ctx_in["requester"]}
    if ctx_in.get("sensitivity"):
        ctx["sensitivity"] = ctx_in["sensitivity"]
    if "time_bound" in ctx_in:
        ctx["time_bound"] = {k: _instant(v) for k, v in ctx_in["time_bound"].items()}
    if "approval" in ctx_in:
        approval = ctx_in["approval"]
        ctx["approval"] = {
            k: v
            for k, v in {
                "approver": {"__entity": approval["approver"]} if "approver" in approval else None,
                "approved_at": _instant(approval["approved_at"])
                if "approved_at" in approval
                else None,
                "ticket": approval.get("ticket") or None,
            }.items()
            if v is not None
        }
    return {
        "subject": _entity(req["principal"]),
        "action": {"name": action["id"]},
        "resource": _entity(req["resource"]),
        "context": ctx,
    }


class Clock:
    def __init__(self) -> None:
        self.now = BUSINESS_HOURS

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Pdp, Clock]]:
    clock = Clock()
    tmp = tmp_path_factory.mktemp("parity")
    bundle = tmp / "policies"
    shutil.copytree(POLICIES, bundle, ignore=shutil.ignore_patterns("tests"))
    (bundle / "entities.json").write_text(json.dumps([*ENTITIES, *SUITE_ENTITIES], indent=1))
    with running_sidecar(
        tmp, policies=bundle, clock=clock, authzen_listen="127.0.0.1:0"
    ) as running:
        pdp = Pdp(str(running.sidecar.endpoints.authzen))
        try:
            yield running, pdp, clock
        finally:
            pdp.close()


@pytest.fixture(scope="module")
def channel(both: tuple[Running, Pdp, Clock]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(both[0].tcp) as ch:
        yield ch


def _grpc_allows(channel: grpc.Channel, req: dict[str, Any]) -> bool:
    try:
        msg = request_from_json(req)
    except InvalidRequest:
        return False
    method = channel.unary_unary(
        "/stepguard.v1.Authorizer/Authorize",
        request_serializer=None,
        response_deserializer=pb.AuthorizeResponse.FromString,
    )
    try:
        answer: pb.AuthorizeResponse = method(msg.SerializeToString(), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
        return False
    return answer.decision == pb.DECISION_ALLOW


def _authzen_allows(pdp: Pdp, req: dict[str, Any]) -> bool:
    body = to_authzen(req)
    reply = pdp.post("/access/v1/evaluation", raw=json.dumps(body).encode())
    assert reply.status in (200, 400), reply.text
    return reply.status == 200 and reply.json()["decision"] is True


def _same(channel: grpc.Channel, pdp: Pdp, req: dict[str, Any]) -> bool:
    """Whether both APIs allow it (asserting that they agree)."""
    via_grpc = _grpc_allows(channel, req)
    via_http = _authzen_allows(pdp, req)
    assert via_grpc == via_http, f"gRPC {via_grpc}, AuthZEN {via_http} for {req}"
    return via_grpc


def _suite_cases() -> list[tuple[str, datetime | None, dict[str, Any]]]:
    return [
        (f"{name}: {case.name}", case.now or spec.now, dict(case.request))
        for name, spec in _suite_specs()
        for case in spec.cases
    ]


def test_example_suites_decide_alike_on_both_apis(
    both: tuple[Running, Pdp, Clock], channel: grpc.Channel
) -> None:
    _, pdp, clock = both
    cases = _suite_cases()
    allowed = 0
    for name, now, request in cases:
        clock.now = now or BUSINESS_HOURS
        try:
            allowed += _same(channel, pdp, json.loads(json.dumps(request)))
        except Untranslatable:
            pytest.fail(f"{name}: the example suites should all be expressible in AuthZEN")
    clock.now = BUSINESS_HOURS
    assert len(cases) > 50 and 0 < allowed < len(cases)  # both outcomes exercised


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(req=requests)
def test_fuzz_corpus_decides_alike_on_both_apis(
    both: tuple[Running, Pdp, Clock], channel: grpc.Channel, req: dict[str, Any]
) -> None:
    _, pdp, _ = both
    if not {"principal", "action", "resource"} <= req.keys():
        event("skipped: incomplete")
        return
    try:
        event("ALLOW" if _same(channel, pdp, req) else "not allowed")
    except Untranslatable as why:
        event(f"skipped: {why}")


def test_an_undeclared_context_attribute_is_denied_on_both(
    both: tuple[Running, Pdp, Clock], channel: grpc.Channel
) -> None:
    """Measured in issue 16: DENY over gRPC, ALLOW over AuthZEN."""
    context: dict[str, Any] = {"workflow_id": "onboarding", "attributes": {"undeclared": "x"}}
    request = {
        "principal": NOTIFIER,
        "action": {"type": "Action", "id": "notify"},
        "resource": {"type": "TargetSystem", "id": "slack"},
        "context": context,
    }
    assert _same(channel, both[1], request) is False
    del context["attributes"]
    assert _same(channel, both[1], request) is True
