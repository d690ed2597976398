"""core/outcome.py: the JSON and protobuf forms read into one model, refused alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.errors import InvalidRequest
from sidecar.core.outcome import outcome_from_json, outcome_from_proto, outcome_to_proto

ID = "01a24a69-8228-7000-8f19-46017a570b02"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"decision_id": ID, "status": "succeeded", "effect": {"identity": {"kind": "x"}}},
            "effect.identity.kind",
        ),
        ({"decision_id": ID, "status": "succeeded", "\x1b[31m": 1}, "'\\x1b[31m'"),
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
)
def test_json_and_protobuf_forms_read_the_same(
    status: str, effect: dict[str, Any], started: datetime | None, attempt: int
) -> None:
    """Whatever the JSON form accepts, its protobuf form reads into the same model."""
    body: dict[str, Any] = {"decision_id": ID, "status": status, "attempt": attempt}
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
