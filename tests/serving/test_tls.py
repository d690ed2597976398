"""TLS, mutual TLS and workload identity against the real server.

Certificates come from tests/pki.py (made with `cryptography`): a trust domain CA that signs
the server's certificate and SPIFFE client certificates (as SPIRE does), and
a second, unrelated CA. Every call goes through the real `StepguardClient`
over loopback, and every decision is read back from the real audit file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.cli.main import _parser
from sidecar.client import StepDecision, StepguardClient, channel_credentials
from sidecar.core.bundle import load_bundle
from sidecar.core.errors import ConfigError
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import EntityUid
from sidecar.decision.identity import actions_declaring_caller, binding_refusal, caller_identity
from sidecar.serving.config import Settings, build_settings
from sidecar.serving.tls import CertificateReloader, TlsFiles, read_material
from tests.helpers import (
    NOTIFIER,
    PROVISIONER,
    Running,
    notify_request,
    running_sidecar,
    tls_client,
)
from tests.pki import NOW, Authority, Pair, Pki, make_pki, tls_settings

TRUST_DOMAIN = "spiffe://example.org"
NOTIFIER_ID = NOTIFIER["id"]
WORKER_ID = f"{TRUST_DOMAIN}/ns/etl/sa/worker"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _ask(client: StepguardClient, request: dict[str, Any]) -> StepDecision:
    with client:
        return client.authorize(request)


def _decisions(running: Running) -> list[dict[str, Any]]:
    """Decision events from the audit file (not its segment or shutdown records)."""
    return [e for e in running.audit_events() if e.get("kind", "decision") == "decision"]


def _last_event(running: Running) -> dict[str, Any]:
    return _decisions(running)[-1]


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("mtls")
    with running_sidecar(tmp, **tls_settings(tmp / "tls", pki)) as running:
        yield running


# --- mutual TLS: who gets in --------------------------------------------------------------


def test_spiffe_client_is_allowed_and_its_identity_reaches_context_and_audit(
    mtls: Running, pki: Pki, tmp_path: Path
) -> None:
    client = tls_client(tmp_path, mtls, pki.domain.pem, pki.domain.issue(spiffe=NOTIFIER_ID))
    decision = _ask(client, notify_request())
    assert decision.allowed, decision.reason
    event = _last_event(mtls)
    assert event["id"] == decision.decision_id
    assert event["decision"] == "ALLOW"
    assert event["caller"]["identity"] == NOTIFIER_ID
    assert event["context"]["caller"] == NOTIFIER_ID
    assert event["caller"]["peer"].startswith("ipv4:127.0.0.1:")


def test_a_request_cannot_claim_a_caller_itself(mtls: Running, pki: Pki, tmp_path: Path) -> None:
    client = tls_client(tmp_path, mtls, pki.domain.pem, pki.domain.issue(spiffe=NOTIFIER_ID))
    forged = notify_request()
    forged["context"]["attributes"] = {"caller": PROVISIONER["id"]}
    before = len(_decisions(mtls))
    decision = _ask(client, forged)
    assert not decision.allowed
    assert "context.attributes['caller']" in decision.reason
    assert "reserved" in decision.reason
    assert len(_decisions(mtls)) == before


def test_plaintext_socket_beside_mtls_has_no_identity(mtls: Running) -> None:
    with StepguardClient(f"unix://{mtls.socket}", timeout=5) as client:
        decision = client.authorize(notify_request())
    assert decision.allowed, decision.reason
    event = _last_event(mtls)
    assert event["id"] == decision.decision_id
    assert event["caller"]["identity"] == ""
    assert "caller" not in event["context"]


@pytest.mark.parametrize(
    "case",
    ["other CA", "expired", "not yet valid", "no client certificate", "plaintext"],
)
def test_untrusted_clients_are_refused_before_any_decision(
    mtls: Running, pki: Pki, tmp_path: Path, case: str
) -> None:
    before = len(_decisions(mtls))
    if case == "plaintext":
        client = StepguardClient(mtls.tcp, timeout=5)
    else:
        pair = {
            "other CA": pki.other.issue(spiffe=NOTIFIER_ID),
            "expired": pki.domain.issue(
                spiffe=NOTIFIER_ID,
                not_before=NOW - timedelta(days=2),
                not_after=NOW - timedelta(days=1),
            ),
            "not yet valid": pki.domain.issue(
                spiffe=NOTIFIER_ID,
                not_before=NOW + timedelta(days=1),
                not_after=NOW + timedelta(days=2),
            ),
            "no client certificate": None,
        }[case]
        client = tls_client(tmp_path, mtls, pki.domain.pem, pair)
    decision = _ask(client, notify_request())
    assert not decision.allowed
    assert decision.reason.startswith("stepguard call failed (UNAVAILABLE)"), decision.reason
    assert len(_decisions(mtls)) == before  # refused by the handshake: nothing decided
    # ...and the server goes on serving trusted clients.
    good = tls_client(tmp_path, mtls, pki.domain.pem, pki.domain.issue(spiffe=NOTIFIER_ID))
    assert _ask(good, notify_request()).allowed


def test_client_refuses_a_server_from_another_ca(mtls: Running, pki: Pki, tmp_path: Path) -> None:
    client = tls_client(tmp_path, mtls, pki.other.pem, pki.other.issue(spiffe=NOTIFIER_ID))
    decision = _ask(client, notify_request())
    assert not decision.allowed
    assert "UNAVAILABLE" in decision.reason


# --- context.caller in policies -----------------------------------------------------------

CALLER_SCHEMA = """
entity Workload;
entity Job;
action "run" appliesTo {
  principal: [Workload], resource: [Job],
  context: { now: datetime, caller?: String },
};
// No `caller` here: the server must not add it (strict validation would deny).
action "legacy" appliesTo {
  principal: [Workload], resource: [Job],
  context: { now: datetime },
};
"""
CALLER_POLICIES = f"""
@id("the-etl-worker-runs-jobs")
permit (principal, action == Action::"run", resource)
when {{ context has caller && context.caller == "{WORKER_ID}" }};

