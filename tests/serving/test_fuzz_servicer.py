"""Hypothesis: arbitrary request messages, garbage included, against the real server.

Properties: the service never crashes (every call answers INVALID_ARGUMENT or a
decision, and keeps serving); it never ALLOWs what the policy set does not
permit, judged by an oracle that builds the Cedar request independently of
stepguard's translation and asks cedarpy directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy
import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.errors import InvalidRequest
from sidecar.core.jsonreq import request_from_json
from tests.fuzzing import assert_named, unary
from tests.helpers import BUSINESS_HOURS, POLICIES, Running, running_sidecar

ENTITIES = json.loads((POLICIES / "entities.json").read_text())
KNOWN = [e["uid"] for e in ENTITIES]
TYPES = [*sorted({u["type"] for u in KNOWN}), "Bogus", "Action", "", "Work load"]
ACTIONS = [
    "create_account",
    "grant_access",
    "change_access",
    "issue_credential",
    "revoke_access",
    "disable_credential",
    "verify_revocation",
    "delete_account",
    "notify",
    "lookup",
    "identity-change",
    "nope",
    "",
]
TIMES = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))

uids = st.one_of(
    st.sampled_from(KNOWN),
    st.builds(lambda t, i: {"type": t, "id": i}, st.sampled_from(TYPES), st.text(max_size=12)),
)
scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=10))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
        uids.map(lambda u: {"__entity": u}),
        st.builds(
            lambda f, a: {"__extn": {"fn": f, "arg": a}},
            st.sampled_from(["ip", "decimal", "datetime", "duration", "bad"]),
            st.sampled_from(["10.0.0.1", "1.5", "2026-01-01", "1h", "x"]),
        ),
    ),
    max_leaves=6,
)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "requester": uids,
        "workflow_id": st.text(max_size=8),
        "step_id": st.text(max_size=8),
        "attempt": st.integers(-2, 5),
        "sensitivity": st.sampled_from(["low", "medium", "high", "critical"]),
        "time_bound": st.fixed_dictionaries({}, optional={"not_before": TIMES, "not_after": TIMES}),
        "approval": st.fixed_dictionaries(
            {}, optional={"approver": uids, "approved_at": TIMES, "ticket": st.text(max_size=6)}
        ),
        "attributes": st.dictionaries(
            st.sampled_from(["workflow", "break_glass", "now", "x", ""]), values, max_size=3
        ),
    },
)
entities = st.builds(
    lambda u, attrs, parents: {**u, "attributes": attrs, "parents": parents},
    uids,
    st.dictionaries(st.sampled_from(["shared", "sensitivity", "kind", "z"]), values, max_size=2),
    st.lists(uids, max_size=2),
)
WORKLOADS = [u for u in KNOWN if u["type"] in ("Workload", "ServiceAccount")]
USERS = [u for u in KNOWN if u["type"] == "User"]
TARGETS = [u for u in KNOWN if u["type"] == "TargetSystem"]
WORKFLOWS = [{"__entity": u} for u in KNOWN if u["type"] == "Workflow"]
# Requests shaped like real steps, so that a good share of them are allowed and
# the "never allow wrongly" property is exercised, not just the deny path.
plausible = st.fixed_dictionaries(
    {
        "principal": st.sampled_from(WORKLOADS),
        "action": st.sampled_from(ACTIONS[:10]).map(lambda a: {"type": "Action", "id": a}),
        "resource": st.sampled_from(TARGETS),
        "context": st.fixed_dictionaries(
            {"requester": st.sampled_from(USERS)},
            optional={
                "sensitivity": st.sampled_from(["low", "medium", "high", "critical"]),
                "time_bound": st.fixed_dictionaries(
                    {}, optional={"not_before": TIMES, "not_after": TIMES}
                ),
                "approval": st.fixed_dictionaries(
                    {
                        "approver": st.sampled_from(USERS),
                        "approved_at": TIMES,
                        "ticket": st.sampled_from(["CHG-1", "BG-7", ""]),
                    }
                ),
                "attributes": st.fixed_dictionaries(
                    {}, optional={"workflow": st.sampled_from(WORKFLOWS)}
                ),
            },
        ),
    }
)
arbitrary = st.fixed_dictionaries(
    {},
    optional={
        "principal": st.one_of(uids, entities),
        "action": st.builds(
            lambda t, i: {"type": t, "id": i},
            st.sampled_from(["Action", "Action", "Bogus"]),
            st.sampled_from(ACTIONS),
        ),
        "resource": st.one_of(uids, entities),
        "context": contexts,
    },
)
requests = st.one_of(plausible, arbitrary)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_sidecar(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: Running) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.tcp) as ch:
        yield ch


def _call(channel: grpc.Channel, payload: bytes) -> pb.AuthorizeResponse | grpc.RpcError:
    answer: pb.AuthorizeResponse | grpc.RpcError = unary(
        channel, "Authorize", payload, pb.AuthorizeResponse
    )
    return answer


def _assert_answer(result: pb.AuthorizeResponse | grpc.RpcError) -> pb.AuthorizeResponse | None:
    if isinstance(result, grpc.RpcError):
        assert result.code() == grpc.StatusCode.INVALID_ARGUMENT, result.details()
        field, _, message = str(result.details()).partition(": ")
        assert field and message, result.details()
        return None
    assert result.decision in (pb.DECISION_ALLOW, pb.DECISION_DENY)
    assert result.decision_id and result.policy_revision
    return result


_STORE = {(e["uid"]["type"], e["uid"]["id"]) for e in ENTITIES}
_SCHEMA = cedarpy.Schema.from_str((POLICIES / "schema.cedarschema").read_text())
_POLICIES = cedarpy.PolicySet.from_str(
    "\n".join(p.read_text() for p in sorted(POLICIES.glob("*.cedar")))
)


def _cedar_time(text: str) -> dict[str, Any]:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return {
        "__extn": {
            "fn": "datetime",
            "arg": value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z",
        }
    }


def _oracle_allows(req: dict[str, Any]) -> bool:
    """Cedar's own answer for the request, built without stepguard's code."""
    ctx_in = req.get("context", {})
    ctx: dict[str, Any] = dict(ctx_in.get("attributes", {}))
    ctx["now"] = _cedar_time(BUSINESS_HOURS.isoformat())
    for name in ("workflow_id", "step_id"):
        if ctx_in.get(name):
            ctx[name] = ctx_in[name]
    if ctx_in.get("attempt"):
        ctx["attempt"] = ctx_in["attempt"]
    if "requester" in ctx_in:
        ctx["requester"] = {"__entity": ctx_in["requester"]}
    if "sensitivity" in ctx_in:
        ctx["sensitivity"] = ctx_in["sensitivity"]
    if "time_bound" in ctx_in:
        ctx["time_bound"] = {k: _cedar_time(v) for k, v in ctx_in["time_bound"].items()}
    if "approval" in ctx_in:
        a = ctx_in["approval"]
        ctx["approval"] = {
            "approver": {"__entity": a["approver"]},
            "approved_at": _cedar_time(a["approved_at"]),
        }
        if a.get("ticket"):
            ctx["approval"]["ticket"] = a["ticket"]
    extra = [
        {
            "uid": {"type": e["type"], "id": e["id"]},
            "attrs": e.get("attributes", {}),
            "parents": e.get("parents", []),
        }
        for e in (req["principal"], req["resource"])
        if (e.get("attributes") or e.get("parents")) and (e["type"], e["id"]) not in _STORE
    ]
    try:
        entities = cedarpy.Entities.from_json_str(json.dumps(ENTITIES + extra), _SCHEMA)
    except ValueError:
        return False  # Cedar cannot build the entities: a deny
    answer = cedarpy.is_authorized(
        {
            "principal": {"type": req["principal"]["type"], "id": req["principal"]["id"]},
            "action": req["action"],
            "resource": {"type": req["resource"]["type"], "id": req["resource"]["id"]},
            "context": ctx,
        },
        _POLICIES,
        entities,
        _SCHEMA,
    )
    return bool(answer.allowed)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(req=requests)
def test_structured_requests_never_crash_and_never_allow_wrongly(
    channel: grpc.Channel, req: dict[str, Any]
) -> None:
    try:
        msg = request_from_json(req)
    except InvalidRequest:
        return  # not representable as a message; the JSON layer refused it
    response = _assert_answer(_call(channel, msg.SerializeToString()))
    if response is not None:
        allowed = response.decision == pb.DECISION_ALLOW
        event("ALLOW" if allowed else "DENY")
        # Stronger than "never allows wrongly": the decision equals Cedar's own.
        assert allowed == _oracle_allows(req), f"stepguard and Cedar disagree on {req}"
        if allowed:
            assert response.determining_policies
    else:
        event("INVALID_ARGUMENT")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.one_of(st.binary(max_size=300), requests.map(lambda r: _mangle(r))))
def test_garbage_bytes_are_invalid_argument_or_decision(
    channel: grpc.Channel, payload: bytes
) -> None:
    _assert_answer(_call(channel, payload))


def _mangle(req: dict[str, Any]) -> bytes:
    try:
        data = request_from_json(req).SerializeToString()
    except InvalidRequest:
        return b"\xff"
    return data[: len(data) // 2] + b"\x00\x01" + data[len(data) // 2 :]


def _messages(reqs: list[dict[str, Any]]) -> list[tuple[pb.AuthorizeRequest, dict[str, Any]]]:
    """The requests representable as messages (the JSON layer refuses the others)."""
    out = []
    for req in reqs:
        try:
            out.append((request_from_json(req), req))
        except InvalidRequest:
            continue
    return out


def _judged_item(result: Any, req: dict[str, Any], prefix: str) -> None:
    """One batch or stream item: a decision equal to Cedar's own, or an error naming
    the item's field (under `prefix`)."""
    if result.HasField("error"):
        assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], result
        assert_named(result.error.message, prefix)
        event("item INVALID_ARGUMENT")
        return
    response = result.response
    assert response.decision in (pb.DECISION_ALLOW, pb.DECISION_DENY)
    allowed = response.decision == pb.DECISION_ALLOW
    event("item ALLOW" if allowed else "item DENY")
    assert allowed == _oracle_allows(req), f"stepguard and Cedar disagree on {req}"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(reqs=st.lists(requests, min_size=1, max_size=6))
