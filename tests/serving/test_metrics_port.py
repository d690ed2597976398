"""The metrics and health port under abuse, on the real sidecar and real sockets.

Issue 27 point 5: the port must keep its threads and connections bounded, cut
off requests that never finish, keep answering scrapes during a flood, and
show the policy directory and reload errors to loopback callers who ask only.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from sidecar.serving.config import split_host_port
from sidecar.serving.httpstatus import is_local_peer, start_status_server
from tests.helpers import POLICIES, running_sidecar

FLOOD = 200  # connections; over the server's cap of 64, well under the fd limit


def _http(address: str, path: str, *, source: str = "127.0.0.1") -> tuple[str, bytes]:
    """GET `path` from `source` (a local address to connect from): status line and body."""
    host, port = split_host_port(address)
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


def _json(address: str, path: str, *, source: str = "127.0.0.1") -> dict[str, Any]:
    status, body = _http(address, path, source=source)
    assert status.endswith("200 OK"), status
    out: dict[str, Any] = json.loads(body)
    return out


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _flood(stack: ExitStack, address: str, count: int) -> list[socket.socket]:
    """`count` connections: half idle, half in the middle of a request head."""
    host, port = split_host_port(address)
    socks = []
    for i in range(count):
        sock = stack.enter_context(socket.create_connection((host, port), timeout=10))
        if i % 2:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        socks.append(sock)
    return socks


def test_a_flood_of_idle_and_half_sent_connections_keeps_threads_bounded(
    tmp_path: Path,
) -> None:
    with running_sidecar(tmp_path) as running, ExitStack() as stack:
        status, _ = _http(running.metrics, "/metrics")
        assert status.endswith("200 OK")
        before = threading.active_count()
        flood = _flood(stack, running.metrics, FLOOD)
        # Answered during the flood (the server accepts in order: by the time
        # these are answered, it has seen every flooding connection).
        status, metrics = _http(running.metrics, "/metrics")
        assert status.endswith("200 OK") and b"stepguard_decisions_total" in metrics
        grown = threading.active_count() - before
        assert grown <= 2, f"{grown} threads more during a flood of {FLOOD} connections"
        assert _json(running.metrics, "/healthz")["ok"] is True
        # The server ends every flooding connection by itself: over the cap with
        # a 503, the others once their head timed out (408).
        answers = []
        for sock in flood:
            sock.settimeout(30)
            answers.append(sock.recv(4096).split(b"\r\n", 1)[0])
        assert set(answers) <= {
            b"HTTP/1.1 503 Service Unavailable",
            b"HTTP/1.1 408 Request Timeout",
        }
        assert answers.count(b"HTTP/1.1 503 Service Unavailable") >= FLOOD - 64
        assert _json(running.metrics, "/healthz")["ok"] is True


def test_a_request_head_sent_one_byte_at_a_time_is_cut_off() -> None:
    registry = CollectorRegistry()
    Counter("probe", "a metric to scrape", registry=registry).inc()
    server = start_status_server("127.0.0.1", 0, registry, lambda verbose: {}, head_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.settimeout(0.1)
            reply = b""
            for byte in b"GET /metrics HTTP/1.1\r\nHost: " + b"x" * 400:  # never ends
                try:
                    sock.send(bytes([byte]))
                    reply = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                break
            assert reply.startswith(b"HTTP/1.1 408 Request Timeout"), reply
        status, body = _http(f"127.0.0.1:{server.server_port}", "/metrics")
        assert status.endswith("200 OK") and b"probe_total 1.0" in body
    finally:
        server.shutdown()
        server.server_close()


def test_local_peer_is_exactly_loopback_one() -> None:
    assert is_local_peer("127.0.0.1") and is_local_peer("::1")
    assert is_local_peer("::ffff:127.0.0.1")
    for other in ("127.0.0.2", "10.0.0.7", "::ffff:10.0.0.7", "fe80::1", "", "localhost"):
        assert not is_local_peer(other), other


@contextmanager
def _broken_watch(tmp_path: Path) -> Iterator[Any]:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    with running_sidecar(tmp_path, policies=policies, watch=True, watch_interval_s=0.05) as running:
        target = next(iter(sorted(policies.glob("*.cedar"))))
        target.write_text(target.read_text() + "\npermit (principal, action, resource)\n")
        watcher = running.sidecar.watcher
        assert watcher is not None
        _wait_for(lambda: watcher.status().failures == 1, "the refused reload")
        yield running, policies, target.name


def test_healthz_shows_paths_and_policy_errors_only_to_loopback_callers_who_ask(
    tmp_path: Path,
) -> None:
    with _broken_watch(tmp_path) as (running, policies, broken):
        # 127.0.0.2 is a real peer address on the loopback interface; the
        # server treats only 127.0.0.1 and ::1 as local, so this is a remote caller.
        for path in ("/healthz", "/healthz?verbose=1"):
            remote = _json(running.metrics, path, source="127.0.0.2")
            text = json.dumps(remote)
            assert str(policies) not in text and broken not in text and "permit" not in text
            assert remote["ok"] is False and remote["reload"]["ok"] is False
            assert "refused" in remote["reload"]["error"]
            assert "directory" not in remote["reload"]
        terse = _json(running.metrics, "/healthz")  # local, not asked: terse too
        assert broken not in json.dumps(terse) and terse["ok"] is False
        local = _json(running.metrics, "/healthz?verbose=1")
        assert local["reload"]["directory"] == str(policies)
        assert local["reload"]["error"].startswith(broken)


def test_requests_the_port_does_not_serve_get_a_clear_status() -> None:
    registry = CollectorRegistry()
    server = start_status_server("127.0.0.1", 0, registry, lambda verbose: {"ok": True})
    address = ("127.0.0.1", server.server_port)

    def ask(raw: bytes) -> bytes:
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(raw)
            return sock.recv(4096).split(b"\r\n", 1)[0]

    try:
        assert ask(b"POST /metrics HTTP/1.1\r\n\r\n") == b"HTTP/1.1 405 Method Not Allowed"
        assert ask(b"nonsense\r\n\r\n") == b"HTTP/1.1 400 Bad Request"
        big = b"GET / HTTP/1.1\r\nX: " + b"a" * 9000
        assert ask(big) == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert ask(b"HEAD /healthz HTTP/1.1\r\n\r\n") == b"HTTP/1.1 200 OK"
    finally:
        server.shutdown()
        server.server_close()
