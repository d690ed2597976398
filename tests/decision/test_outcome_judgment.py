"""The outcome path's cheaper steps held to what they replaced (Hypothesis).

`judge` (the `ran` test read once, the batch's received time given in
milliseconds) and `_facts` (a time bound's missing end not parsed) against
their previous code, kept here as references, on any facts and outcomes; and
`DecisionIndex.facts_for` (only the facts judging an outcome reads) against
`get` (all of them).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.outcome import RAN, Credential, DecisionFacts, Effect, Outcome, judge
from sidecar.core.validate import to_ms
from sidecar.decision.outcomes import DecisionIndex, _bound_ms, _facts, _identity_in

AT = datetime(2026, 11, 25, 10, tzinfo=UTC)
ID = "01a24a69-8228-7000-8f19-46017a570b02"
UNKNOWN = "01a24a69-8228-7000-8f19-46017a570b99"


def judge_as_it_was(
    outcome: Outcome,
    facts: DecisionFacts | None,
    received_at: datetime,
    *,
    caller_mismatch: bool = False,
) -> str:
    """sidecar/core/outcome.py `judge` before (commit 6585c47)."""
    ran = outcome.status in RAN
    if facts is None:
        return "decision_unknown" if ran else ""
    if ran and facts.decision != "ALLOW":
        return "decision_denied"
    if caller_mismatch:
        return "caller_mismatch"
    if not ran:
        return ""
    ran_at = outcome.finished_at or outcome.started_at or received_at
    if facts.not_after_ms is not None and to_ms(ran_at) > facts.not_after_ms:
        return "after_time_bound"
    start = outcome.started_at
    if facts.not_before_ms is not None and start is not None and to_ms(start) < facts.not_before_ms:
        return "before_time_bound"
    cred = outcome.effect.credential if outcome.effect is not None else None
    ttl = facts.max_credential_ttl_s
    if (
        ttl is not None
        and cred is not None
        and cred.issued_at is not None
        and cred.expires_at is not None
        and (cred.expires_at - cred.issued_at).total_seconds() > ttl
    ):
        return "credential_ttl_exceeded"
    return ""


_WHEN = st.sampled_from([AT - timedelta(hours=1), AT, AT + timedelta(seconds=90)])
_MS = st.none() | st.sampled_from([to_ms(AT) - 1, to_ms(AT), to_ms(AT) + 60_000])
_outcomes = st.builds(
    Outcome,
    st.just(ID),
    st.sampled_from(["succeeded", "failed", "skipped", "timed_out"]),
    effect=st.none()
    | st.builds(
        Effect,
        credential=st.none()
        | st.builds(Credential, st.just("c"), st.sampled_from(["issued", "revoked"]), _WHEN, _WHEN),
    ),
    started_at=st.none() | _WHEN,
    finished_at=st.none() | _WHEN,
)
_facts_drawn = st.none() | st.builds(
    DecisionFacts,
    st.sampled_from(["ALLOW", "DENY"]),
    not_before_ms=_MS,
    not_after_ms=_MS,
    max_credential_ttl_s=st.none() | st.sampled_from([0.0, 60.0, 3600.0]),
)


@settings(max_examples=400, deadline=None)
@given(
    outcome=_outcomes,
    facts=_facts_drawn,
    received=_WHEN,
    mismatch=st.booleans(),
    given_ms=st.booleans(),
)
def test_judge_answers_as_before(
    outcome: Outcome,
    facts: DecisionFacts | None,
    received: datetime,
    mismatch: bool,
    given_ms: bool,
) -> None:
    """The same violation, with or without the received time's milliseconds given."""
    ms = to_ms(received) if given_ms else None
    got = judge(outcome, facts, received, caller_mismatch=mismatch, received_ms=ms)
    assert got == judge_as_it_was(outcome, facts, received, caller_mismatch=mismatch)


def facts_as_they_were(held: tuple[Any, ...]) -> DecisionFacts:
    """sidecar/decision/outcomes.py `_facts` before (commit 6585c47)."""
    (decision, bound, obligations, principal, action, resource, revision, workflow, run, step) = (
        held[:10]
    )
    nb = na = None
    if type(bound) is dict or isinstance(bound, Mapping):
        nb = _bound_ms(bound.get("not_before"))
        na = _bound_ms(bound.get("not_after"))
    ttl = (
        obligations.get("max_credential_ttl_s")
        if type(obligations) is dict or isinstance(obligations, Mapping)
        else None
    )
    return DecisionFacts(
        decision if decision in ("ALLOW", "DENY") else "DENY",
        nb,
        na,
        float(ttl) if isinstance(ttl, int | float) else None,
        principal,
        action,
        resource,
        revision if isinstance(revision, str) else "",
        workflow if isinstance(workflow, str) else "",
        run if isinstance(run, str) else "",
        step if isinstance(step, str) else "",
        _identity_in(held[10]),
    )