@id("the-legacy-batch-host-runs-jobs")
permit (principal, action == Action::"run", resource)
when {{ context has caller && context.caller like "*CN=legacy-batch*" }};

@id("legacy-is-open")
permit (principal, action == Action::"legacy", resource);
"""


def _run(action: str = "run", principal: str = WORKER_ID) -> dict[str, Any]:
    return {
        "principal": {"type": "Workload", "id": principal},
        "action": {"type": "Action", "id": action},
        "resource": {"type": "Job", "id": "nightly"},
    }


@pytest.fixture(scope="module")
def caller_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("caller-policies")
    (directory / "schema.cedarschema").write_text(CALLER_SCHEMA)
    (directory / "jobs.cedar").write_text(CALLER_POLICIES)
    # The principal and resource the tests name are in the store (docs/api.md).
    stored = [("Workload", WORKER_ID), ("Job", "nightly")]
    entities = [{"uid": {"type": t, "id": i}, "attrs": {}, "parents": []} for t, i in stored]
    (directory / "entities.json").write_text(json.dumps(entities))
    return directory


def test_policies_decide_on_context_caller(tmp_path: Path, pki: Pki, caller_bundle: Path) -> None:
    with running_sidecar(
        tmp_path / "srv", policies=caller_bundle, **tls_settings(tmp_path / "tls", pki)
    ) as running:

        def ask(pair: Pair, request: dict[str, Any]) -> tuple[StepDecision, dict[str, Any]]:
            decision = _ask(tls_client(tmp_path, running, pki.domain.pem, pair), request)
            event = _last_event(running)
            assert event["id"] == decision.decision_id
            return decision, event

        worker = pki.domain.issue(spiffe=WORKER_ID)
        decision, event = ask(worker, _run())
        assert decision.allowed, decision.reason
        assert decision.determining_policies == ("the-etl-worker-runs-jobs",)
        assert event["context"]["caller"] == WORKER_ID

        # The principal in the request does not matter to this policy; the certificate does.
        other = pki.domain.issue(spiffe=f"{TRUST_DOMAIN}/ns/etl/sa/intruder")
        decision, event = ask(other, _run(principal=WORKER_ID))
        assert not decision.allowed
        assert decision.reason == "denied: no policy permits this request"
        assert event["context"]["caller"] == f"{TRUST_DOMAIN}/ns/etl/sa/intruder"

        # No SPIFFE ID: the certificate's subject is the caller.
        legacy = pki.domain.issue(subject="legacy-batch")
        decision, event = ask(legacy, _run())
        assert decision.allowed, decision.reason
        assert decision.determining_policies == ("the-legacy-batch-host-runs-jobs",)
        assert "CN=legacy-batch" in event["caller"]["identity"]
        assert "O=Example" in event["caller"]["identity"]
        assert event["context"]["caller"] == event["caller"]["identity"]

        # An action whose context does not declare `caller` is decided without it.
        decision, event = ask(worker, _run(action="legacy"))
        assert decision.allowed, decision.reason
        assert "caller" not in event["context"]
        assert event["caller"]["identity"] == WORKER_ID

        # Over the plaintext socket there is no caller, so the policy does not permit.
        with StepguardClient(f"unix://{running.socket}", timeout=5) as plain:
            decision = plain.authorize(_run())
        assert not decision.allowed
        assert "caller" not in _last_event(running)["context"]


def test_server_only_tls_encrypts_without_identity(tmp_path: Path, pki: Pki) -> None:
    with running_sidecar(tmp_path / "srv", **tls_settings(tmp_path, pki, mutual=False)) as running:
        decision = _ask(tls_client(tmp_path, running, pki.domain.pem, None), notify_request())
        assert decision.allowed, decision.reason
        event = _last_event(running)
        assert event["caller"]["identity"] == ""
        assert "caller" not in event["context"]
        plaintext = _ask(StepguardClient(running.tcp, timeout=5), notify_request())
        assert not plaintext.allowed
        assert "UNAVAILABLE" in plaintext.reason


# --- workload binding ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("bound")
    with running_sidecar(
        tmp, bind_workload_identity=True, **tls_settings(tmp / "tls", pki)
    ) as running:
        yield running


def test_binding_allows_a_workload_asking_about_itself(
    bound: Running, pki: Pki, tmp_path: Path
) -> None:
    client = tls_client(tmp_path, bound, pki.domain.pem, pki.domain.issue(spiffe=NOTIFIER_ID))
    decision = _ask(client, notify_request())
    assert decision.allowed, decision.reason
    assert _last_event(bound)["caller"]["identity"] == NOTIFIER_ID


def test_binding_denies_a_principal_that_is_not_the_certificate(
    bound: Running, pki: Pki, tmp_path: Path
) -> None:
    # The notifier's certificate asking as the provisioner, for a step the
    # provisioner would be allowed: the binding refuses it, and the DENY is audited.
    client = tls_client(tmp_path, bound, pki.domain.pem, pki.domain.issue(spiffe=NOTIFIER_ID))
    request = notify_request()
    request["principal"] = PROVISIONER
    decision = _ask(client, request)
    assert not decision.allowed
    assert "workload identity binding" in decision.reason
    assert f'Workload::"{PROVISIONER["id"]}" does not match' in decision.reason
    assert f"SPIFFE ID {NOTIFIER_ID}" in decision.reason
    assert decision.determining_policies == ()
    event = _last_event(bound)
    assert event["id"] == decision.decision_id
    assert event["decision"] == "DENY"
    assert event["caller"]["identity"] == NOTIFIER_ID
    assert event["principal"] == PROVISIONER
    assert "does not match" in event["errors"][0]["message"]


def test_binding_denies_other_principal_types_and_unauthenticated_callers(
    bound: Running, pki: Pki, tmp_path: Path
) -> None:
    as_robot = notify_request()
    as_robot["principal"] = {"type": "ServiceAccount", "id": NOTIFIER_ID}
    client = tls_client(tmp_path, bound, pki.domain.pem, pki.domain.issue(spiffe=NOTIFIER_ID))
    decision = _ask(client, as_robot)
    assert not decision.allowed
    assert "is not a Workload" in decision.reason

    no_spiffe = tls_client(tmp_path, bound, pki.domain.pem, pki.domain.issue(subject="legacy"))
    decision = _ask(no_spiffe, notify_request())
    assert not decision.allowed
    assert "has no SPIFFE ID" in decision.reason

    with StepguardClient(f"unix://{bound.socket}", timeout=5) as plain:
        decision = plain.authorize(notify_request())
    assert not decision.allowed
    assert "not authenticated" in decision.reason
    assert _last_event(bound)["decision"] == "DENY"


def test_a_cached_allow_is_never_served_to_another_workload(
    bound: Running, pki: Pki, tmp_path: Path
) -> None:
    """The decision cache keys on the caller: identical bytes from another certificate
    are decided (and refused) for that caller, not answered from the owner's ALLOW."""
    request = notify_request()
    request["context"]["run_id"] = "cache-probe"
    owner = pki.domain.issue(spiffe=NOTIFIER_ID)
    first = _ask(tls_client(tmp_path, bound, pki.domain.pem, owner), request)
    again = _ask(tls_client(tmp_path, bound, pki.domain.pem, owner), request)
    assert first.allowed and again.allowed
    assert _last_event(bound)["cached"] is True
    intruder = pki.domain.issue(spiffe=f"{TRUST_DOMAIN}/ns/comms/sa/intruder")
    stolen = _ask(tls_client(tmp_path, bound, pki.domain.pem, intruder), request)
    assert not stolen.allowed
    assert "does not match the caller's certificate SPIFFE ID" in stolen.reason
    assert _last_event(bound)["caller"]["identity"] == f"{TRUST_DOMAIN}/ns/comms/sa/intruder"


