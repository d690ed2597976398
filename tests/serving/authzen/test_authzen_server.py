"""The AuthZEN listener in the sidecar's life: settings, `stepguard serve`, audit, shutdown."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit.sink import MemorySink
from sidecar.core.errors import ConfigError
from sidecar.serving.config import Settings, build_settings
from sidecar.serving.server import Sidecar
from tests.helpers import running_sidecar, serve_process
from tests.serving.authzen.authzen_client import CERT, Pdp, decisions, serving

ALICE_READS = {
    "subject": {"type": "user", "id": "alice"},
    "action": {"name": "read"},
    "resource": {"type": "record", "id": "record-1"},
}


def test_authzen_is_off_unless_asked(tmp_path: Path) -> None:
    assert Settings().authzen_listen is None
    with running_sidecar(tmp_path) as run:
        assert run.sidecar.endpoints.authzen is None


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.2:8080", "[::1]:0", "localhost:0"])
def test_loopback_addresses_are_accepted(listen: str) -> None:
    assert Settings(authzen_listen=listen).authzen_listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "10.0.0.5:8080", "[::]:8080", "pdp.example:80"])
def test_other_addresses_are_refused_until_there_is_tls(listen: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        Settings(authzen_listen=listen)


def test_the_setting_comes_from_flags_env_and_file(tmp_path: Path) -> None:
    config = tmp_path / "stepguard.yaml"
    config.write_text("authzen-listen: 127.0.0.1:8181\n")
    assert build_settings({}, {}, config).authzen_listen == "127.0.0.1:8181"
    env = {"STEPGUARD_AUTHZEN_LISTEN": "127.0.0.1:8282"}
    assert build_settings({}, env, config).authzen_listen == "127.0.0.1:8282"
    flags = {"authzen_listen": "off"}
    assert build_settings(flags, env, config).authzen_listen is None
    with pytest.raises(ConfigError, match="authzen_listen"):
        build_settings({"authzen_listen": "8080"})


def test_stepguard_serve_answers_authzen_and_audits_it(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    args = (
        *("--policies", str(CERT), "--listen", "127.0.0.1:0", "--metrics-listen", "off"),
        *("--audit-file", str(audit), "--authzen-listen", "127.0.0.1:0"),
        *("--workers", "1"),  # reads audit.jsonl: one trail
    )
    with serve_process(*args) as server:
        assert server.serving["authzen"].startswith("127.0.0.1:"), server.serving
        pdp = Pdp(server.serving["authzen"])
        answer = pdp.evaluation({**ALICE_READS, "options": {"stepguard_explain": True}}).json()
        pdp.close()
        assert server.terminate() == 0
    assert answer["decision"] is True
    events = [json.loads(line) for line in audit.read_text().splitlines() if line]
    (event,) = [e for e in events if e.get("id") == answer["context"]["decision_id"]]
    assert event["decision"] == "ALLOW" and event["principal"] == ALICE_READS["subject"]
    assert event["caller"]["peer"].startswith("ipv4:127.0.0.1:")


def test_bad_requests_are_counted_by_field(tmp_path: Path) -> None:
    with serving(tmp_path, CERT) as (run, pdp):
        registry = run.sidecar.metrics.registry

        def count(field: str, api: str = "authzen") -> float:
            labels = {"api": api, "field": field}
            return registry.get_sample_value("stepguard_invalid_requests_total", labels) or 0.0

        before = count("subject")
        assert pdp.evaluation({"action": {"name": "read"}}).status == 400
        body = {**ALICE_READS, "evaluations": [{"subject": "x"}]}
        assert pdp.evaluations(body).json()["evaluations"][0]["decision"] is False
        assert count("subject") == before + 1
        assert count("evaluations") >= 1
        assert pdp.post("/access/v1/evaluation", raw=b"{").status == 400
        assert count("request") >= 1
        # Counted under the API that refused them, never under gRPC's.
        assert count("subject", api="grpc") == count("evaluations", api="grpc") == 0


def test_trace_ids_reach_the_audit_event(tmp_path: Path) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with serving(tmp_path, CERT) as (run, pdp):
        headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
        assert pdp.evaluation(ALICE_READS, headers=headers).json() == {"decision": True}
        assert decisions(run)[-1]["trace_id"] == trace
        answer = pdp.evaluation(ALICE_READS, headers={"X-Request-ID": "req-1"})
        assert answer.headers["x-request-id"] == "req-1"
        assert decisions(run)[-1]["request_id"] == "req-1"
        for malformed in ("y" * 200, "caf\u00e9"):  # too long; not ASCII
            pdp.evaluation(ALICE_READS, headers={"X-Request-ID": malformed})
            assert "request_id" not in decisions(run)[-1]


@contextmanager
def _sidecar_with(sink: MemorySink, tmp_path: Path) -> Iterator[Sidecar]:
    with running_sidecar(
        tmp_path, policies=CERT, sink=sink, authzen_listen="127.0.0.1:0", grace_s=5.0
    ) as run:
        yield run.sidecar


def test_without_an_audit_trail_every_answer_is_a_deny(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.fail_with = "disk full"
    with _sidecar_with(sink, tmp_path) as sidecar:
        assert sidecar.endpoints.authzen is not None
        pdp = Pdp(sidecar.endpoints.authzen)
        single = pdp.evaluation({**ALICE_READS, "options": {"stepguard_explain": True}}).json()
        batch = pdp.evaluations({**ALICE_READS, "evaluations": [{}, {}]}).json()
        search = pdp.search(
            "action", {"subject": ALICE_READS["subject"], "resource": ALICE_READS["resource"]}
        )
        pdp.close()
    assert single["decision"] is False
    assert "audit trail unavailable" in single["context"]["reason"]
    assert batch == {"evaluations": [{"decision": False}, {"decision": False}]}
    assert search.json() == {"results": []}  # nothing unaudited is listed as permitted
    assert sink.events == []


class _GateSink(MemorySink):
    """Holds the first write until the test opens the gate: an in-flight request."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.closed_after: list[int] = []

    def write(self, event: Mapping[str, Any]) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        super().write(event)

    def close(self) -> None:
        self.closed_after.append(len(self.events))
        super().close()


