"""The outcome event (kind "outcome"): its published schema and its redaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from sidecar.audit.filesink import FileSink
from sidecar.audit.redact import Redactor
from sidecar.core.errors import ConfigError
from sidecar.core.event import CallMeta, build_outcome_event
from sidecar.core.outcome import Credential, DecisionFacts, Effect, Outcome

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
