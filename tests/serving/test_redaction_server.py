"""Redaction as the trail file shows it, written by a real sidecar (issue 16 point 12).

Each case sends a secret to the real gRPC server, then reads the audit file
itself: the secret's text must be nowhere in it, and the field must hold the
keyed hash. Values that only look alike, and keys that only contain a short
word ("shipping", "author"), stay in clear.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.audit.redact import VALUE_PATTERNS, Redactor
from sidecar.core.errors import ConfigError
from sidecar.core.jsonreq import request_from_json
from sidecar.serving.config import Settings, build_settings
from tests.helpers import Running, running_sidecar

KEYS = [
    "pwd",
    "access_key",
    "jwt",
    "auth",
    "otp",
    "pin",
    "ssn",
    "userPin",
    "employee_number",
]
SCHEMA = (
    """
entity User;
entity Doc;
type Ctx = {
  now: datetime,
  workflow_id?: String,
  run_id?: String,
  step_id?: String,
  note?: String,
  tags?: Set<String>,
  shipping?: String,
  author?: String,
"""
    + "".join(f"  {k}?: String,\n" for k in KEYS)
    + """};
action read appliesTo { principal: [User], resource: [Doc], context: Ctx };
"""
)
POLICY = '@id("alice-reads")\npermit (principal == User::"alice", action, resource);\n'

# These tests are about the trail, not about entities: any user may ask about any doc
# (request-entities.yaml admits both bare when the store lacks them).
ADMIT_USERS_AND_DOCS = "entity_types:\n  User:\n    attributes: []\n  Doc:\n    attributes: []\n"


# One fake but well-formed secret per value pattern.
SECRETS = {
    "bearer": "Bearer abcDEF0123456789ghiJKLmno",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlF",
    "pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY",
    "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "gitlab_token": "glpat-x7Yk2mQp9LrT4vWz8nBc",
    "slack_token": "xoxb-123456789012-abcdefghijKLM",
    "slack_webhook": "https://hooks.slack.com/services/T0A1B2C3D/B0A1B2C3D/abcdefghijklmnopqrstuvwx",
    "google_api_key": "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "stripe_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "url_password": "postgres://app:hunter2@db.internal:5432/app",
}
HARMLESS = [
    "onboarding",
    "r-2026-11-25-0001",
    "https://example.org/runs/42",
    "the bearer of this note",
    "AKIA-not-a-key",
    "2026-11-25T09:00:00Z",
]


def test_every_value_pattern_has_a_case() -> None:
    assert set(SECRETS) == set(VALUE_PATTERNS)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("redaction")
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "schema.cedarschema").write_text(SCHEMA)
    (policies / "read.cedar").write_text(POLICY)
    (policies / "request-entities.yaml").write_text(ADMIT_USERS_AND_DOCS)
    config = tmp / "stepguard.yaml"
    config.write_text(
        "audit_redact_keys: ['^employee_number$']\naudit_redact_values: ['EMP-[0-9]{6}']\n"
    )
    extra = build_settings({}, {}, config)
    with running_sidecar(
        tmp,
        policies=policies,
        audit_redact_keys=extra.audit_redact_keys,
        audit_redact_values=extra.audit_redact_values,
    ) as served:
        yield served


def _ask(
    running: Running, context: dict[str, Any], request_id: str = ""
) -> tuple[pb.AuthorizeResponse, dict[str, Any], str]:
    """Authorize over gRPC; the decision's event as read from the trail file, and the file."""
    ids = {k: context.pop(k) for k in ("workflow_id", "run_id", "step_id") if k in context}
    request = request_from_json(
        {
            "principal": {"type": "User", "id": "alice"},
            "action": {"type": "Action", "id": "read"},
            "resource": {"type": "Doc", "id": "d1"},
            "context": {**ids, "attributes": context},
        }
    )
    metadata = (("x-request-id", request_id),) if request_id else ()
    with grpc.insecure_channel(running.tcp) as channel:
        answer = pb_grpc.AuthorizerStub(channel).Authorize(request, timeout=10, metadata=metadata)
    assert answer.decision == pb.DECISION_ALLOW
    text = running.audit.read_text()
    events = {e["id"]: e for e in map(json.loads, text.splitlines()) if e.get("kind")}
    return answer, events[answer.decision_id], text


