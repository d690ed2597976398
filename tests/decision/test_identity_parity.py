"""One certificate, one identity, one decision: gRPC and AuthZEN (issue 25 point 6, 16 point 13).

A real sidecar serves both APIs with mutual TLS and workload binding on. Each
certificate of the table (tests/pki.py) calls both APIs; the identity each
records in the audit trail, and the decision, must be the same, and a
certificate that breaks an identity rule is refused by both, naming the rule.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from sidecar.client import StepguardClient, channel_credentials
from sidecar.decision.identity import spiffe_id_problem
from tests.helpers import NOTIFIER, Running, notify_request, running_sidecar
from tests.pki import Pair, Pki, make_pki, tls_settings

ID = NOTIFIER["id"]
NOTIFY = {
    "subject": {"type": "Workload", "id": ID},
    "action": {"name": "notify"},
    "resource": {"type": "TargetSystem", "id": "slack"},
    "context": {"workflow_id": "onboarding", "run_id": "r1", "step_id": "notify"},
    "options": {"stepguard_explain": True},
}


def _name(*rdns: list[tuple[ObjectIdentifier, str]]) -> x509.Name:
    return x509.Name(
        [x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in rdn]) for rdn in rdns]
    )


CN, O_ = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME
# name -> (issue() arguments, expected: ("identity", text) or ("refused", words of the rule))
TABLE: dict[str, tuple[dict[str, Any], tuple[str, str]]] = {
    "spiffe id": ({"uris": (ID,)}, ("identity", ID)),
    "trailing space": ({"uris": (ID + " ",)}, ("refused", "characters other than")),
    "leading space": ({"uris": (" " + ID,)}, ("refused", "does not start with spiffe://")),
    "two uri sans": (
        {"uris": (ID, "spiffe://example.org/ns/x/sa/y")},
        ("refused", "exactly one URI SAN"),
    ),
    "spiffe and https": ({"uris": (ID, "https://example.org/w")}, ("refused", "exactly one")),
    "trailing slash": ({"uris": ("spiffe://example.org/",)}, ("refused", "trailing slash")),
    "path trailing slash": ({"uris": (ID + "/",)}, ("refused", "empty path segment")),
    "query": ({"uris": (ID + "?x=1",)}, ("refused", "has a query")),
    "fragment": ({"uris": (ID + "#f",)}, ("refused", "has a fragment")),
    "port": ({"uris": ("spiffe://example.org:8443/ns/a",)}, ("refused", "a port")),
    "userinfo": ({"uris": ("spiffe://u@example.org/ns/a",)}, ("refused", "userinfo")),
    "upper-case trust domain": ({"uris": ("spiffe://Example.org/ns/a",)}, ("refused", "a-z")),
    "upper-case scheme": ({"uris": ("SPIFFE://example.org/ns/a",)}, ("refused", "lower case")),
    "dot segment": ({"uris": ("spiffe://example.org/ns/../a",)}, ("refused", "'..' path")),
    "https uri only": (
        {"uris": ("https://example.org/w",), "subject": "w"},
        ("identity", "CN=w,O=Example"),
    ),
    "multi-valued rdn": (
        {"name": _name([(CN, "batch"), (O_, "Example")], [(NameOID.COUNTRY_NAME, "DE")])},
        ("identity", "C=DE,CN=batch+O=Example"),
    ),
    "unknown oid": (
        {"name": _name([(ObjectIdentifier("1.3.6.1.4.1.99999.1"), "x")], [(CN, "batch")])},
        ("identity", "CN=batch,1.3.6.1.4.1.99999.1=x"),
    ),
    "escapes": ({"name": _name([(CN, 'a,b+"c" ')])}, ("identity", 'CN=a\\,b\\+\\"c\\"\\ ')),
}


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("identity")
    with running_sidecar(
        tmp, authzen_listen="127.0.0.1:0", bind_workload_identity=True, **tls_settings(tmp, pki)
    ) as running:
        yield running


def _via_http(running: Running, pki: Pki, pair: Pair, tmp: Path) -> tuple[int, Any]:
    roots = tmp / "roots.pem"
    roots.write_bytes(pki.domain.pem)
    context = ssl.create_default_context(cafile=str(roots))
    context.load_cert_chain(*pair.write(tmp, "http"))
    host, port = str(running.sidecar.endpoints.authzen).rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        conn.request(
            "POST",
            "/access/v1/evaluation",
            json.dumps(NOTIFY),
            {"Content-Type": "application/json"},
        )
        reply = conn.getresponse()
        body = reply.read().decode()
        return reply.status, json.loads(body) if reply.status == 200 else body
    finally:
        conn.close()


def _identity(running: Running, decision_id: str) -> str:
    (event,) = [e for e in running.audit_events() if e.get("id") == decision_id]
    return str(event["caller"]["identity"])


@pytest.mark.parametrize("case", sorted(TABLE))
def test_one_certificate_one_identity_on_both_apis(
    both: Running, pki: Pki, tmp_path: Path, case: str
) -> None:
    issue, (kind, expected) = TABLE[case]
    pair = pki.domain.issue(**issue)
    status, http_answer = _via_http(both, pki, pair, tmp_path)
    roots = tmp_path / "roots.pem"
    creds = channel_credentials(roots, *pair.write(tmp_path, "grpc"))
    with StepguardClient(both.tcp, credentials=creds, timeout=10) as client:
        grpc_answer = client.authorize(notify_request())
    if kind == "refused":
        # No decision on either API, and both say which rule the certificate broke.
        assert status == 403 and expected in http_answer, http_answer
        assert not grpc_answer.allowed and not grpc_answer.decision_id
        assert "UNAUTHENTICATED" in grpc_answer.reason and expected in grpc_answer.reason
        assert http_answer.strip().removeprefix("caller: ") in grpc_answer.reason
        return
    assert status == 200, http_answer
    via_http = _identity(both, http_answer["context"]["decision_id"])
    via_grpc = _identity(both, grpc_answer.decision_id)
    assert via_http == via_grpc == expected
    assert http_answer["decision"] == grpc_answer.allowed == (expected == ID)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://example.org/ns/a/sa/b",
        "spiffe://a-b_c.d/x",
        "spiffe://td/A.b-C_d/..x/e",
    ],
)
def test_valid_spiffe_ids(uri: str) -> None:
    assert spiffe_id_problem(uri) is None


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://example.org",
        "spiffe:///a",
        "spiffe://example.org//a",
        "spiffe://example.org/./a",
        "spiffe://example.org/a b",
        "spiffe://exa mple.org/a",
        "spiffe://example.org/é",
        "spiffe://" + "a" * 256 + "/x",
        "spiffe://example.org/" + "a" * 2040,
    ],
)
def test_invalid_spiffe_ids(uri: str) -> None:
    assert spiffe_id_problem(uri) is not None