def test_a_batch_is_decided_item_by_item_as_cedar_decides(
    channel: grpc.Channel, reqs: list[dict[str, Any]]
) -> None:
    """AuthorizeBatch: one result per item, in order; an invalid item fails alone."""
    items = _messages(reqs)
    if not items:
        return
    stub = channel.unary_unary(
        "/stepguard.v1.Authorizer/AuthorizeBatch",
        request_serializer=pb.AuthorizeBatchRequest.SerializeToString,
        response_deserializer=pb.AuthorizeBatchResponse.FromString,
    )
    answer = stub(pb.AuthorizeBatchRequest(items=[m for m, _ in items]), timeout=10)
    assert len(answer.results) == len(items)
    for i, ((_, req), result) in enumerate(zip(items, answer.results, strict=True)):
        _judged_item(result, req, f"items[{i}]")


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(reqs=st.lists(requests, min_size=1, max_size=6), first=st.integers(0, 2**64 - 8))
def test_a_stream_answers_each_request_by_its_id_as_cedar_decides(
    channel: grpc.Channel, reqs: list[dict[str, Any]], first: int
) -> None:
    """AuthorizeStream: one answer per request, in order, echoing its id."""
    items = _messages(reqs)
    if not items:
        return
    stream = channel.stream_stream(
        "/stepguard.v1.Authorizer/AuthorizeStream",
        request_serializer=pb.AuthorizeStreamRequest.SerializeToString,
        response_deserializer=pb.AuthorizeStreamResponse.FromString,
    )
    sent = [pb.AuthorizeStreamRequest(id=first + i, request=m) for i, (m, _) in enumerate(items)]
    answers = list(stream(iter(sent), timeout=10))
    assert [a.id for a in answers] == [s.id for s in sent]
    for (_, req), answer in zip(items, answers, strict=True):
        _judged_item(answer, req, "")


def test_server_still_serves_after_fuzzing(channel: grpc.Channel, server: Running) -> None:
    msg = request_from_json(
        {
            "principal": {"type": "Workload", "id": "spiffe://example.org/ns/comms/sa/notifier"},
            "action": {"type": "Action", "id": "notify"},
            "resource": {"type": "TargetSystem", "id": "slack"},
        }
    )
    result = _call(channel, msg.SerializeToString())
    assert isinstance(result, pb.AuthorizeResponse) and result.decision == pb.DECISION_ALLOW
    assert Path(server.audit).stat().st_size > 0
