"""Hypothesis: `stepguard evidence` on trails whose records hold anything at all.

An auditor points `evidence` at whatever directory they were handed. A chain can
verify and still hold records no sidecar writes (a key holder wrote them, an
older or newer version did), and past a break the rest of a chain is read as it
comes. Property: for decision and outcome records whose fields hold any JSON
value, chained by the real sink (so they verify) or past a damaged line, the
store loads and every answer and the HTML report are produced: no exception,
and the verification says whether the chain held.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from sidecar.audit.filesink import FileSink
from sidecar.core.errors import UnencodableEvent
from sidecar.evidence import answers, offboarding
from sidecar.evidence.options import Deadlines, Options
from sidecar.evidence.report import render_html
from sidecar.evidence.store import open_store

NOW = datetime(2026, 12, 1, tzinfo=UTC)
BOUND = "2026-11-26T00:00:00Z"
texts = st.one_of(
    st.sampled_from(["d-1", "d-2", "leaver", "ALLOW", "DENY", "succeeded", "failed", "[]", ""]),
    st.sampled_from(["2026-11-25T10:00:00Z", "2026-11-25T10:00:00.123456Z", "yesterday", "Z"]),
    st.text(max_size=10),
)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
refs = st.one_of(
    st.just({"type": "User", "id": "maria"}),
    values,
    st.fixed_dictionaries({"type": st.one_of(texts, values), "id": st.one_of(texts, values)}),
    st.fixed_dictionaries({"__entity": st.fixed_dictionaries({"type": texts, "id": values})}),
)
FIELDS = {
    "id": st.one_of(st.uuids().map(str), texts, values),
    "time": st.one_of(texts, values),
    "decision": st.one_of(texts, values),
    "decision_id": st.one_of(texts, values),
    "decided": st.one_of(texts, values),
    "status": st.one_of(texts, values),
    "workflow_id": st.one_of(texts, values),
    "run_id": st.one_of(st.sampled_from(["run-1", "run-2"]), values),
    "step_id": st.one_of(texts, values),
    "principal": refs,
    "action": refs,
    "resource": refs,
    "context": st.one_of(
        values,
        st.fixed_dictionaries(
            {},
            optional={
                "requester": refs,
                "approval": st.one_of(
                    values, st.fixed_dictionaries({}, optional={"approver": refs, "ticket": values})
                ),
                "time_bound": st.one_of(
                    values,
                    st.fixed_dictionaries(
                        {},
                        optional={"not_after": st.one_of(values, st.just("2026-11-26T00:00:00Z"))},
                    ),
                ),
                "sensitivity": values,
                "target_system": values,
            },
        ),
    ),
    "obligations": st.one_of(values, st.fixed_dictionaries({"revoke_within_s": values})),
    "effect": st.one_of(
        values,
        st.fixed_dictionaries(
            {},
            optional={
                "identity": refs,
                "target_system": values,
                "entitlements_added": st.one_of(values, st.lists(texts, max_size=2)),
                "entitlements_removed": st.one_of(values, st.lists(texts, max_size=2)),
                "credential": st.one_of(
                    values,
                    st.fixed_dictionaries(
                        {}, optional={"id": values, "change": texts, "expires_at": values}
                    ),
                ),
                "account": st.one_of(st.sampled_from(["created", "disabled", "deleted"]), values),
            },
        ),
    ),
    "attempt": values,
    "violation": st.one_of(texts, values),
    "finished_at": st.one_of(texts, values),
    "caller": st.one_of(values, st.fixed_dictionaries({"identity": values})),
    "report_id": st.one_of(texts, values),
}
records = st.builds(
    lambda kind, fields: {"schema": 1, "kind": kind, **fields},
    st.sampled_from(["decision", "outcome"]),
    st.fixed_dictionaries({}, optional=FIELDS),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(records, min_size=1, max_size=8),
    damage=st.one_of(st.none(), st.integers(0, 20)),
    tail=st.lists(st.one_of(records, values), max_size=3),
)
def test_any_record_loads_and_every_answer_is_made(
    bodies: list[dict[str, Any]], damage: int | None, tail: list[Any]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        sink = FileSink(path)
        try:
            for body in bodies:
                try:
                    sink.write(body)
                except UnencodableEvent:
                    assume(False)
        finally:
            sink.close()
        if damage is not None:  # a damaged line, then records past it, unchained
            with path.open("ab") as f:
                f.write(b'{"seq": "broken' + b"x" * damage + b"\n")
                for extra in tail:
                    try:
                        f.write(orjson.dumps(extra) + b"\n")
                    except TypeError:
                        continue
        store = open_store(
            [Path(tmp)],
            Options(now=NOW, deadlines=Deadlines.parse(["*=PT24H"])),
            accept_missing_anchor=True,
        )
        try:
            assert store.verification.ok == (damage is None), store.verification.summary()
            made = [
                answers.inventory(store),
                answers.access(store),
                answers.access(store, identity='User::"maria"'),
                answers.access(store, target="jira"),
                answers.open_grants(store),
                answers.exceptions(store),
                offboarding.leavers(store),
                offboarding.leavers(store, everything=True),
            ]
            for answer in made:
                assert isinstance(answer.rows, list)
            event(f"open grants: {min(len(made[4].rows), 2)}")
            html = render_html(store)
            assert html.startswith("<!DOCTYPE html>") or html.startswith("<!doctype html>")
        finally:
            store.close()
