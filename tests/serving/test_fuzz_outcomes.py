"""Hypothesis: arbitrary outcome reports, garbage included, against the real server.

RecordOutcome and RecordOutcomes take what orchestrators report (issue 18), so
they get what Authorize gets in test_fuzz_servicer.py. Properties, on one real
sidecar and its real file trail:

- every call is answered with a recorded outcome or INVALID_ARGUMENT naming the
  field (in a batch, item by item: `items[i]....`), never another status, and
  the server keeps serving;
- an outcome of a step that ran is unflagged only when its decision is one this
  sidecar ALLOWed; one of a DENY is flagged DENIED, one of an id no sidecar
  issued is flagged UNKNOWN; a skipped step is never a violation;
- every outcome answered as recorded is in the trail exactly once, and the
  trail verifies.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.client import StepguardClient
from tests.fuzzing import assert_named, mangle, unary
from tests.fuzzing import json_values as json_values_of
from tests.helpers import Running, assert_trail_verifies, grant_request, running_sidecar
from tests.serving.authzen.authzen_client import Pdp

RAN = (pb.OUTCOME_STATUS_SUCCEEDED, pb.OUTCOME_STATUS_FAILED, pb.OUTCOME_STATUS_TIMED_OUT)
UNKNOWN = str(uuid.UUID(int=0x01A24A69_8228_7000_8F19_46017A570B02))  # no sidecar made it


class Made:
    """The decisions this module's sidecar made, and the outcomes it said it recorded."""

    allowed: list[str] = []
    denied: list[str] = []
    recorded: set[str] = set()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_sidecar(
        tmp_path_factory.mktemp("fuzz-outcomes"), authzen_listen="127.0.0.1:0"
    ) as running:
        with StepguardClient(running.tcp) as client:
            Made.allowed = [client.authorize(grant_request()).decision_id for _ in range(3)]
            Made.denied = [
                client.authorize(grant_request(approver=None)).decision_id for _ in range(2)
            ]
        assert all(Made.allowed) and all(Made.denied)
        yield running


@pytest.fixture(scope="module")
def channel(server: Running) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.tcp) as ch:
        yield ch


