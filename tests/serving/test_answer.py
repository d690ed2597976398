"""Serialized answers (serving/answer.py) parse to exactly the messages to_response builds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.ids import DecisionIds
from sidecar.core.model import Decision, EvalError, Obligations, PolicyErrors, PolicyRef, Result
from sidecar.decision.decider import Decided
from sidecar.serving import answer
from sidecar.serving.answer import Answers, to_response

text = st.text(max_size=40)
results = st.builds(
    Result,
    decision=st.sampled_from(list(Decision)),
    reasons=st.lists(
        st.builds(
            PolicyRef,
            id=text,
            annotations=st.dictionaries(text, text, max_size=3),
            source=text,
        ),
        max_size=3,
    ).map(tuple),
    errors=st.lists(st.builds(EvalError, policy_id=text, message=text), max_size=2).map(tuple),
    obligations=st.builds(
        Obligations,
        max_credential_ttl=st.none()
        | st.integers(min_value=0, max_value=10**9).map(lambda ms: timedelta(milliseconds=ms)),
    ),
    revision=text,
    policy_errors=st.sampled_from(list(PolicyErrors)),
)
ids = DecisionIds()


@settings(max_examples=200)
@given(results, st.integers(min_value=1, max_value=5), st.booleans())
def test_answers_equal_the_built_message(result: Result, calls: int, cached: bool) -> None:
    answers = Answers()
    for _ in range(calls):  # the first call fills the memo, the others splice into it
        decided = Decided(ids.next(), result, cached=cached)
        assert pb.AuthorizeResponse.FromString(answers.encode(decided)) == to_response(decided)


@settings(max_examples=100)
@given(results, st.integers(min_value=0, max_value=2**64 - 1))
def test_stream_answers_equal_the_built_message(result: Result, item_id: int) -> None:
    answers = Answers()
    for _ in range(2):
        decided = Decided(ids.next(), result, cached=True)
        expected = pb.AuthorizeStreamResponse(id=item_id, response=to_response(decided))
        assert pb.AuthorizeStreamResponse.FromString(answers.encode_stream(item_id, decided)) == (
            expected
        )


def test_the_memo_is_bounded_and_never_mixes_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer, "MEMO_SIZE", 3)
    answers = Answers()
    made = [Result(Decision.ALLOW, (), (), Obligations(), f"rev-{i}") for i in range(10)]
    for _ in range(2):
        for result in made:
            decided = Decided(ids.next(), result, cached=True)
            parsed = pb.AuthorizeResponse.FromString(answers.encode(decided))
            assert parsed.policy_revision == result.revision
            assert parsed.policy_errors == pb.POLICY_ERRORS_DENY  # the Result's default
            assert parsed.decision_id == decided.decision_id
    assert len(answers._memo) <= 3