def _masked(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("redacted:hmac-sha256:")


@pytest.mark.parametrize("key", KEYS)
def test_secret_keys_are_redacted(running: Running, key: str) -> None:
    secret = f"v-{key}-4711"
    _, event, text = _ask(running, {key: secret, "shipping": "DHL", "author": "maria"})
    assert secret not in text
    assert _masked(event["context"][key])
    assert event["context"]["shipping"] == "DHL" and event["context"]["author"] == "maria"


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_secret_values_are_redacted_under_any_key(running: Running, name: str) -> None:
    secret = SECRETS[name]
    _, event, text = _ask(running, {"note": secret, "tags": ["ok", secret]})
    assert secret not in text and json.dumps(secret)[1:-1] not in text
    assert _masked(event["context"]["note"])
    tags = event["context"]["tags"]
    assert "ok" in tags and any(_masked(t) for t in tags)


@pytest.mark.parametrize("field", ["workflow_id", "run_id", "step_id"])
def test_secrets_in_workflow_run_and_step_ids_are_redacted(running: Running, field: str) -> None:
    secret = SECRETS["github_token"]
    context = {"workflow_id": "wf", "run_id": "r", "step_id": "s", field: secret}
    for _ in range(2):  # the second is a cache hit: stamped from the first's event
        _, event, text = _ask(running, dict(context))
        assert secret not in text
        assert _masked(event["context"][field]) and _masked(event[field])
    assert event["cached"] is True


def test_a_secret_request_id_is_redacted_on_misses_and_cache_hits(running: Running) -> None:
    secret = SECRETS["bearer"]
    context = {"workflow_id": "wf", "run_id": "rid-case", "note": "plain"}
    _, event, _ = _ask(running, dict(context), request_id=secret)
    assert event["cached"] is False and _masked(event["request_id"])
    _, event, text = _ask(running, dict(context), request_id=secret)
    assert event["cached"] is True and _masked(event["request_id"])
    assert secret not in text
    # A plain id is kept as it is, on a hit too.
    _, event, _ = _ask(running, dict(context), request_id="req-42")
    assert event["cached"] is True and event["request_id"] == "req-42"


def test_configured_keys_and_values_are_redacted(running: Running) -> None:
    _, event, text = _ask(running, {"note": "badge EMP-123456", "employee_number": "77"})
    assert "EMP-123456" not in text and _masked(event["context"]["note"])
    assert _masked(event["context"]["employee_number"])


def test_harmless_values_stay_in_clear(running: Running) -> None:
    for value in HARMLESS:
        _, event, _ = _ask(running, {"note": value})
        assert event["context"]["note"] == value


def test_extension_values_are_not_read() -> None:
    redactor = Redactor(values=["2026"])  # would match the datetime's text
    now = {"__extn": {"fn": "datetime", "arg": "2026-11-25T10:00:00Z"}}
    out = redactor.apply({"context": {"now": now, "note": "2026"}})
    assert out["context"]["now"] == now and _masked(out["context"]["note"])


def test_entity_attributes_are_redacted_by_value_too() -> None:
    redactor = Redactor(mode="remove")
    event = {"entities": [{"uid": {"type": "User", "id": "u"}, "attrs": {"x": SECRETS["pem"]}}]}
    assert redactor.apply(event)["entities"][0]["attrs"] == {}


def test_bad_patterns_are_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="audit_redact_values: '\\(' is not a regular"):
        Settings(audit_redact_values=("(",))
    with pytest.raises(ConfigError, match="audit_redact_keys"):
        Settings(audit_redact_keys=("[",))
    # From the environment, one pattern per line (a pattern may hold commas).
    settings = build_settings({}, {"STEPGUARD_AUDIT_REDACT_VALUES": "A{2,3}\nB{1,}"})
    assert settings.audit_redact_values == ("A{2,3}", "B{1,}")
