"""Hypothesis: arbitrary plans, garbage included, against the real server (AuthorizePlan).

A plan is the largest message the sidecar takes (issue 21): many steps, each a
request with run-time unknowns. Properties, on one real sidecar and its trail:

- every call is answered with a plan or INVALID_ARGUMENT starting with the field's
  path, never another status; the server keeps serving;
- an answered plan has one result per step, in order, each ALLOW, DENY or DEPENDS;
- a step planned with nothing unknown and `at` the sidecar's own time is ALLOW
  exactly when Cedar, asked directly by the oracle of test_fuzz_servicer.py, allows
  the request then; a step is never ALLOW when Cedar denies its concrete request
  (the unknowns left as the request gives them);
- every answered plan is in the trail once, and the trail verifies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.errors import InvalidRequest
from sidecar.core.jsonreq import request_from_json
from tests.fuzzing import assert_named, mangle, unary
from tests.helpers import BUSINESS_HOURS, Running, assert_trail_verifies, running_sidecar
from tests.serving.test_fuzz_servicer import _oracle_allows, plausible, requests

UNKNOWNS = ["now", "approval", "approval.ticket", "workflow", "sensitivity", "bogus", "", "a..b"]
NOW = Timestamp(seconds=int(BUSINESS_HOURS.timestamp()))
VERDICTS = (pb.PLAN_VERDICT_ALLOW, pb.PLAN_VERDICT_DENY, pb.PLAN_VERDICT_DEPENDS)
answered: list[str] = []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_sidecar(tmp_path_factory.mktemp("fuzz-plans")) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: Running) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.tcp) as ch:
        yield ch


def _step(req: dict[str, Any], unknown: list[str], at: Timestamp | None, name: str) -> Any:
    try:
        request = request_from_json(req)
    except InvalidRequest:
        request = pb.AuthorizeRequest()  # not representable: a step the sidecar must refuse
    step = pb.PlanStep(step_id=name, request=request, unknown=unknown)
    if at is not None:
        step.at.CopyFrom(at)
    return step, req


# Steps shaped like real ones (most of them: a good share is allowed, so the
# soundness checks have teeth), and anything at all.
real_steps = st.builds(
    _step,
    plausible,
    st.one_of(st.just([]), st.lists(st.sampled_from(UNKNOWNS[:4]), max_size=2, unique=True)),
    st.one_of(st.just(NOW), st.none()),
    st.sampled_from(["", "grant", "revoke"]),
)
any_steps = st.builds(
    _step,
    requests,
    st.one_of(st.just([]), st.lists(st.sampled_from(UNKNOWNS), max_size=3)),
    st.one_of(st.just(NOW), st.none(), st.builds(Timestamp, seconds=st.integers(-(2**40), 2**40))),
    st.one_of(st.just(""), st.text(max_size=12)),
)
steps = st.one_of(real_steps, real_steps, any_steps)


def _call(channel: grpc.Channel, payload: bytes) -> pb.AuthorizePlanResponse | grpc.RpcError:
    answer: pb.AuthorizePlanResponse | grpc.RpcError = unary(
        channel, "AuthorizePlan", payload, pb.AuthorizePlanResponse
    )
    return answer


def _refused(got: grpc.RpcError) -> None:
    assert got.code() == grpc.StatusCode.INVALID_ARGUMENT, (got.code(), got.details())
    assert_named(str(got.details()))
    event("INVALID_ARGUMENT")


FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(
    planned=st.lists(steps, max_size=4),
    run_id=st.one_of(st.just("run-1"), st.text(max_size=10)),
)
def test_a_plan_is_answered_step_by_step_or_refused_naming_the_field(
    channel: grpc.Channel, planned: list[tuple[Any, dict[str, Any]]], run_id: str
) -> None:
    message = pb.AuthorizePlanRequest(
        run_id=run_id, workflow_id="onboarding", steps=[s for s, _ in planned]
    )
    got = _call(channel, message.SerializeToString())
    if isinstance(got, grpc.RpcError):
        _refused(got)
        return
    answered.append(got.plan_id)
    assert got.plan_id and got.run_id == run_id
    assert len(got.steps) == len(planned)
    for (step, req), result in zip(planned, got.steps, strict=True):
        assert result.verdict in VERDICTS, result
        event(pb.PlanVerdict.Name(result.verdict))
        if result.verdict == pb.PLAN_VERDICT_ALLOW:
            assert _oracle_allows(req), f"planned ALLOW, Cedar denies the step: {req}"
        if not step.unknown and step.at == NOW:
            assert (result.verdict == pb.PLAN_VERDICT_ALLOW) == _oracle_allows(req), req


@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=400),
        st.lists(steps, min_size=1, max_size=2).map(
            lambda planned: mangle(
                pb.AuthorizePlanRequest(
                    run_id="r", steps=[s for s, _ in planned]
                ).SerializeToString()
            )
        ),
    )
)
def test_garbage_bytes_are_refused_or_planned(channel: grpc.Channel, payload: bytes) -> None:
    got = _call(channel, payload)
    if isinstance(got, grpc.RpcError):
        _refused(got)
    else:
        answered.append(got.plan_id)
        assert all(r.verdict in VERDICTS for r in got.steps)


def test_the_trail_holds_each_plan_once_and_verifies(server: Running) -> None:
    server.sidecar.stop(grace=1.0)
    plans = [e["id"] for e in server.audit_events() if e.get("kind") == "plan"]
    assert sorted(plans) == sorted(answered)
    assert_trail_verifies(server.audit)