def test_binding_applies_to_every_batch_item(bound: Running, pki: Pki, tmp_path: Path) -> None:
    client = tls_client(tmp_path, bound, pki.domain.pem, pki.domain.issue(spiffe=NOTIFIER_ID))
    other = notify_request()
    other["principal"] = PROVISIONER
    with client:
        own, foreign = client.authorize_batch([notify_request(), other])
    assert own.allowed, own.reason
    assert not foreign.allowed
    assert "does not match" in foreign.reason


# --- rotation -----------------------------------------------------------------------------


def _write_in_place(path: Path, data: bytes) -> None:
    """Rewrite a file the non-atomic way (truncate, write), as simple rotators do."""
    with path.open("wb") as f:
        f.write(data)


def test_certificates_rotate_under_load_without_a_failed_call(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.serving.tls")
    tls_dir = tmp_path / "tls"
    settings = tls_settings(tls_dir, pki)
    rotated_ca = Authority("example.org trust domain, next")  # signs the new server cert
    new_client_ca = Authority("example.org workloads, next")
    new_server = rotated_ca.issue(server=True)
    roots = pki.domain.pem + rotated_ca.pem  # clients trust the old and the next CA
    svid = pki.domain.issue(spiffe=NOTIFIER_ID)

    with running_sidecar(tmp_path / "srv", threads=8, **settings) as running:
        reloader = running.sidecar.tls
        assert reloader is not None and reloader.generation == 1
        creds = channel_credentials(*_files(tmp_path / "svid", roots, svid))
        request = request_from_json(notify_request())
        stop = threading.Event()
        lock = threading.Lock()
        calls: list[int] = []
        failures: list[str] = []

        def load(index: int, fresh_connections: bool) -> None:
            done = 0
            # A private subchannel pool: each channel makes its own connection,
            # so on a fresh channel every call is a new TLS handshake.
            options = [("grpc.use_local_subchannel_pool", 1)]
            channel = grpc.secure_channel(running.tcp, creds, options=options)
            stub = pb_grpc.AuthorizerStub(channel)
            try:
                while not stop.is_set():
                    if fresh_connections and done:
                        channel.close()
                        channel = grpc.secure_channel(running.tcp, creds, options=options)
                        stub = pb_grpc.AuthorizerStub(channel)
                    try:
                        resp = stub.Authorize(request, timeout=10)
                        if resp.decision != pb.DECISION_ALLOW:
                            raise AssertionError(resp.reason)
                    except Exception as exc:
                        with lock:
                            failures.append(f"thread {index}: {type(exc).__name__}: {exc}")
                    done += 1
                    with lock:
                        calls[index] = done
            finally:
                channel.close()

        threads = []
        for i, fresh in enumerate([False, False, True, True]):
            calls.append(0)
            threads.append(threading.Thread(target=load, args=(i, fresh), daemon=True))
        for t in threads:
            t.start()

        def wait_for(condition: Any, what: str) -> None:
            deadline = time.monotonic() + 60
            while not condition():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.02)

        wait_for(lambda: min(calls) >= 20, "load before the rotation")
        before_rotation = list(calls)
        # SPIRE-style rotation in place: the client CA bundle, then the
        # certificate, then (a moment later) its key. In between, the files
        # on disk are a certificate with the wrong key.
        _write_in_place(settings["tls_client_ca"], pki.domain.pem + new_client_ca.pem)
        _write_in_place(settings["tls_cert"], new_server.cert)
        wait_for(
            lambda: all(c >= b + 10 for c, b in zip(calls, before_rotation, strict=True)),
            "calls during the half rotation",
        )
        # Handshakes happened meanwhile, and the mismatched pair was not taken.
        assert any("not a usable pair" in r.getMessage() for r in caplog.records)
        assert reloader.material.cert == pki.server.cert
        _write_in_place(settings["tls_key"], new_server.key)
        wait_for(lambda: reloader.material.cert == new_server.cert, "the reload")
        after_reload = list(calls)
        wait_for(
            lambda: all(c >= a + 20 for c, a in zip(calls, after_reload, strict=True)),
            "load after the rotation",
        )
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert failures == []
        assert sum(calls) >= 4 * 50
        assert reloader.material.client_ca == pki.domain.pem + new_client_ca.pem

        # New connections now get the new certificate: a client that trusts only
        # the new CA gets in, one that trusts only the old CA does not.
        only_new = tls_client(tmp_path, running, rotated_ca.pem, svid)
        assert _ask(only_new, notify_request()).allowed
        only_old = _ask(tls_client(tmp_path, running, pki.domain.pem, svid), notify_request())
        assert not only_old.allowed and "UNAVAILABLE" in only_old.reason
        # ...and the new client CA is trusted.
        from_new_ca = new_client_ca.issue(spiffe=NOTIFIER_ID)
        assert _ask(
            tls_client(tmp_path, running, rotated_ca.pem, from_new_ca), notify_request()
        ).allowed