def _stamp(seconds: int, nanos: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


texts = st.one_of(
    st.just(""),
    st.sampled_from(["jira", "github", "http.503", "PermissionError", "User", "maria"]),
    st.text(max_size=20),
    st.text(alphabet="\x00\x07\n\u202e\ud7ff\U0001f600 x", max_size=6),
    st.integers(250, 300).map(lambda n: "e" * n),
)
stamps = st.builds(
    _stamp,
    st.one_of(
        st.integers(1_735_000_000, 1_830_000_000),  # 2024 to 2028
        st.integers(-(2**40), 2**40),  # far outside what a Timestamp may hold
        st.sampled_from([-62_135_596_801, -62_135_596_800, 253_402_300_799, 253_402_300_800]),
    ),
    st.one_of(st.just(0), st.integers(-1, 1_000_000_000)),
)
effects = st.builds(
    pb.Effect,
    identity=st.one_of(
        st.none(), st.builds(pb.EntityRef, type=st.sampled_from(["User", "", "Bad Type"]), id=texts)
    ),
    target_system=texts,
    entitlements_added=st.lists(texts, max_size=3) | st.just(["e"] * 65),
    entitlements_removed=st.lists(texts, max_size=3),
    credential=st.one_of(
        st.none(),
        st.builds(
            pb.Credential,
            id=texts,
            change=st.integers(0, 4),
            issued_at=st.one_of(st.none(), stamps),
            expires_at=st.one_of(st.none(), stamps),
        ),
    ),
    account=st.integers(0, 5),
)


def _report(**fields: Any) -> pb.RecordOutcomeRequest:
    return pb.RecordOutcomeRequest(**{k: v for k, v in fields.items() if v is not None})


def _fitting(report: pb.RecordOutcomeRequest) -> pb.RecordOutcomeRequest:
    """An error class where the status needs one (FAILED), none where it is refused."""
    report.error_class = "http.503" if report.status == pb.OUTCOME_STATUS_FAILED else ""
    return report


# Reports shaped like real ones, so that a good share is recorded and the flags are
# judged, not only the refusals.
NOON = 1_795_000_000  # 2026-11-18, a Timestamp well inside every bound
plausible = st.builds(
    _report,
    decision_id=st.sampled_from(["allowed", "allowed", "denied", "unknown"]),
    status=st.sampled_from([*RAN, pb.OUTCOME_STATUS_SKIPPED]),
    error_class=st.just("set by _fitting"),
    effect=st.one_of(
        st.none(),
        st.builds(
            pb.Effect,
            identity=st.just(pb.EntityRef(type="User", id="maria")),
            target_system=st.sampled_from(["jira", "github"]),
            entitlements_added=st.lists(st.sampled_from(["read", "write"]), max_size=2),
            entitlements_removed=st.lists(st.sampled_from(["admin"]), max_size=1),
            credential=st.one_of(
                st.none(),
                st.builds(
                    pb.Credential,
                    id=st.sampled_from(["kid-1", "kid-2"]),
                    change=st.sampled_from([1, 2]),
                    issued_at=st.just(_stamp(NOON, 0)),
                    expires_at=st.integers(0, 7200).map(lambda s: _stamp(NOON + s, 0)),
                ),
            ),
            account=st.integers(0, 3),
        ),
    ),
    started_at=st.one_of(st.none(), st.just(_stamp(NOON - 60, 0))),
    finished_at=st.one_of(st.none(), st.just(_stamp(NOON, 0))),
    attempt=st.integers(0, 5),
    report_id=st.one_of(st.just(""), st.uuids().map(lambda u: u.hex)),
).map(lambda r: _fitting(r))
arbitrary = st.builds(
    _report,
    decision_id=st.one_of(
        st.sampled_from(["allowed", "denied", "unknown"]),
        st.text(max_size=40),
    ),
    status=st.integers(0, 6),
    error_class=texts,
    effect=st.one_of(st.none(), effects),
    started_at=st.one_of(st.none(), stamps),
    finished_at=st.one_of(st.none(), stamps),
    attempt=st.integers(-(2**63), 2**63 - 1),
    report_id=st.one_of(
        st.just(""), st.uuids().map(lambda u: u.hex), st.sampled_from(["r-1", "r-2"]), texts
    ),
)
reports = st.one_of(plausible, arbitrary)


def _resolved(message: pb.RecordOutcomeRequest, pick: int) -> pb.RecordOutcomeRequest:
    """Put one of the sidecar's real decision ids where the strategy named its kind."""
    named = {"allowed": Made.allowed, "denied": Made.denied, "unknown": [UNKNOWN]}
    ids = named.get(message.decision_id)
    if ids is not None:
        message.decision_id = ids[pick % len(ids)]
    return message


def _judge(sent: pb.RecordOutcomeRequest, got: pb.RecordOutcomeResponse) -> None:
    """The recorded answer's flag against what this module knows of the decision."""
    assert got.outcome_id and got.decision_id == sent.decision_id
    Made.recorded.add(got.outcome_id)
    event(pb.Violation.Name(got.violation))
    if sent.status == pb.OUTCOME_STATUS_SKIPPED:
        assert got.violation in (pb.VIOLATION_NONE, pb.VIOLATION_CALLER_MISMATCH), got
        return
    assert sent.status in RAN
    if got.violation == pb.VIOLATION_NONE:
        assert sent.decision_id in Made.allowed, got  # never unflagged without an ALLOW
    if sent.decision_id in Made.denied:
        assert got.violation == pb.VIOLATION_DECISION_DENIED, got
    if sent.decision_id not in Made.allowed + Made.denied:
        assert got.violation == pb.VIOLATION_DECISION_UNKNOWN, got


FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(report=reports, pick=st.integers(0, 10))
def test_one_report_is_recorded_and_judged_or_refused_naming_the_field(
    channel: grpc.Channel, report: pb.RecordOutcomeRequest, pick: int
) -> None:
    sent = _resolved(report, pick)
    got = unary(channel, "RecordOutcome", sent.SerializeToString(), pb.RecordOutcomeResponse)
    if isinstance(got, grpc.RpcError):
        assert got.code() == grpc.StatusCode.INVALID_ARGUMENT, (got.code(), got.details())
        assert_named(str(got.details()))
        event("INVALID_ARGUMENT")
        return
    _judge(sent, got)


@FUZZ
@given(items=st.lists(st.tuples(reports, st.integers(0, 10)), max_size=5))
def test_a_batch_answers_item_by_item(
    channel: grpc.Channel, items: list[tuple[pb.RecordOutcomeRequest, int]]
) -> None:
    sent = [_resolved(report, pick) for report, pick in items]
    request = pb.RecordOutcomesRequest(items=sent)
    got = unary(channel, "RecordOutcomes", request.SerializeToString(), pb.RecordOutcomesResponse)
    if isinstance(got, grpc.RpcError):  # the batch as a whole (none, or too many)
        assert got.code() == grpc.StatusCode.INVALID_ARGUMENT, (got.code(), got.details())
        assert_named(str(got.details()))
        assert not sent
        return
    assert len(got.results) == len(sent)
    for i, (item, result) in enumerate(zip(sent, got.results, strict=True)):
        if result.HasField("error"):
            assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], result
            assert_named(result.error.message, f"items[{i}]")
        else:
            _judge(item, result.response)