def _refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except OSError:
        return True


def test_shutdown_stops_accepting_drains_in_flight_then_closes_the_trail(tmp_path: Path) -> None:
    sink = _GateSink()
    settings = Settings(
        policies=CERT,
        listen="127.0.0.1:0",
        metrics_listen=None,
        authzen_listen="127.0.0.1:0",
        audit_file=str(tmp_path / "unused.jsonl"),
    )
    sidecar = Sidecar(settings, sink=sink)
    address = sidecar.start().authzen
    assert address is not None
    answers: list[Any] = []
    pdp = Pdp(address)
    request = threading.Thread(target=lambda: answers.append(pdp.evaluation(ALICE_READS)))
    request.start()
    assert sink.entered.wait(30)
    stopper = threading.Thread(target=sidecar.stop, kwargs={"grace": 20.0})
    stopper.start()
    try:
        for _ in range(200):  # bounded: stop() closes the listener before draining
            if _refused(address):
                break
            threading.Event().wait(0.05)
        assert _refused(address), "still accepting connections while draining"
        assert stopper.is_alive() and not sink.closed_after  # draining: the trail stays open
    finally:
        sink.gate.set()
        request.join(30)
        stopper.join(30)
        pdp.close()
    assert not stopper.is_alive()
    (reply,) = answers
    assert reply.status == 200 and reply.json() == {"decision": True}
    assert sink.closed_after == [1]  # closed once, after the in-flight decision was recorded


def _crowd(directory: Path, size: int) -> list[str]:
    """A bundle of `size` users, every third of whom may view the doc; their ids, in order."""
    directory.mkdir()
    (directory / "s.cedarschema").write_text(
        "entity user = { ok: Bool };\nentity doc;\n"
        "action view appliesTo { principal: user, resource: doc };\n"
    )
    (directory / "p.cedar").write_text(
        'permit (principal, action == Action::"view", resource) when { principal.ok };\n'
    )
    users = [f"u{i:03d}" for i in range(size)]
    entities = [
        {"uid": {"type": "user", "id": u}, "attrs": {"ok": i % 3 == 0}, "parents": []}
        for i, u in enumerate(users)
    ]
    entities.append({"uid": {"type": "doc", "id": "d"}, "attrs": {}, "parents": []})
    (directory / "entities.json").write_text(json.dumps(entities))
    return [u for i, u in enumerate(users) if i % 3 == 0]


