"""The AuthZEN listener under a flood of idle and slow connections (issue 16, point 11).

A real sidecar on loopback; the flood is a bounded number of real TCP
connections, opened and fed by one thread that stops by itself. While it
runs, legitimate evaluations (each on a new connection, with a generous
client timeout) and gRPC calls must keep being answered.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import StepguardClient
from sidecar.core.errors import ConfigError
from sidecar.serving.config import Settings, build_settings
from tests.helpers import NOTIFIER, Running, notify_request, running_sidecar
from tests.pki import make_pki, tls_settings

NOTIFY = {
    "subject": {"type": "Workload", "id": NOTIFIER["id"]},
    "action": {"name": "notify"},
    "resource": {"type": "TargetSystem", "id": "slack"},
    "context": {"workflow_id": "onboarding", "run_id": "r1", "step_id": "notify"},
}
# Short deadlines so the test is quick; few workers so the old server starves at once.
BOUNDS: dict[str, Any] = {
    "threads": 4,
    "authzen_max_connections": 400,
    "authzen_header_timeout_s": 1.0,
    "authzen_body_timeout_s": 1.0,
    "authzen_idle_timeout_s": 3.0,
}
DEADLINE_S = 10.0  # what a legitimate caller waits for an answer (generous)
FLOOD_S = 30.0  # the flood stops by itself after this, whatever happens


def _address(running: Running) -> tuple[str, int]:
    host, port = str(running.sidecar.endpoints.authzen).rsplit(":", 1)
    return host, int(port)


class Flood:
    """Idle connections (connect, send nothing) and slow ones (a header byte at a time).

    One thread; loopback only; at most `idle + slow` sockets open at once;
    it ends after `FLOOD_S` or at `stop()`, closing everything it opened.
    `cut` counts slow connections the server closed.
    """

    def __init__(self, address: tuple[str, int], *, idle: int, slow: int) -> None:
        assert address[0] in ("127.0.0.1", "localhost")
        self.address = address
        self.idle, self.slow = idle, slow
        self.cut = 0
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        assert self.opened.wait(FLOOD_S)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(FLOOD_S)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=5)
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        end = time.monotonic() + FLOOD_S
        idle = [self._connect() for _ in range(self.idle)]
        slow = [self._connect() for _ in range(self.slow)]
        self.opened.set()
        header = b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096
        sent = 0
        try:
            while not self._stop.wait(0.05) and time.monotonic() < end:
                byte = header[sent % len(header) : sent % len(header) + 1]
                sent += 1
                for i, sock in enumerate(slow):
                    try:
                        sock.send(byte)
                        if sock.recv(1024, socket.MSG_PEEK) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        continue
                    except OSError:  # closed by the server: count it, come back as another
                        self.cut += 1
                        sock.close()
                        slow[i] = self._connect()
        finally:
            for sock in idle + slow:
                sock.close()


def _evaluate(address: tuple[str, int], body: Any = NOTIFY) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*address, timeout=DEADLINE_S)
    try:
        conn.request(
            "POST", "/access/v1/evaluation", json.dumps(body), {"Content-Type": "application/json"}
        )
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def _refused(running: Running, reason: str) -> float:
    value = running.sidecar.metrics.registry.get_sample_value(
        "stepguard_authzen_connections_refused_total", {"reason": reason}
    )
    return value or 0.0


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Running]:
    with running_sidecar(tmp_path, authzen_listen="127.0.0.1:0", **BOUNDS) as running:
        yield running


def test_evaluations_keep_answering_through_idle_and_slow_connections(guarded: Running) -> None:
    address = _address(guarded)
    answers: list[tuple[int, Any]] = []
    with (
        Flood(address, idle=300, slow=40) as flood,
        StepguardClient(guarded.tcp, timeout=DEADLINE_S) as client,
    ):
        for _ in range(30):
            answers.append(_evaluate(address))
            assert client.authorize(notify_request()).allowed  # gRPC: unaffected
        waited_until = time.monotonic() + FLOOD_S
        while flood.cut == 0 and time.monotonic() < waited_until:
            time.sleep(0.1)
    assert answers == [(200, {"decision": True})] * 30
    # The slow senders were closed by their header deadline, and counted.
    assert flood.cut > 0
    assert _refused(guarded, "header_timeout") > 0


def test_a_slow_body_is_cut_and_never_decided(guarded: Running) -> None:
    address = _address(guarded)
    before = len(guarded.audit_events())
    body = json.dumps(NOTIFY).encode()
    with socket.create_connection(address, timeout=DEADLINE_S) as sock:
        sock.sendall(
            b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (len(body) + 10)
            + body
        )
        # The body never completes: the server gives up on it and closes.
        with pytest.raises((TimeoutError, ConnectionError)):
            while True:
                if sock.recv(4096) == b"":
                    raise ConnectionResetError
    assert _refused(guarded, "body_timeout") >= 1
    assert len(guarded.audit_events()) == before  # no decision on part of a body
    assert _evaluate(address) == (200, {"decision": True})


def test_connections_over_the_limit_get_503_and_retry_after(tmp_path: Path) -> None:
    with running_sidecar(
        tmp_path, authzen_listen="127.0.0.1:0", **{**BOUNDS, "authzen_max_connections": 8}
    ) as running:
        address = _address(running)
        held = [socket.create_connection(address, timeout=DEADLINE_S) for _ in range(8)]
        try:
            conn = http.client.HTTPConnection(*address, timeout=DEADLINE_S)
            conn.request("GET", "/.well-known/authzen-configuration")
            reply = conn.getresponse()
            assert reply.status == 503
            assert reply.getheader("Retry-After") == "1"
            assert b"too many connections" in reply.read()
            conn.close()
            assert _refused(running, "max_connections") >= 1
        finally:
            for sock in held:
                sock.close()
        # Once the held connections are gone, callers are served again.
        for _ in range(100):
            try:
                if _evaluate(address) == (200, {"decision": True}):
                    break
            except (http.client.HTTPException, OSError, ValueError):  # 503 until they are reaped
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the listener never served again after the held connections closed")


@contextmanager
def _stalled_handshakes(address: tuple[str, int], n: int) -> Iterator[None]:
    """Connections that start a TLS handshake (5 bytes of a record header) and stall."""
    socks = [socket.create_connection(address, timeout=5) for _ in range(n)]
    try:
        for sock in socks:
            sock.sendall(b"\x16\x03\x01\x02\x00")
        yield
    finally:
        for sock in socks:
            sock.close()


def test_a_stalled_tls_handshake_does_not_hold_up_new_connections(tmp_path: Path) -> None:
    pki = make_pki()
    settings = tls_settings(tmp_path / "tls", pki)
    with running_sidecar(tmp_path, authzen_listen="127.0.0.1:0", **settings) as running:
        address = _address(running)
        roots = tmp_path / "roots.pem"
        roots.write_bytes(pki.domain.pem)
        context = ssl.create_default_context(cafile=str(roots))
        context.load_cert_chain(*pki.domain.issue(spiffe=NOTIFIER["id"]).write(tmp_path, "c"))
        with _stalled_handshakes(address, 6):
            for _ in range(3):
                conn = http.client.HTTPSConnection(*address, context=context, timeout=DEADLINE_S)
                conn.request(
                    "POST",
                    "/access/v1/evaluation",
                    json.dumps(NOTIFY),
                    {"Content-Type": "application/json"},
                )
                reply = conn.getresponse()
                assert (reply.status, json.loads(reply.read())) == (200, {"decision": True})
                conn.close()


def test_connection_settings_are_typed_and_checked(tmp_path: Path) -> None:
    env = {
        "STEPGUARD_AUTHZEN_MAX_CONNECTIONS": "64",
        "STEPGUARD_AUTHZEN_HEADER_TIMEOUT_S": "2.5",
        "STEPGUARD_AUTHZEN_BODY_TIMEOUT_S": "4",
        "STEPGUARD_AUTHZEN_IDLE_TIMEOUT_S": "30",
    }
    limits = build_settings({}, env).authzen_http
    assert (limits.max_connections, limits.header_timeout_s) == (64, 2.5)
    assert (limits.body_timeout_s, limits.idle_timeout_s) == (4.0, 30.0)
    config = tmp_path / "stepguard.yaml"
    config.write_text("authzen-max-connections: 7\n")
    assert build_settings({}, {}, config).authzen_max_connections == 7
    with pytest.raises(ConfigError, match="authzen_max_connections"):
        Settings(authzen_max_connections=0)
    with pytest.raises(ConfigError, match="authzen_header_timeout_s"):
        Settings(authzen_header_timeout_s=0)
    with pytest.raises(ConfigError, match="authzen_idle_timeout_s"):
        Settings(authzen_idle_timeout_s=-1)


def test_a_connection_that_never_sends_is_closed_at_the_header_deadline(guarded: Running) -> None:
    """Idle before its first request, a connection holds a slot only for the header deadline."""
    with socket.create_connection(_address(guarded), timeout=DEADLINE_S) as sock:
        assert sock.recv(1) == b""  # closed by the server, not by this timeout
    assert _refused(guarded, "header_timeout") >= 1
