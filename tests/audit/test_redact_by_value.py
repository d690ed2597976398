"""`Redactor.by_value` (rule 2 at any depth, for an outcome's effect) as it was
written before its fast path for plain JSON types: the same answer, and the
same object back when nothing is replaced, for any JSON value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.audit.redact import Redactor

# Values rule 2 replaces, mixed among plain ones.
SECRETS = st.sampled_from(
    [
        "ghp_" + "a" * 36,
        "Bearer abcdefghijklmnopqrstuvwxyz",
        "AKIA" + "B" * 16,
        "https://bob:hunter2@db.example.org",
        "redactme-42",  # the configured extra pattern below
    ]
)
TEXT = st.one_of(st.text(max_size=12), SECRETS)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def reference(redactor: Redactor, value: Any) -> Any:
    """The implementation before the fast path (sidecar/audit/redact.py, commit e4a236d)."""
    if isinstance(value, str):
        if not redactor.secret_value(value):
            return value
        return redactor.mask(value) if redactor.mode == "hash" else None
    if isinstance(value, Mapping):
        out = {k: reference(redactor, v) for k, v in value.items()}
        if all(out[k] is v for k, v in value.items()):
            return value
        return {k: v for k, v in out.items() if v is not None or value[k] is None}
    if isinstance(value, list):
        items = [reference(redactor, v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return [
            "redacted" if a is None and b is not None else a
            for a, b in zip(items, value, strict=True)
        ]
    return value


REDACTORS = [
    Redactor(mode=mode, key=b"k" * 32, values=[r"redactme-\d+"]) for mode in ("hash", "remove")
]


@settings(max_examples=300, deadline=None)
@given(value=JSON, which=st.sampled_from([0, 1]))
def test_by_value_answers_as_before(value: Any, which: int) -> None:
    redactor = REDACTORS[which]
    got, want = redactor.by_value(value), reference(redactor, value)
    assert got == want
    assert (got is value) == (want is value)  # untouched: the very same object


_PLAIN_OR_ANCHORED = [
    Redactor(key=b"k" * 32),
    Redactor(key=b"k" * 32, values=[r"redactme-\d+"]),
    Redactor(key=b"k" * 32, values=[r"^jira$", r"^$"]),  # anchors: each string on its own
]


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.one_of(TEXT, st.sampled_from(["", "jira", "x"])), max_size=6),
    which=st.integers(0, len(_PLAIN_OR_ANCHORED) - 1),
)
def test_clean_texts_says_what_the_walk_finds(texts: list[str], which: int) -> None:
    """`clean_texts` (an effect's strings checked where they are) says yes exactly when
    the walk of a value holding those strings replaces none: `by_value` gives the same
    object back."""
    redactor = _PLAIN_OR_ANCHORED[which]
    value = {"a": list(texts), "b": {"c": texts[0]} if texts else {}}
    want = reference(redactor, value) is value
    assert redactor.clean_texts(texts) == want
    assert redactor.clean_texts(texts) == want  # asked again: what it remembered agrees
    # It remembers only strings rule 2 leaves alone (the redactors live across examples).
    assert not any(redactor.secret_value(v) for v in redactor._clean_texts)


def test_the_clean_strings_remembered_are_bounded() -> None:
    redactor = Redactor(key=b"k" * 32)
    for i in range(3 * 4096):
        assert redactor.clean_texts([f"entitlement-{i}"])
    assert 0 < len(redactor._clean_texts) <= 4096
    assert not redactor.clean_texts(["ghp_" + "a" * 36])
