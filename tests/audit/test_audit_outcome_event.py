"""The outcome event (kind "outcome"): its published schema and its redaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.audit.chain import canonical
from sidecar.audit.filesink import FileSink
from sidecar.audit.redact import Redactor
from sidecar.core.errors import ConfigError
from sidecar.core.event import (
    SCHEMA_VERSION,
    CallMeta,
    _call_fields,
    build_outcome_event,
    timestamp,
)
from sidecar.core.outcome import Credential, DecisionFacts, Effect, Outcome
from tests.audit.test_redact_by_value import reference as by_value_as_it_was

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "sidecar/audit/event.schema.json").read_text()
)
AT = datetime(2026, 11, 25, 10, tzinfo=UTC)
ID = "01a24a69-8228-7000-8f19-46017a570b02"
FULL = Outcome(
    ID,
    "failed",
    error_class="http.503",
    effect=Effect(
        identity=("User", "maria"),
        target_system="jira",
        entitlements_added=("a",),
        entitlements_removed=("b",),
        credential=Credential("AKIA" + "C" * 16, "issued", AT, AT + timedelta(minutes=5)),
        account="disabled",
    ),
    started_at=AT,
    finished_at=AT,
    attempt=2,
)
FACTS = DecisionFacts(
    "DENY",
    principal={"type": "Workload", "id": "w"},
    action={"type": "Action", "id": "grant_access"},
    resource={"type": "TargetSystem", "id": "jira"},
    policy_revision="rev",
    workflow_id="onboarding",
)


def test_outcome_records_written_by_the_trail_match_the_schema(tmp_path: Path) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    sink = FileSink(tmp_path / "audit.jsonl")
    meta = CallMeta(peer="unix:", trace_id="ab" * 16, request_id="r-1")
    sink.write(build_outcome_event("o1", AT, FULL, meta, facts=FACTS, violation="decision_denied"))
    sink.write(
        build_outcome_event("o2", AT, Outcome(ID, "skipped"), CallMeta(), facts=None, violation="")
    )
    sink.close()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    outcomes = [r for r in records if r["kind"] == "outcome"]
    assert len(outcomes) == 2
    for record in records:
        validator.validate(record)
    assert outcomes[0]["decided"] == "DENY" and outcomes[1]["decided"] == "UNKNOWN"
    # The schema refuses what the API never writes.
    bad = dict(outcomes[0], violation="made_up")
    assert list(validator.iter_errors(bad))


def test_effect_values_that_look_like_secrets_are_redacted_by_value_not_by_name() -> None:
    """`credential` is a secret-looking key name, but the effect's keys are the API's own:
    its times stay readable, its id goes only when it looks like a secret."""
    redactor = Redactor()
    event = build_outcome_event(
        "o1", AT, FULL, CallMeta(), facts=None, violation="", redactor=redactor
    )
    cred = event["effect"]["credential"]
    assert cred["id"].startswith("redacted:hmac-sha256:")
    assert cred["issued_at"] == "2026-11-25T10:00:00.000000Z"
    assert event["effect"]["identity"] == {"type": "User", "id": "maria"}
    removed = build_outcome_event(
        "o1", AT, FULL, CallMeta(), facts=None, violation="", redactor=Redactor(mode="remove")
    )
    assert "id" not in removed["effect"]["credential"]
    plain = Outcome(ID, "succeeded", effect=Effect(credential=Credential("key-7", "revoked")))
    kept = build_outcome_event(
        "o2", AT, plain, CallMeta(), facts=None, violation="", redactor=redactor
    )
    assert kept["effect"]["credential"] == {"id": "key-7", "change": "revoked"}


def test_configured_paths_reach_the_effect_but_not_the_protected_fields() -> None:
    redactor = Redactor(["effect.identity.id", "effect.credential.id"])
    event = build_outcome_event(
        "o1", AT, FULL, CallMeta(), facts=None, violation="", redactor=redactor
    )
    assert event["effect"]["identity"]["id"].startswith("redacted:")
    assert event["decision_id"] == ID
    for name in ("decision_id", "violation", "status", "decided"):
        with pytest.raises(ConfigError):
            Redactor([name])


# --- the event as it was built before the outcome path was made cheaper ---------------


def reference_event(
    outcome_id: str,
    at: datetime,
    outcome: Outcome,
    meta: CallMeta,
    *,
    facts: DecisionFacts | None,
    violation: str,
    redactor: Redactor | None = None,
    audit_note: str = "",
) -> dict[str, Any]:
    """build_outcome_event before (sidecar/core/event.py, commit d79c3a7): every event
    copied by `apply`, and Redactor.by_value walking the effect without a first scan."""
    event: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": "outcome",
        "id": outcome_id,
        "time": timestamp(at),
        "caller": {"peer": meta.peer, "identity": meta.identity},
        "decision_id": outcome.decision_id,
        "decided": facts.decision if facts is not None else "UNKNOWN",
        "status": outcome.status,
        "attempt": outcome.attempt,
        "workflow_id": facts.workflow_id if facts is not None else "",
        "run_id": facts.run_id if facts is not None else "",
        "step_id": facts.step_id if facts is not None else "",
    }
    if facts is not None:
        for name in ("principal", "action", "resource"):
            value = getattr(facts, name)
            if value is not None:
                event[name] = value
        event["policy_revision"] = facts.policy_revision
    if outcome.error_class:
        event["error_class"] = outcome.error_class
    if outcome.started_at is not None:
        event["started_at"] = timestamp(outcome.started_at)
    if outcome.finished_at is not None:
        event["finished_at"] = timestamp(outcome.finished_at)
    if outcome.effect is not None:
        event["effect"] = outcome.effect.to_json()
    if violation:
        event["violation"] = violation
    _call_fields(event, meta, audit_note)
    if redactor is not None:
        if "effect" in event:
            event["effect"] = by_value_as_it_was(redactor, event["effect"])
        event = redactor.apply(event)
    return event


_SECRETISH = st.sampled_from(
    ["jira", "maria", "ghp_" + "a" * 36, "AKIA" + "B" * 16, "x-1", "jira-developers"]
)
_WHEN = st.sampled_from([AT, AT + timedelta(seconds=90), AT + timedelta(hours=2)])
_effects = st.builds(
    Effect,
    identity=st.none() | st.tuples(st.just("User"), _SECRETISH),
    target_system=st.sampled_from(["", "jira"]) | _SECRETISH,
    entitlements_added=st.lists(_SECRETISH, max_size=2).map(tuple),
    entitlements_removed=st.lists(_SECRETISH, max_size=2).map(tuple),
    credential=st.none()
    | st.builds(Credential, _SECRETISH, st.sampled_from(["issued", "revoked"]), _WHEN, _WHEN),
    account=st.sampled_from(["", "created", "deleted"]),
)
_outcomes = st.builds(
    Outcome,
    st.just(ID),
    st.sampled_from(["succeeded", "failed", "skipped", "timed_out"]),
    error_class=st.sampled_from(["", "http.503"]),
    effect=st.none() | _effects,
    started_at=st.none() | _WHEN,
    finished_at=st.none() | _WHEN,
    attempt=st.integers(0, 3),
)
_facts = st.none() | st.builds(
    DecisionFacts,
    st.sampled_from(["ALLOW", "DENY"]),
    principal=st.none() | st.just({"type": "Workload", "id": "w"}),
    action=st.just({"type": "Action", "id": "grant_access"}),
    resource=st.none() | st.just({"type": "TargetSystem", "id": "jira"}),
    policy_revision=st.just("rev"),
    workflow_id=st.just("onboarding"),
    run_id=st.sampled_from(["", "r-1"]),
    step_id=st.just("s"),
)
_metas = st.builds(
    CallMeta,
    peer=st.just("ipv4:127.0.0.1:1"),
    identity=st.sampled_from(["", "spiffe://example.org/w"]),
    trace_id=st.sampled_from(["", "4bf92f3577b34da6a3ce929d0e0e4736"]),
    request_id=st.sampled_from(["", "req-1", "Bearer abcdefghijklmnopqrstuvwxyz"]),
)
_REDACTORS = [
    None,
    Redactor(key=b"k" * 32),
    Redactor(mode="remove", key=b"k" * 32),
    Redactor(["effect.identity.id", "caller.identity"], key=b"k" * 32),
    Redactor(["*.id"], mode="remove", key=b"k" * 32, values=[r"x-\d"]),
    Redactor(key=b"k" * 32, values=[r"^jira$"]),  # anchored: matches a whole string only
    Redactor(key=b"k" * 32, values=[r"^$"]),  # the empty string (never in the effect's JSON)
]


@settings(max_examples=400, deadline=None)
@given(
    outcome=_outcomes,
    facts=_facts,
    meta=_metas,
    violation=st.sampled_from(["", "decision_denied"]),
    which=st.integers(0, len(_REDACTORS) - 1),
    note=st.sampled_from(["", "NON-PRODUCTION: fixed clock"]),
)
def test_the_outcome_event_is_what_it_was(
    outcome: Outcome,
    facts: DecisionFacts | None,
    meta: CallMeta,
    violation: str,
    which: int,
    note: str,
) -> None:
    """The event built the cheaper way (no copy when redaction cannot reach it, the
    effect scanned before it is walked) holds what it held, to the byte once encoded."""
    redactor = _REDACTORS[which]
    args = ("01a24a69-8228-7000-8f19-46017a570b99", AT, outcome, meta)
    kwargs: dict[str, Any] = {
        "facts": facts,
        "violation": violation,
        "redactor": redactor,
        "audit_note": note,
    }
    got, want = build_outcome_event(*args, **kwargs), reference_event(*args, **kwargs)
    assert got == want
    assert canonical(got) == canonical(want)
