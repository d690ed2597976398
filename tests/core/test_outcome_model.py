"""core/outcome.py: the JSON and protobuf forms read into one model, refused alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core import outcome as outcome_core
from sidecar.core.errors import InvalidRequest
from sidecar.core.outcome import outcome_from_proto, outcome_to_proto, outcomes_from_proto
from sidecar.core.outcomejson import outcome_from_json

ID = "01a24a69-8228-7000-8f19-46017a570b02"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"decision_id": ID, "status": "succeeded", "effect": {"identity": {"kind": "x"}}},
            "effect.identity.kind",
        ),
        ({"decision_id": ID, "status": "succeeded", "\x1b[31m": 1}, "['\\x1b[31m']"),
        (
            {"decision_id": ID, "status": "succeeded", "started_at": "0001-01-01T00:00:00+01:00"},
            "started_at",
        ),
        (
            {"decision_id": ID, "status": "succeeded", "finished_at": "2026-11-25T10:00:00"},
            "finished_at",
        ),
        ({"decision_id": ID, "status": "succeeded", "attempt": 1.5}, "attempt"),
        ({"decision_id": ID, "status": "succeeded", "attempt": 2**63}, "attempt"),
        (
            {"decision_id": ID, "status": "succeeded", "effect": {"target_system": "a\nb"}},
            "effect.target_system",
        ),
        ({"decision_id": ID.upper(), "status": "succeeded"}, "decision_id"),
        ({"decision_id": ID, "status": "succeeded", "report_id": "a b"}, "report_id"),
        ({"decision_id": ID, "status": "succeeded", "report_id": "r" * 65}, "report_id"),
        ({"decision_id": ID, "status": "succeeded", "report_id": 7}, "report_id"),
    ],
)
def test_json_refusals_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        outcome_from_json(body)
    assert err.value.field == field


times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda at: at.replace(microsecond=at.microsecond // 1000 * 1000))
texts = st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]), min_size=1, max_size=20)


@given(
    status=st.sampled_from(["succeeded", "failed", "skipped", "timed_out"]),
    effect=st.fixed_dictionaries(
        {},
        optional={
            "identity": st.fixed_dictionaries({"type": st.just("User"), "id": texts}),
            "target_system": texts,
            "entitlements_added": st.lists(texts, max_size=3),
            "entitlements_removed": st.lists(texts, max_size=3),
            "account": st.sampled_from(["created", "disabled", "deleted"]),
            "credential": st.fixed_dictionaries(
                {"id": texts, "change": st.just("revoked")}, optional={"issued_at": times}
            ),
        },
    ),
    started=st.one_of(st.none(), times),
    attempt=st.integers(0, 10),
    report_id=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)),
)
def test_json_and_protobuf_forms_read_the_same(
    status: str,
    effect: dict[str, Any],
    started: datetime | None,
    attempt: int,
    report_id: str | None,
) -> None:
    """Whatever the JSON form accepts, its protobuf form reads into the same model."""
    body: dict[str, Any] = {"decision_id": ID, "status": status, "attempt": attempt}
    if report_id is not None:
        body["report_id"] = report_id
    if status == "failed":
        body["error_class"] = "E"
    if effect:
        body["effect"] = {
            k: (
                {**v, "issued_at": v["issued_at"].isoformat()}
                if k == "credential" and "issued_at" in v
                else v
            )
            for k, v in effect.items()
        }
    if started is not None:
        body["started_at"] = started.isoformat()
    model = outcome_from_json(body)
    assert outcome_from_proto(outcome_to_proto(model)) == model


# --- the message read straight (outcome_core._accepted) against the long way ----------


def _pick(draw: st.DrawFn, good: list[Any], bad: list[Any], wrong: bool) -> Any:
    """A good value, or (when `wrong`) now and then a bad one."""
    return draw(st.sampled_from(good * 4 + bad if wrong else good))


_GOOD_TEXT = ["jira", "maria", "ok ok", "jira-developers", "Ünïcode ✓"]
_BAD_TEXT = ["", "a" * 257, "x" * 1025, "a\nb", "\u200b"]
_GOOD_STAMP = [(1_700_000_000, 0), (1_700_000_000, 999_999_999), (1_800_000_005, 5), (0, 0)]
_BAD_STAMP = [(-62_135_596_801, 0), (253_402_300_800, 0), (1, 1_000_000_000), (1, -1)]


def _set_time(ts: Any, value: tuple[int, int] | None) -> None:
    if value is not None:
        ts.seconds, ts.nanos = value


@st.composite
def _messages(draw: st.DrawFn, wrong: bool = True) -> pb.RecordOutcomeRequest:
    """RecordOutcomeRequests of every shape: valid ones and (`wrong`) ones wrong in any
    field; good values are drawn more often than each bad one, so both ways are taken."""
    status = _pick(draw, [1, 2, 3, 4], [0, 5], wrong)
    fitting = ["E", "requests.HTTPError"] if status in (2, 4) else [""]
    msg = pb.RecordOutcomeRequest(
        decision_id=_pick(draw, [ID], [ID.upper(), "", "not-an-id", ID + "0"], wrong),
        status=status,
        error_class=_pick(draw, fitting, ["", "E", "bad class", "x" * 129], wrong),
        attempt=_pick(draw, [0, 1, 7, 2**63 - 1], [-1], wrong),
        report_id=_pick(
            draw,
            ["", "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "a.b:c_d-e", "r" * 64],
            ["r" * 65, "a b", "ü", "a/b", "\n"],
            wrong,
        ),
    )
    if draw(st.booleans()):
        _set_time(msg.started_at, _pick(draw, _GOOD_STAMP[:2], _BAD_STAMP, wrong))
    if draw(st.booleans()):
        _set_time(msg.finished_at, _pick(draw, _GOOD_STAMP[1:], _BAD_STAMP, wrong))
    if draw(st.booleans()):
        e = msg.effect
        e.SetInParent()
        if draw(st.booleans()):
            e.identity.type = _pick(draw, ["User", "Acme::User"], ["", "1bad", "a b"], wrong)
            e.identity.id = _pick(draw, _GOOD_TEXT, _BAD_TEXT, wrong)
        if draw(st.booleans()):
            e.target_system = _pick(draw, _GOOD_TEXT, _BAD_TEXT, wrong)
        for _ in range(draw(st.integers(0, 3))):
            e.entitlements_added.append(_pick(draw, _GOOD_TEXT, _BAD_TEXT, wrong))
        if draw(st.booleans()):
            e.entitlements_removed.extend(["r"] * _pick(draw, [1, 64], [65], wrong))
        e.account = _pick(draw, [0, 1, 2, 3], [4], wrong)
        if draw(st.booleans()):
            c = e.credential
            c.SetInParent()
            c.id = _pick(draw, _GOOD_TEXT, _BAD_TEXT, wrong)
            c.change = _pick(draw, [1, 2], [0, 3], wrong)
            issued = _pick(draw, _GOOD_STAMP[:2], _BAD_STAMP, wrong)
            if c.change != 1 and draw(st.booleans()):
                issued = None  # optional for a revocation
            _set_time(c.issued_at, issued)
            if issued is not None or draw(st.booleans()):
                _set_time(c.expires_at, _pick(draw, _GOOD_STAMP[2:3], _BAD_STAMP, wrong))
    return msg


def _read(read: Any, msg: pb.RecordOutcomeRequest) -> Any:
    try:
        return read(msg)
    except InvalidRequest as exc:
        return ("refused", exc.field, str(exc))


@settings(max_examples=1000, deadline=None)
@given(msg=st.one_of(_messages(), _messages(wrong=False)))
def test_a_message_read_straight_is_what_the_long_way_reads(msg: pb.RecordOutcomeRequest) -> None:
    """The straight reading accepts only what the long way (the message into plain
    values, then check_outcome) accepts, into the same model; whatever it leaves, the
    long way refuses with its message naming the field, in a batch as alone."""
    long_way = _read(lambda m: outcome_core._checked_from_proto(m, "items[0]."), msg)
    straight = outcome_core._accepted(msg)
    if straight is not None:
        assert straight == long_way
    assert _read(lambda m: outcome_from_proto(m, "items[0]."), msg) == long_way
    got = outcomes_from_proto([msg])[0]
    if isinstance(got, InvalidRequest):
        assert ("refused", got.field, str(got)) == long_way
    else:
        assert got == long_way


def test_the_usual_report_is_read_straight() -> None:
    """What the reporter sends (succeeded, with its effect) takes the straight way."""
    msg = outcome_to_proto(
        outcome_from_json(
            {
                "decision_id": ID,
                "status": "succeeded",
                "attempt": 1,
                "effect": {
                    "identity": {"type": "User", "id": "maria"},
                    "target_system": "jira",
                    "entitlements_added": ["jira-developers"],
                    "credential": {
                        "id": "c-1",
                        "change": "issued",
                        "issued_at": "2026-12-06T10:00:00Z",
                        "expires_at": "2026-12-06T11:00:00Z",
                    },
                },
            }
        )
    )
    straight = outcome_core._accepted(msg)
    assert straight is not None and straight == outcome_core._checked_from_proto(msg, "")


def test_a_report_id_is_read_both_ways_and_named_in_a_batch() -> None:
    """A report_id is part of the model (and so of equality) whichever way it is read; a
    malformed one is refused naming its field path, `items[1].report_id` in a batch."""
    ok = pb.OUTCOME_STATUS_SUCCEEDED
    good = pb.RecordOutcomeRequest(decision_id=ID, status=ok, report_id="r-1")
    straight = outcome_core._accepted(good)
    assert straight is not None and straight.report_id == "r-1"
    assert straight == outcome_core._checked_from_proto(good, "")
    assert straight != outcome_core._accepted(pb.RecordOutcomeRequest(decision_id=ID, status=ok))
    bad = pb.RecordOutcomeRequest(decision_id=ID, status=ok, report_id="r 1")
    got = outcomes_from_proto([good, bad])
    assert got[0] == straight
    assert isinstance(got[1], InvalidRequest) and got[1].field == "items[1].report_id"