_TIMES: st.SearchStrategy[Any] = st.sampled_from(
    [
        "2026-11-25T10:00:00Z",
        "2026-11-25",
        "not a time",
        {"__extn": {"fn": "datetime", "arg": "2026-11-25T11:00:00.000Z"}},
        {"__extn": {"fn": "datetime", "args": ["2026-11-25T11:00:00.000Z"]}},
        {"__extn": {"fn": "decimal", "arg": "1.0"}},
        {"fn": "datetime", "arg": "2026-11-25T12:00:00Z"},
        7,
        None,
        [],
    ]
)
_BOUNDS = st.one_of(
    st.none(),
    st.just("2026-11-25"),
    st.fixed_dictionaries({}, optional={"not_before": _TIMES, "not_after": _TIMES}),
)


@settings(max_examples=300, deadline=None)
@given(
    bound=_BOUNDS,
    decision=st.sampled_from(["ALLOW", "DENY", None, 3]),
    ttl=st.none() | st.sampled_from([{"max_credential_ttl_s": 60}, {"max_credential_ttl_s": "x"}]),
    caller=st.none() | st.sampled_from([{"identity": "spiffe://w"}, {"peer": "p"}]),
)
def test_facts_are_read_as_before(bound: Any, decision: Any, ttl: Any, caller: Any) -> None:
    held = (decision, bound, ttl, {"type": "W", "id": "w"}, None, None, "rev", "wf", 1, "s", caller)
    assert _facts(held) == facts_as_they_were(held)


_OBLIGATIONS = st.none() | st.sampled_from(
    [{"max_credential_ttl_s": 60}, {"max_credential_ttl_s": 3600.0}, {}]
)
_BOUND_ENDS = st.sampled_from(
    [
        {},
        {"not_before": {"__extn": {"fn": "datetime", "arg": "2026-11-25T09:30:00.000Z"}}},
        {"not_after": "2026-11-25T10:00:30Z"},
        {"not_before": "2026-11-25T10:00:00Z", "not_after": "2026-11-25T11:00:00Z"},
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    outcome=_outcomes,
    decision=st.sampled_from(["ALLOW", "DENY"]),
    bound=_BOUND_ENDS,
    obligations=_OBLIGATIONS,
    received=_WHEN,
    mismatch=st.booleans(),
)
def test_the_facts_read_for_an_outcome_judge_it_as_all_of_them(
    outcome: Outcome,
    decision: str,
    bound: dict[str, Any],
    obligations: Any,
    received: datetime,
    mismatch: bool,
) -> None:
    """`DecisionIndex.facts_for` leaves out only what judging that outcome never reads
    (the bound's start without a start time, the TTL without a credential): the same
    violation as with `get`'s facts, and every other fact the same."""
    index = DecisionIndex()
    index.note(
        {
            "kind": "decision",
            "id": ID,
            "decision": decision,
            "context": {"time_bound": bound},
            "obligations": obligations,
            "principal": {"type": "Workload", "id": "w"},
            "policy_revision": "rev",
            "run_id": "r",
            "caller": {"peer": "p", "identity": "spiffe://w"},
        }
    )
    full, read = index.get(ID), index.facts_for(outcome)
    assert full is not None and read is not None
    assert judge(outcome, read, received, caller_mismatch=mismatch) == judge(
        outcome, full, received, caller_mismatch=mismatch
    )
    kept = {f: getattr(full, f) for f in full.__slots__}
    if outcome.started_at is None:
        kept["not_before_ms"] = None
    if outcome.effect is None or outcome.effect.credential is None:
        kept["max_credential_ttl_s"] = None
    assert {f: getattr(read, f) for f in read.__slots__} == kept
    assert index.facts_for(Outcome(UNKNOWN, "succeeded")) is None


@given(
    noted=st.lists(st.sampled_from([ID, UNKNOWN, "a", ""]), max_size=3),
    asked=st.lists(st.sampled_from([ID, UNKNOWN, "a", ""]), max_size=4),
)
def test_holds_all_is_in_for_each(noted: list[str], asked: list[str]) -> None:
    """`DecisionIndex.holds_all` (the asyncio handler's in-memory check, one C pass)
    answers as `in` asked of each id."""
    index = DecisionIndex()
    for decision_id in noted:
        index.note({"kind": "decision", "id": decision_id})
    assert index.holds_all(iter(asked)) == all(d in index for d in asked)
