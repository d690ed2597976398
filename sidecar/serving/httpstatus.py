"""The metrics port: Prometheus at /metrics (and any other path), health detail at /healthz.

gRPC health answers SERVING or NOT_SERVING and nothing more; an operator who
asks why (which bundle is serving, whether the policy files on disk were
refused) reads `/healthz`, a small JSON document. It is served by the same
HTTP server as the metrics, so it adds no port.

The port is often reachable from more than the pod (the chart binds it for
the scraper), so the server is built to stay small whatever connects:

- Bounded threads. One thread accepts and reads request heads for every
  connection at once (a selector: an idle or slow connection costs a socket
  and a buffer, never a thread); a fixed pool of `workers` threads answers
  complete requests. Nothing starts a thread per connection.
- Bounded connections. At most `max_connections` are held; past that the
  oldest connection still sending its head is dropped with a 503 saying so,
  so a flood of idle connections cannot keep a scraper out.
- Bounded time. A request head must arrive whole within `head_timeout_s`
  (however slowly its bytes trickle in), else 408 and close; an answer that
  cannot be written within `write_timeout_s` is abandoned. One request per
  connection (`Connection: close`).
- No paths or policy text to strangers. `/healthz` says what is wrong (trail
  failing, policy files refused) without the policy directory or the error
  text; `/healthz?verbose=1` adds them, for a peer at 127.0.0.1 or ::1 only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

WORKERS = 2
MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 8192
# Peers that may ask for verbose health: exactly the loopback addresses a
# process in the pod uses. Other 127/8 addresses count as remote (stricter).
LOCAL_PEERS = frozenset({"127.0.0.1", "::1"})

Detail = Callable[[bool], dict[str, Any]]


def is_local_peer(host: str) -> bool:
    """Whether `host` (a peer's address) is 127.0.0.1 or ::1 (also IPv4-mapped)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address) in LOCAL_PEERS


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer: str
    deadline: float
    head: bytearray = field(default_factory=bytearray)


class StatusServer:
    """Metrics and health over HTTP/1.1 with bounded threads, connections and time."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        detail: Detail,
        *,
        workers: int = WORKERS,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self._listener = socket.create_server(
            family[0][4][:2], family=family[0][0], backlog=128, reuse_port=False
        )
        self._listener.setblocking(False)
        self.server_port: int = self._listener.getsockname()[1]
        self._registry = registry
        self._detail = detail
        self._workers = workers
        self._max = max_connections
        self._head_timeout = head_timeout_s
        self._write_timeout = write_timeout_s
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._pending: dict[socket.socket, _Conn] = {}  # reading their head, oldest first
        self._ready: queue.Queue[_Conn | None] = queue.Queue()
        self._answering = 0  # handed to the workers, not yet closed (under _lock)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        loop = threading.Thread(target=self._serve, name="stepguard-metrics", daemon=True)
        self._threads.append(loop)
        for i in range(self._workers):
            name = f"stepguard-metrics-{i}"
            self._threads.append(threading.Thread(target=self._work, name=name, daemon=True))
        for thread in self._threads:
            thread.start()

    def shutdown(self) -> None:
        """Stop serving and wait for the threads; safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake_w.send(b"x")
        for _ in range(self._workers):
            self._ready.put(None)
        for thread in self._threads:
            thread.join(timeout=self._write_timeout + 1)

    def server_close(self) -> None:
        for conn in list(self._pending.values()):
            conn.sock.close()
        self._pending.clear()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    # --- the selector thread: accept, read heads, enforce the bounds ---------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception:  # the port must outlive any one connection's surprise
                log.exception("metrics port: serving round failed")
                time.sleep(0.1)

    def _round(self) -> None:
        now = time.monotonic()
        timeout = min((c.deadline for c in self._pending.values()), default=now + 1.0) - now
        for key, _ in self._selector.select(max(0.0, min(timeout, 1.0))):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                self._wake_r.recv(64)
            elif key.data.sock in self._pending:  # not dropped earlier in this round
                self._read(key.data)
        now = time.monotonic()
        for conn in [c for c in self._pending.values() if c.deadline <= now]:
            self._drop(conn, "408 Request Timeout", "request head not received in time")

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: leave it in the backlog
                log.warning("metrics port: cannot accept a connection: %s", exc)
                return
            sock.setblocking(False)
            with self._lock:
                held = len(self._pending) + self._answering
            if held >= self._max:
                if not self._pending:  # every held connection is being answered
                    self._refuse(sock)
                    continue
                oldest = next(iter(self._pending.values()))
                self._drop(oldest, "503 Service Unavailable", "too many connections")
            conn = _Conn(sock, str(address[0]), time.monotonic() + self._head_timeout)
            self._pending[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(conn)
            conn.sock.close()
            return
        conn.head += data
        if b"\r\n\r\n" in conn.head or b"\n\n" in conn.head:
            self._forget(conn)
            with self._lock:
                self._answering += 1
            self._ready.put(conn)
        elif len(conn.head) > MAX_HEAD_BYTES:
            self._drop(conn, "431 Request Header Fields Too Large", "request head too large")

    def _forget(self, conn: _Conn) -> None:
        del self._pending[conn.sock]
        self._selector.unregister(conn.sock)

    def _drop(self, conn: _Conn, status: str, why: str) -> None:
        self._forget(conn)
        self._refuse(conn.sock, status, why)

    @staticmethod
    def _refuse(
        sock: socket.socket,
        status: str = "503 Service Unavailable",
        why: str = "too many connections",
    ) -> None:
        """Best effort, never blocking: the peer may not be reading."""
        body = f"{why}; retry later\n".encode()
        with contextlib.suppress(OSError):
            sock.send(_head(status, "text/plain; charset=utf-8", len(body)) + body)
        sock.close()

    # --- the workers: answer complete requests ------------------------------

    def _work(self) -> None:
        while (conn := self._ready.get()) is not None:
            try:
                conn.sock.settimeout(self._write_timeout)
                conn.sock.sendall(self._answer(conn))
            except OSError:
                pass  # the peer left or does not read: abandoned
            except Exception:  # an answer that fails is a 500, never a dead worker
                log.exception("metrics port: request failed")
                with contextlib.suppress(OSError):
                    conn.sock.sendall(_head("500 Internal Server Error", "text/plain", 0))
            finally:
                conn.sock.close()
                with self._lock:
                    self._answering -= 1

    def _answer(self, conn: _Conn) -> bytes:
        lines = bytes(conn.head).decode("latin-1").splitlines()
        parts = lines[0].split() if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            body = b"malformed request line\n"
            return _head("400 Bad Request", "text/plain; charset=utf-8", len(body)) + body
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            body = b"only GET and HEAD\n"
            return _head("405 Method Not Allowed", "text/plain; charset=utf-8", len(body)) + body
        path, _, query = target.partition("?")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if path == "/healthz":
            verbose = parse_qs(query).get("verbose", [""])[-1] in ("1", "true")
            text = json.dumps(self._detail(verbose and is_local_peer(conn.peer)), indent=2)
            data, kind = text.encode() + b"\n", "application/json"
        else:
            encoder, kind = choose_encoder(headers.get("accept", ""))
            data = encoder(self._registry)
        out = _head("200 OK", kind, len(data))
        return out if method == "HEAD" else out + data


def _head(status: str, content_type: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def start_status_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    detail: Detail,
    **bounds: Any,
) -> StatusServer:
    """Serve metrics and `/healthz` on bounded threads; `shutdown()` stops it."""
    server = StatusServer(host, port, registry, detail, **bounds)
    server.start()
    return server