def _files(directory: Path, roots: bytes, pair: Pair) -> tuple[Path, Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "roots.pem").write_bytes(roots)
    cert, key = pair.write(directory, "svid")
    return directory / "roots.pem", cert, key


# --- the reloader, directly ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reloader_keeps_the_old_set_until_the_files_agree(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.server.write(tmp_path, "server")
    clock = FakeClock()
    reloader = CertificateReloader(TlsFiles(cert, key), clock=clock)
    assert reloader.fetch() is None  # nothing changed
    fresh = pki.domain.issue(server=True)
    cert.write_bytes(fresh.cert)
    assert reloader.fetch() is None  # new certificate, old key: not a usable pair
    key.unlink()
    assert reloader.fetch() is None  # key missing mid-rotation
    key.write_bytes(fresh.key)
    assert isinstance(reloader.fetch(), grpc.ServerCertificateConfiguration)
    assert reloader.material.cert == fresh.cert and reloader.generation == 2
    assert reloader.fetch() is None


def test_reloader_rechecks_content_when_stat_cannot_tell(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.server.write(tmp_path, "server")
    clock = FakeClock()
    reloader = CertificateReloader(TlsFiles(cert, key), recheck_s=10, clock=clock)
    # Same sizes and modification times: only the content differs. (ECDSA
    # signatures vary in length, so issue until the sizes match.)
    fresh = next(
        pair
        for pair in (pki.domain.issue(server=True) for _ in range(200))
        if len(pair.cert) == len(pki.server.cert) and len(pair.key) == len(pki.server.key)
    )
    for path, data in ((cert, fresh.cert), (key, fresh.key)):
        st = path.stat()
        _write_in_place(path, data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert reloader.fetch() is None  # stat unchanged and checked recently
    clock.now = 11
    assert reloader.fetch() is not None
    assert reloader.material.cert == fresh.cert


def test_reloader_follows_a_secret_volume_symlink_swap(tmp_path: Path, pki: Pki) -> None:
    # Kubernetes updates a Secret volume by pointing `..data` at a new directory.
    old = tmp_path / "..2026_11_25_10_00_00.1"
    pki.server.write(old, "tls")
    (tmp_path / "..data").symlink_to(old.name)
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    reloader = CertificateReloader(TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key"))
    fresh = pki.domain.issue(server=True)
    new = tmp_path / "..2026_11_25_11_00_00.2"
    fresh.write(new, "tls")
    (tmp_path / "..data_tmp").symlink_to(new.name)
    (tmp_path / "..data_tmp").rename(tmp_path / "..data")
    shutil.rmtree(old)
    assert reloader.fetch() is not None
    assert reloader.material.cert == fresh.cert


def test_unusable_files_fail_startup_naming_the_file(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.server.write(tmp_path, "server")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(pki.domain.issue(server=True).key)
    with pytest.raises(ConfigError, match="not a usable pair"):
        read_material(TlsFiles(cert, other_key))
    with pytest.raises(ConfigError, match=r"cannot read TLS client CA .*missing\.pem"):
        read_material(TlsFiles(cert, key, tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="holds no PEM block"):
        read_material(TlsFiles(cert, key, tmp_path / "junk.pem"))
    policies = Path(__file__).resolve().parents[2] / "policies"
    with pytest.raises(ConfigError, match="not a usable pair"):
        from sidecar.serving.server import Sidecar

        Sidecar(Settings(policies=policies, tls_cert=cert, tls_key=other_key, audit_file="-"))


# --- settings and flags -------------------------------------------------------------------


def test_tls_settings_must_make_sense(tmp_path: Path) -> None:
    p = tmp_path / "x.pem"
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        Settings(tls_cert=p)
    with pytest.raises(ConfigError, match="needs --tls-cert and --tls-key"):
        Settings(tls_client_ca=p)
    with pytest.raises(ConfigError, match="TCP listener"):
        Settings(listen=None, socket=tmp_path / "s.sock", tls_cert=p, tls_key=p)
    with pytest.raises(ConfigError, match="--bind-workload-identity"):
        Settings(tls_cert=p, tls_key=p, bind_workload_identity=True)


def test_tls_flags_env_and_file(tmp_path: Path) -> None:
    args = _parser().parse_args(
        [
            "serve",
            "--tls-cert",
            "/tls/tls.crt",
            "--tls-key",
            "/tls/tls.key",
            "--tls-client-ca",
            "/tls/ca.crt",
            "--bind-workload-identity",
        ]
    )
    flags = {k: v for k, v in vars(args).items() if k not in ("run", "config", "log_level")}
    settings = build_settings(flags, {})
    assert settings.tls_cert == Path("/tls/tls.crt")
    assert settings.tls_key == Path("/tls/tls.key")
    assert settings.tls_client_ca == Path("/tls/ca.crt")
    assert settings.bind_workload_identity is True

    unset = _parser().parse_args(["serve"])
    assert unset.bind_workload_identity is None  # absent flag: env and file still apply
    env = {
        "STEPGUARD_TLS_CERT": "/a.crt",
        "STEPGUARD_TLS_KEY": "/a.key",
        "STEPGUARD_TLS_CLIENT_CA": "/ca.crt",
        "STEPGUARD_BIND_WORKLOAD_IDENTITY": "true",
    }
    assert build_settings({}, env).bind_workload_identity is True
    config = tmp_path / "stepguard.yaml"
    config.write_text(
        "tls-cert: /a.crt\ntls-key: /a.key\ntls-client-ca: /ca.crt\nbind-workload-identity: yes\n"
    )
    from_file = build_settings({}, {}, config)
    assert from_file.bind_workload_identity is True
    assert from_file.tls_client_ca == Path("/ca.crt")
    with pytest.raises(ConfigError, match="not a boolean"):
        build_settings({}, {**env, "STEPGUARD_BIND_WORKLOAD_IDENTITY": "maybe"})


# --- identity rules -----------------------------------------------------------------------


def test_caller_identity_comes_from_the_peer_certificate_only(pki: Pki) -> None:
    """gRPC's own readings (peer_spiffe_id, x509_subject) are not used: only the certificate."""
    assert caller_identity(None) == ""
    assert caller_identity({"transport_security_type": [b"insecure"]}) == ""
    assert caller_identity({"peer_spiffe_id": [WORKER_ID.encode()]}) == ""
    pem = pki.domain.issue(spiffe=WORKER_ID).cert
    assert caller_identity({"x509_pem_cert": [pem], "peer_spiffe_id": [b"spiffe://x/y"]}) == (
        WORKER_ID
    )
    legacy = pki.domain.issue(subject="legacy").cert
    assert caller_identity({"x509_pem_cert": [legacy]}) == "CN=legacy,O=Example"


def test_binding_rule() -> None:
    me = EntityUid("Workload", WORKER_ID)
    assert binding_refusal(me, WORKER_ID) is None
    assert binding_refusal(EntityUid("Ns::Workload", WORKER_ID), WORKER_ID) is None
    refusal = binding_refusal(EntityUid("Workload", NOTIFIER_ID), WORKER_ID)
    assert refusal is not None and "does not match" in refusal
    # A prefix or a case variant of the caller's id is another workload.
    assert binding_refusal(EntityUid("Workload", WORKER_ID + "/x"), WORKER_ID) is not None
    assert binding_refusal(EntityUid("Workload", WORKER_ID.upper()), WORKER_ID) is not None
    assert binding_refusal(EntityUid("ServiceAccount", WORKER_ID), WORKER_ID) is not None
    assert binding_refusal(me, "CN=spiffe://example.org/ns/etl/sa/worker") is not None
    assert binding_refusal(me, "") is not None


def test_caller_is_added_only_where_the_schema_declares_it(caller_bundle: Path) -> None:
    import cedarpy

    bundle = load_bundle(caller_bundle)
    assert actions_declaring_caller(bundle.schema, bundle.actions) == {EntityUid("Action", "run")}
    schema = cedarpy.Schema.from_str(
        """namespace N {
          entity W;
          action "required" appliesTo { principal: W, resource: W, context: { caller: String } };
          action "optional" appliesTo { principal: W, resource: W, context: { caller?: String } };
          action "long" appliesTo { principal: W, resource: W, context: { caller: Long } };
          action "absent" appliesTo { principal: W, resource: W, context: {} };
          action "group";
        }"""
    )
    names = ["required", "optional", "long", "absent", "group"]
    found = actions_declaring_caller(schema, [EntityUid("N::Action", n) for n in names])
    assert {a.id for a in found} == {"required", "optional"}
    examples = load_bundle(Path(__file__).resolve().parents[2] / "policies")
    assert actions_declaring_caller(examples.schema, examples.actions) == {
        a for a in examples.actions if a.id not in ("identity-change", "deprovision", "read-only")
    }
