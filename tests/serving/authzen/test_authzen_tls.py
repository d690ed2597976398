"""The AuthZEN API over HTTPS: mutual TLS, caller identity, binding, rotation.

The real sidecar serves gRPC and AuthZEN with the same certificate files;
clients are the standard library's HTTPS client and the real gRPC client,
with certificates from tests/pki.py. Every decision is read back from the
real audit file.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from sidecar.client import StepguardClient, channel_credentials
from sidecar.core.errors import ConfigError
from sidecar.serving.config import Settings
from tests.helpers import NOTIFIER, PROVISIONER, Running, notify_request, running_sidecar
from tests.pki import Pair, Pki, make_pki, tls_settings

NOTIFY = {
    "subject": {"type": "Workload", "id": NOTIFIER["id"]},
    "action": {"name": "notify"},
    "resource": {"type": "TargetSystem", "id": "slack"},
    "context": {"workflow_id": "onboarding", "run_id": "r1", "step_id": "notify"},
}


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Running]:
    """Mutual TLS on both APIs, workload identity binding on."""
    tmp = tmp_path_factory.mktemp("authzen-tls")
    with running_sidecar(
        tmp,
        authzen_listen="127.0.0.1:0",
        bind_workload_identity=True,
        **tls_settings(tmp / "tls", pki),
    ) as running:
        yield running


def _context(tmp: Path, pki: Pki, pair: Pair | None) -> ssl.SSLContext:
    tmp.mkdir(parents=True, exist_ok=True)
    roots = tmp / "roots.pem"
    roots.write_bytes(pki.domain.pem)
    context = ssl.create_default_context(cafile=str(roots))
    if pair is not None:
        cert, key = pair.write(tmp, f"client-{len(list(tmp.glob('client-*.crt')))}")
        context.load_cert_chain(cert, key)
    return context


def _post(running: Running, context: ssl.SSLContext, path: str, body: Any) -> tuple[int, Any]:
    host, port = str(running.sidecar.endpoints.authzen).rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def _get(running: Running, context: ssl.SSLContext, path: str) -> Any:
    host, port = str(running.sidecar.endpoints.authzen).rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _event(running: Running, decision_id: str) -> dict[str, Any]:
    (event,) = [e for e in running.audit_events() if e.get("id") == decision_id]
    return event


def _decision_count(running: Running) -> int:
    return sum(1 for e in running.audit_events() if e.get("kind") == "decision")


def test_a_spiffe_caller_is_identified_and_bound(bound: Running, pki: Pki, tmp_path: Path) -> None:
    context = _context(tmp_path, pki, pki.domain.issue(spiffe=NOTIFIER["id"]))
    status, answer = _post(
        bound, context, "/access/v1/evaluation", {**NOTIFY, "options": {"stepguard_explain": True}}
    )
    assert status == 200 and answer["decision"] is True, answer
    event = _event(bound, answer["context"]["decision_id"])
    assert event["caller"]["identity"] == NOTIFIER["id"]
    assert event["context"]["caller"] == NOTIFIER["id"]  # declared by the notify action
    # Binding: the same caller may not ask about another workload.
    other = {**NOTIFY, "subject": {"type": "Workload", "id": PROVISIONER["id"]}}
    status, answer = _post(
        bound, context, "/access/v1/evaluation", {**other, "options": {"stepguard_explain": True}}
    )
    assert status == 200 and answer["decision"] is False
    event = _event(bound, answer["context"]["decision_id"])
    assert event["decision"] == "DENY" and "workload identity binding" in event["reason"]
    # The metadata names the HTTPS base the caller used.
    meta = _get(bound, context, "/.well-known/authzen-configuration")
    assert meta["access_evaluation_endpoint"].startswith("https://")


@pytest.mark.parametrize("case", ["other CA", "no client certificate", "plaintext"])
def test_untrusted_callers_get_no_decision(
    bound: Running, pki: Pki, tmp_path: Path, case: str
) -> None:
    before = _decision_count(bound)
    host, port = str(bound.sidecar.endpoints.authzen).rsplit(":", 1)
    if case == "plaintext":
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.request("POST", "/access/v1/evaluation", json.dumps(NOTIFY))
            conn.getresponse().read()
        conn.close()
    else:
        pair = pki.other.issue(spiffe=NOTIFIER["id"]) if case == "other CA" else None
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _post(bound, _context(tmp_path, pki, pair), "/access/v1/evaluation", NOTIFY)
    assert _decision_count(bound) == before


SUBJECTS = {
    "plain": [(NameOID.ORGANIZATION_NAME, "Example"), (NameOID.COMMON_NAME, "legacy-batch")],
    "specials": [
        (NameOID.ORGANIZATION_NAME, 'Example, Inc. <"ops">'),
        (NameOID.COMMON_NAME, "#batch+1; a\\b "),
    ],
    "non-ascii": [(NameOID.COUNTRY_NAME, "DE"), (NameOID.COMMON_NAME, "Jürgen Ökonom")],
}


@pytest.mark.parametrize("shape", sorted(SUBJECTS))
def test_both_apis_record_the_same_identity_for_a_certificate(
    bound: Running, pki: Pki, tmp_path: Path, shape: str
) -> None:
    """Without a SPIFFE ID the identity is the subject DN: formatted as gRPC formats it."""
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in SUBJECTS[shape]])
    pair = pki.domain.issue(name=name)
    _, answer = _post(
        bound,
        _context(tmp_path, pki, pair),
        "/access/v1/evaluation",
        {**NOTIFY, "options": {"stepguard_explain": True}},
    )
    via_http = _event(bound, answer["context"]["decision_id"])["caller"]["identity"]
    cert, key = pair.write(tmp_path / "grpc", "svid")
    roots = tmp_path / "roots.pem"
    creds = channel_credentials(roots, cert, key)
    with StepguardClient(bound.tcp, credentials=creds, timeout=5) as client:
        decision = client.authorize(notify_request())
    via_grpc = _event(bound, decision.decision_id)["caller"]["identity"]
    assert via_http == via_grpc
    assert via_http.startswith("CN=") and not via_http.startswith("spiffe://")


def test_https_follows_rotated_certificates(tmp_path: Path, pki: Pki) -> None:
    settings = tls_settings(tmp_path / "tls", pki)
    with running_sidecar(tmp_path, authzen_listen="127.0.0.1:0", **settings) as running:
        host, port = str(running.sidecar.endpoints.authzen).rsplit(":", 1)

        def served_serial() -> int:
            context = _context(tmp_path / "c", pki, pki.domain.issue(spiffe=NOTIFIER["id"]))
            with (
                socket.create_connection((host, int(port)), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number

        first = served_serial()
        fresh = pki.domain.issue(server=True)
        settings["tls_key"].write_bytes(fresh.key)
        settings["tls_cert"].write_bytes(fresh.cert)
        assert served_serial() != first
        status, answer = _post(
            running,
            _context(tmp_path / "c", pki, pki.domain.issue(spiffe=NOTIFIER["id"])),
            "/access/v1/evaluation",
            NOTIFY,
        )
        assert status == 200 and answer["decision"] is True


def test_authzen_leaves_loopback_only_with_tls(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="--tls-cert"):
        Settings(authzen_listen="0.0.0.0:8080")
    Settings(authzen_listen="0.0.0.0:8080", **tls_settings(tmp_path, pki))
    Settings(authzen_listen="127.0.0.1:8080")