@FUZZ
@given(
    method=st.sampled_from(["RecordOutcome", "RecordOutcomes"]),
    payload=st.one_of(
        st.binary(max_size=300),
        reports.map(lambda r: mangle(r.SerializeToString())),
    ),
)
def test_garbage_bytes_are_refused_or_recorded(
    channel: grpc.Channel, method: str, payload: bytes
) -> None:
    answer = pb.RecordOutcomeResponse if method == "RecordOutcome" else pb.RecordOutcomesResponse
    got = unary(channel, method, payload, answer)
    if isinstance(got, grpc.RpcError):
        assert got.code() == grpc.StatusCode.INVALID_ARGUMENT, (got.code(), got.details())
        assert_named(str(got.details()))
    elif method == "RecordOutcome":
        Made.recorded.add(got.outcome_id)
    else:
        Made.recorded.update(r.response.outcome_id for r in got.results if r.HasField("response"))


@pytest.fixture(scope="module")
def pdp(server: Running) -> Iterator[Pdp]:
    assert server.authzen
    client = Pdp(server.authzen)
    yield client
    client.close()


STATUS_WORDS = {
    pb.OUTCOME_STATUS_SUCCEEDED: "succeeded",
    pb.OUTCOME_STATUS_FAILED: "failed",
    pb.OUTCOME_STATUS_SKIPPED: "skipped",
    pb.OUTCOME_STATUS_TIMED_OUT: "timed_out",
}
json_values = json_values_of(texts)
json_bodies = st.one_of(
    json_values,
    # The outcome's own fields, each with any JSON value, and a stray one now and then.
    st.fixed_dictionaries(
        {},
        optional={
            name: json_values
            for name in (
                "decision_id",
                "status",
                "error_class",
                "effect",
                "started_at",
                "finished_at",
                "attempt",
                "report_id",
                "finshed_at",
            )
        },
    ),
    st.fixed_dictionaries(
        {
            "decision_id": st.sampled_from(["allowed", "denied", "unknown"]),
            "status": st.sampled_from([*STATUS_WORDS.values(), "ok", ""]),
        },
        optional={
            "effect": st.fixed_dictionaries(
                {},
                optional={
                    "identity": st.fixed_dictionaries({"type": texts, "id": texts}),
                    "target_system": texts,
                    "entitlements_added": st.lists(texts, max_size=3),
                    "account": st.sampled_from(["created", "disabled", "deleted", "gone", 1]),
                    "credential": st.fixed_dictionaries(
                        {"id": texts, "change": st.sampled_from(["issued", "revoked", "x"])},
                        optional={"issued_at": texts, "expires_at": texts},
                    ),
                },
            ),
            "finished_at": st.sampled_from(
                ["2026-11-18T10:00:00Z", "2026-11-18T10:00:00+01:00", "yesterday", "9999-99-99"]
            ),
            "attempt": st.integers(-(2**64), 2**64),
        },
    ),
)


@FUZZ
@given(body=json_bodies, pick=st.integers(0, 10))
def test_the_authzen_outcome_path_answers_200_or_400_naming_the_field(
    pdp: Pdp, body: Any, pick: int
) -> None:
    """POST /stepguard/v1/outcome, the same rules over HTTP: JSON of any shape."""
    if isinstance(body, dict) and body.get("decision_id") in ("allowed", "denied", "unknown"):
        body = {
            **body,
            "decision_id": _resolved(
                pb.RecordOutcomeRequest(decision_id=body["decision_id"]), pick
            ).decision_id,
        }
    reply = pdp.post("/stepguard/v1/outcome", raw=json.dumps(body).encode())
    assert reply.status in (200, 400), (reply.status, reply.text)
    if reply.status == 400:
        event("400")
        if isinstance(body, dict):
            assert_named(reply.text.strip())
        return
    answer = reply.json()
    words = {v: k for k, v in STATUS_WORDS.items()}
    sent = pb.RecordOutcomeRequest(decision_id=body["decision_id"], status=words[body["status"]])
    violation = pb.Violation.Value(f"VIOLATION_{(answer['violation'] or 'none').upper()}")
    _judge(
        sent,
        pb.RecordOutcomeResponse(
            outcome_id=answer["outcome_id"],
            decision_id=answer["decision_id"],
            violation=violation,
        ),
    )


def test_the_trail_holds_each_recorded_outcome_once_and_verifies(
    channel: grpc.Channel, server: Running
) -> None:
    """After the fuzzing: still serving, and what it said it recorded is what it wrote."""
    ok = pb.RecordOutcomeRequest(
        decision_id=Made.allowed[0], status=pb.OUTCOME_STATUS_SUCCEEDED, attempt=1
    )
    got = unary(channel, "RecordOutcome", ok.SerializeToString(), pb.RecordOutcomeResponse)
    assert isinstance(got, pb.RecordOutcomeResponse) and got.violation == pb.VIOLATION_NONE
    Made.recorded.add(got.outcome_id)
    server.sidecar.stop(grace=1.0)  # the trail is closed and complete
    outcomes = [e["id"] for e in server.audit_events() if e.get("kind") == "outcome"]
    assert len(outcomes) == len(set(outcomes))
    assert set(outcomes) == Made.recorded
    assert json.loads(assert_trail_verifies(server.audit, "--json"))