@pytest.mark.parametrize("limit", [None, 2])
def test_search_pages_under_the_evaluation_budget(tmp_path: Path, limit: int | None) -> None:
    """Each call evaluates at most max_batch_items candidates; the walk sees each once."""
    from sidecar.core.validate import Limits

    permitted = _crowd(tmp_path / "crowd", 25)
    body: dict[str, Any] = {
        "subject": {"type": "user"},
        "action": {"name": "view"},
        "resource": {"type": "doc", "id": "d"},
    }
    if limit is not None:
        body["page"] = {"limit": limit}
    with serving(tmp_path, tmp_path / "crowd", limits=Limits(max_batch_items=4)) as (run, pdp):
        before = len(decisions(run))
        seen: list[str] = []
        for _ in range(50):
            reply = pdp.search("subject", body)
            assert reply.status == 200, reply.text
            answer = reply.json()
            seen += [r["id"] for r in answer["results"]]
            page = answer["page"]
            assert page["count"] == len(answer["results"]) <= (limit if limit is not None else 4)
            if not page["next_token"]:
                break
            body["page"] = {**body.get("page", {}), "token": page["next_token"]}
        evaluated = len(decisions(run)) - before
    assert seen == permitted
    assert evaluated == 25  # every candidate decided exactly once over the whole walk


def test_a_zero_limit_is_refused_rather_than_looping(tmp_path: Path) -> None:
    """`page.limit: 0` once answered an empty page whose `next_token` never advanced."""
    _crowd(tmp_path / "crowd", 5)
    body = {
        "subject": {"type": "user"},
        "action": {"name": "view"},
        "resource": {"type": "doc", "id": "d"},
        "page": {"limit": 0},
    }
    with serving(tmp_path, tmp_path / "crowd") as (run, pdp):
        before = len(decisions(run))
        reply = pdp.search("subject", body)
        assert len(decisions(run)) == before
    assert reply.status == 400 and reply.text.startswith("page.limit: must be a positive")


@pytest.mark.parametrize("content_type", ["text/plain", "application/json"])
def test_a_refused_chunked_body_does_not_poison_the_connection(
    tmp_path: Path, content_type: str
) -> None:
    """Keep-alive survives a 400 or 404 whatever the body's framing."""
    import http.client

    with serving(tmp_path, CERT) as (_, pdp):
        host, port = pdp.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            chunks = iter([b'{"subject": {"type": "user", "id": "alice"}, ', b'"x": 1}'])
            headers = {"Content-Type": content_type, "Transfer-Encoding": "chunked"}
            for path in ("/access/v1/evaluation", "/nowhere"):
                conn.request("POST", path, body=chunks, headers=headers, encode_chunked=True)
                first = conn.getresponse()
                first.read()
                assert first.status in (400, 404)
                json_type = {"Content-Type": "application/json"}
                conn.request("POST", "/access/v1/evaluation", json.dumps(ALICE_READS), json_type)
                second = conn.getresponse()
                assert (second.status, json.loads(second.read())) == (200, {"decision": True})
                chunks = iter([b"{}"])
        finally:
            conn.close()


@pytest.mark.parametrize(
    "host", ["evil.example/phish?", "a b", "user@evil.example", "evil.example:80/x", ""]
)
def test_metadata_never_echoes_a_host_that_is_not_host_port(tmp_path: Path, host: str) -> None:
    """The metadata's URLs are followed by PEPs: a Host with a path, userinfo or spaces
    is not copied into them; the listener's own address is used instead."""
    with serving(tmp_path, CERT) as (_, pdp):
        reply = pdp.get("/.well-known/authzen-configuration", headers={"Host": host})
        meta = reply.json()
    base = f"http://{pdp.address}"
    assert meta["policy_decision_point"] == base
    assert meta["access_evaluation_endpoint"] == f"{base}/access/v1/evaluation"


def test_metadata_keeps_a_plain_host_and_port(tmp_path: Path) -> None:
    with serving(tmp_path, CERT) as (_, pdp):
        meta = pdp.get("/.well-known/authzen-configuration", headers={"Host": "pdp.example:8443"})
    assert meta.json()["policy_decision_point"] == "http://pdp.example:8443"
