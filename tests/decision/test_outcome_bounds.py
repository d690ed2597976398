"""An outcome is judged against its decision's time bound as the decision event
recorded it: the lookup's cached reading of the bound (`_bound_ms`) gives what
`parse_cedar_datetime` gives, for every form, well-formed or not."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.validate import parse_cedar_datetime
from sidecar.decision.outcomes import _bound_ms

TEXTS = st.one_of(
    st.sampled_from(
        [
            "2026-11-25",
            "2026-11-25T10:00:00Z",
            "2026-11-25T10:00:00.123Z",
            "2026-11-25T10:00:00+0130",
            "2026-11-25T10:00:00-2359",
            "2026-02-30T10:00:00Z",  # no such day
            "2026-11-25T24:00:00Z",
            "2026-11-25T10:00:00+2400",
            "",
        ]
    ),
    st.from_regex(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{3})?(Z|[+-]\d{4}))?", fullmatch=True),
    st.text(max_size=30),
)
ARG = st.one_of(TEXTS, st.integers(), st.none(), st.lists(TEXTS, max_size=2))
CALL = st.fixed_dictionaries({"fn": st.sampled_from(["datetime", "offset", "decimal"])}).flatmap(
    lambda d: st.one_of(
        st.just({**d, "arg": "x"}).flatmap(lambda e: ARG.map(lambda a: {**e, "arg": a})),
        ARG.map(lambda a: {**d, "args": a}),
        ARG.map(lambda a: {**d, "arg": a, "args": a}),
    )
)
VALUES = st.one_of(
    TEXTS,
    CALL,
    CALL.map(lambda c: {"__extn": c}),
    CALL.map(lambda c: {"__extn": c, "more": 1}),
    st.none(),
    st.integers(),
)


@settings(max_examples=400, deadline=None)
@given(value=VALUES)
def test_the_cached_reading_of_a_bound_is_cedars(value: Any) -> None:
    assert _bound_ms(value) == parse_cedar_datetime(value)
    assert _bound_ms(value) == parse_cedar_datetime(value)  # again: from the cache
