"""The plan event (core/event.py build_plan_event): its schema, redaction, query row."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from sidecar.audit.query import row
from sidecar.audit.redact import Redactor
from sidecar.core.bundle import load_bundle
from sidecar.core.event import CallMeta, build_plan_event
from sidecar.core.plan import plan_steps
from sidecar.core.planreq import plan_from_json, plan_from_proto
from sidecar.core.validate import Limits
from tests.helpers import POLICIES, leaver_plan

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "sidecar" / "audit" / "event.schema.json").read_text()
)
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
CHAIN = {"seq": 7, "prev": "0" * 64, "hash": "1" * 64}  # what the sink adds


def _event(redactor: Redactor | None = None) -> dict[str, object]:
    bundle = load_bundle(POLICIES)
    plan = plan_from_proto(plan_from_json(leaver_plan("run-A")), bundle, Limits())
    verdicts = plan_steps(bundle, plan.steps)
    return build_plan_event(
        "01a24a69-8228-7000-8f19-46017a570b02",
        AT,
        plan,
        verdicts,
        CallMeta(peer="unix:", trace_id="a" * 32),
        revision=bundle.revision,
        policy_errors="deny",
        redactor=redactor,
    )


def test_a_plan_event_follows_the_schema_and_says_what_was_predicted() -> None:
    event = _event()
    jsonschema.Draft202012Validator(SCHEMA).validate({**event, **CHAIN})
    assert event["kind"] == "plan" and event["run_id"] == "run-A"
    assert event["verdicts"] == {"ALLOW": 2, "DENY": 1, "DEPENDS": 0}
    assert event["trace_id"] == "a" * 32
    assert "context" not in event  # the decisions record theirs


def test_redaction_paths_apply_to_each_step() -> None:
    event = _event(Redactor(["principal.id"], key=b"k" * 32))
    steps = event["steps"]
    assert isinstance(steps, list)
    assert all(s["principal"]["id"].startswith("redacted:hmac-sha256:") for s in steps)
    jsonschema.Draft202012Validator(SCHEMA).validate({**event, **CHAIN})


def test_a_plan_row_counts_verdicts_and_names_the_denied_steps() -> None:
    cells = row(_event())
    assert cells[1] == "PLAN"
    assert "ALLOW 2, DENY 1, DEPENDS 0; denied: revoke-okta (no permit)" in cells
    assert any("run-A" in c for c in cells)
