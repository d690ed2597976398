"""An outcome reported by another caller than the one its decision was made for (issue 18).

Security: with mutual TLS, a decision records who asked (its caller's identity);
with workload identity binding on, a decision is only ever made for the caller
itself. An outcome for that decision reported by anyone else (another workload's
certificate, a Unix socket caller with no certificate) must be recorded and
flagged `caller_mismatch`, over gRPC and AuthZEN alike: never dropped, never
taken as the workload's own report. The real server, real certificates
(tests/pki.py), the real trail and the real `stepguard evidence` CLI.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import StepguardClient
from tests.helpers import (
    NOTIFIER,
    PROVISIONER,
    ROOT,
    Running,
    grant_request,
    notify_request,
    running_sidecar,
    tls_client,
)
from tests.pki import Pair, Pki, make_pki, tls_settings


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Running]:
    """Mutual TLS on gRPC and AuthZEN, workload identity binding on."""
    tmp = tmp_path_factory.mktemp("bound")
    with running_sidecar(
        tmp,
        authzen_listen="127.0.0.1:0",
        bind_workload_identity=True,
        **tls_settings(tmp / "tls", pki),
    ) as running:
        yield running


def _https_outcome(
    tmp: Path, running: Running, pki: Pki, pair: Pair, body: dict[str, Any]
) -> dict[str, Any]:
    directory = tmp / f"https-{len(list(tmp.glob('https-*')))}"
    directory.mkdir(parents=True)
    (directory / "roots.pem").write_bytes(pki.domain.pem)
    context = ssl.create_default_context(cafile=str(directory / "roots.pem"))
    context.load_cert_chain(*pair.write(directory, "svid"))
    host, port = str(running.sidecar.endpoints.authzen).rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        conn.request(
            "POST", "/stepguard/v1/outcome", json.dumps(body), {"Content-Type": "application/json"}
        )
        reply = conn.getresponse()
        assert reply.status == 200
        answer: dict[str, Any] = json.loads(reply.read())
        return answer
    finally:
        conn.close()


def _outcome_event(running: Running, outcome_id: str) -> dict[str, Any]:
    (event,) = [e for e in running.audit_events() if e.get("id") == outcome_id]
    return event


def test_binding_flags_an_outcome_reported_by_another_workload(
    bound: Running, pki: Pki, tmp_path: Path
) -> None:
    provisioner = pki.domain.issue(spiffe=PROVISIONER["id"])
    notifier = pki.domain.issue(spiffe=NOTIFIER["id"])
    with tls_client(tmp_path, bound, pki.domain.pem, provisioner) as own:
        decision = own.authorize(grant_request())
        assert decision.allowed, decision.reason
        mine = own.record_outcome(decision.decision_id, "succeeded")
    with tls_client(tmp_path, bound, pki.domain.pem, notifier) as other:
        stolen = other.record_outcome(decision.decision_id, "succeeded")
        in_batch = other.record_outcomes(
            [{"decision_id": decision.decision_id, "status": "failed", "error_class": "E"}]
        )
    with StepguardClient(f"unix://{bound.socket}", timeout=5) as anonymous:
        unauthenticated = anonymous.record_outcome(decision.decision_id, "timed_out")
    over_http = _https_outcome(
        tmp_path, bound, pki, notifier, {"decision_id": decision.decision_id, "status": "succeeded"}
    )

    assert mine.recorded and mine.violation == ""
    for report in (stolen, in_batch[0], unauthenticated):
        assert report.recorded, report.reason  # recorded, never dropped
        assert report.violation == "caller_mismatch", report
        assert report.decision == "ALLOW"
        assert "another caller" in report.reason
        assert PROVISIONER["id"] not in report.reason  # nothing told about the owner
    assert over_http["violation"] == "caller_mismatch"

    assert "violation" not in _outcome_event(bound, mine.outcome_id)
    flagged = [
        _outcome_event(bound, r.outcome_id) for r in (stolen, in_batch[0], unauthenticated)
    ] + [_outcome_event(bound, over_http["outcome_id"])]
    assert [e["violation"] for e in flagged] == ["caller_mismatch"] * 4
    assert [e["caller"]["identity"] for e in flagged] == [
        NOTIFIER["id"],
        NOTIFIER["id"],
        "",
        NOTIFIER["id"],
    ]
    metrics = bound.sidecar.metrics.registry
    assert (
        metrics.get_sample_value(
            "stepguard_outcomes_total", {"status": "succeeded", "violation": "caller_mismatch"}
        )
        == 2.0
    )

    # The evidence names them: `stepguard evidence exceptions` (the real CLI).
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "evidence",
            "exceptions",
            str(bound.audit),
            "--json",
            "--policies",
            str(ROOT / "policies"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["rows"]
    mismatched = [r for r in rows if "caller_mismatch" in r["detail"]]
    assert len(mismatched) == 4
    assert {r["category"] for r in mismatched} == {"violation"}
    assert any(f"reported by {NOTIFIER['id']}" in r["detail"] for r in mismatched)
    assert any("reported by an unauthenticated caller" in r["detail"] for r in mismatched)


def test_without_binding_a_recorded_caller_identity_must_match(tmp_path: Path, pki: Pki) -> None:
    """Mutual TLS without binding: a decision that recorded its caller's identity takes
    outcomes from that caller only; one made with no identity (the Unix socket) records
    none to compare, so its outcomes are not flagged for it."""
    notifier = pki.domain.issue(spiffe=NOTIFIER["id"])
    legacy = pki.domain.issue(subject="legacy-batch")
    with running_sidecar(tmp_path, **tls_settings(tmp_path / "tls", pki)) as run:
        with tls_client(tmp_path, run, pki.domain.pem, notifier) as own:
            decided = own.authorize(notify_request())
            assert decided.allowed, decided.reason
            fine = own.record_outcome(decided.decision_id, "succeeded")
        with tls_client(tmp_path, run, pki.domain.pem, legacy) as other:
            by_subject = other.record_outcome(decided.decision_id, "succeeded")
        with StepguardClient(f"unix://{run.socket}", timeout=5) as anonymous:
            by_socket = anonymous.record_outcome(decided.decision_id, "succeeded")
            open_decision = anonymous.authorize(notify_request())
        with tls_client(tmp_path, run, pki.domain.pem, legacy) as other:
            unbound = other.record_outcome(open_decision.decision_id, "succeeded")
    assert fine.violation == ""
    assert by_subject.recorded and by_subject.violation == "caller_mismatch"
    assert by_socket.recorded and by_socket.violation == "caller_mismatch"
    assert unbound.recorded and unbound.violation == ""
