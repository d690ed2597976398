"""Keeping the AuthZEN listener available: connection limits and deadlines on cheroot.

cheroot hands every accepted connection straight to a worker thread, which
then waits (up to its socket timeout, per read) for a request, and runs the
TLS handshake on its accepting thread. So idle connections and clients that
send a byte at a time held every worker and starved real callers (issue 16:
800 idle connections made 26 of 47 evaluations time out), and one stalled
handshake held up every new connection. Here:

- a new connection waits in cheroot's selector, costing no thread, until it
  has something to read; a plain-HTTP connection goes to a worker only once
  its whole header block has arrived (peeked at, not read), so a slow sender
  never holds a worker while it dribbles its headers;
- the TLS handshake runs on a worker, under the header deadline, never on the
  accepting thread;
- deadlines: the header block within `header_timeout_s` of its first byte
  (with TLS: of the connection first becoming readable, handshake included),
  the first request started within `header_timeout_s` of the connection, the
  body within `body_timeout_s` of the headers, and an idle keep-alive
  connection is closed after `idle_timeout_s`. A reaper thread shuts down
  the socket of a connection past its deadline, which frees the worker
  blocked on it;
- at most `max_connections` are open at once; one more is answered
  `503 Service Unavailable` with `Retry-After` (plain HTTP) or closed before
  any handshake (TLS).

Every connection closed or refused this way is logged (at most once per
`_LOG_EVERY_S` per reason, with a count) and counted in
`stepguard_authzen_connections_refused_total{reason}`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cheroot import connections, server, wsgi
from cheroot.makefile import MakeFile

log = logging.getLogger(__name__)

REASONS: Final = ("max_connections", "header_timeout", "body_timeout", "tls_handshake")
_TICK_S: Final = 0.05  # how often the reaper looks at deadlines and parked connections
_LOG_EVERY_S: Final = 10.0
_RETRY_AFTER_S: Final = 1
_local = threading.local()  # the connection a worker thread is serving


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what one HTTP connection may hold (settings `authzen_*`)."""

    max_connections: int = 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    max_header_bytes: int = 64 * 1024


class Guard:
    """Open connections, deadlines and parked slow senders of one server.

    `refused(reason)` is called once for every connection refused or closed
    for a reason of `REASONS` (the metric).
    """

    def __init__(self, limits: HttpLimits, refused: Callable[[str], None]) -> None:
        self.limits = limits
        self._refused = refused
        self._lock = threading.Lock()
        self._open = 0
        self._deadlines: dict[Connection, tuple[float, str]] = {}
        self._parked: list[Connection] = []
        self._logged: dict[str, tuple[float, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requeue: Callable[[Connection], None] = lambda conn: conn.close()

    @property
    def open_connections(self) -> int:
        return self._open

    def start(self) -> None:
        self._thread = threading.Thread(target=self._reap, name="stepguard-authzen-reaper")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        with self._lock:
            parked, self._parked = self._parked, []
        for conn in parked:
            conn.close()

    # -- admission
    def admit(self) -> bool:
        with self._lock:
            if self._open >= self.limits.max_connections:
                return False
            self._open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._open -= 1

    def refuse(self, sock: socket.socket, peer: Any, *, tls: bool) -> None:
        """Answer a connection over the limit (503, or a bare close with TLS) and close it."""
        self.count(
            "max_connections", f"{self.limits.max_connections} connections open; refused {peer}"
        )
        try:
            sock.setblocking(False)
            if not tls:  # with TLS nothing can be said before a handshake we will not do
                message = b"too many connections; retry later\n"
                sock.send(
                    b"HTTP/1.1 503 Service Unavailable\r\n"
                    b"Retry-After: %d\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (_RETRY_AFTER_S, len(message), message)
                )
                _drain(sock)
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()

    # -- deadlines
    def watch(self, conn: Connection, seconds: float, reason: str) -> None:
        with self._lock:
            self._deadlines[conn] = (time.monotonic() + seconds, reason)

    def unwatch(self, conn: Connection) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)

    def park(self, conn: Connection) -> None:
        """Hold a connection whose headers are incomplete; look again at the next tick."""
        with self._lock:
            self._parked.append(conn)

    def count(self, reason: str, detail: str) -> None:
        self._refused(reason)
        now = time.monotonic()
        with self._lock:
            since, n = self._logged.get(reason, (0.0, 0))
            if now - since < _LOG_EVERY_S:
                self._logged[reason] = (since, n + 1)
                return
            self._logged[reason] = (now, 0)
        more = f" (and {n} more since the last report)" if n else ""
        log.warning("AuthZEN connection %s: %s%s", reason.replace("_", " "), detail, more)

    def _reap(self) -> None:
        while not self._stop.wait(_TICK_S):
            now = time.monotonic()
            with self._lock:
                late = [(c, r) for c, (at, r) in self._deadlines.items() if at <= now]
                for conn, _ in late:
                    del self._deadlines[conn]
                parked, self._parked = self._parked, []
            for conn, reason in late:
                self.count(reason, f"{conn.peer} missed its deadline; closed")
                conn.cut()
            for conn in parked:
                try:
                    self.requeue(conn)
                except Exception:  # the reaper must outlive any one connection
                    log.exception("AuthZEN: could not requeue a connection")
                    conn.close()


def _drain(sock: socket.socket) -> None:
    """Read what the peer already sent, so closing does not reset the connection."""
    try:
        while sock.recv(65536, socket.MSG_DONTWAIT):
            pass
    except OSError:
        pass


def body_read() -> None:
    """The app has the whole request body: the body deadline no longer applies."""
    conn = getattr(_local, "conn", None)
    if conn is not None:
        conn.server.guard.unwatch(conn)


class _Request(server.HTTPRequest):
    def parse_request(self) -> None:
        super().parse_request()
        conn: Connection = self.conn
        if self.ready:
            conn.server.guard.watch(conn, conn.server.guard.limits.body_timeout_s, "body_timeout")


class Connection(server.HTTPConnection):
    """A connection that is admitted, counted, and served under deadlines."""

    RequestHandlerClass = _Request
    server: Server

    def __init__(self, srv: Server, sock: Any, makefile: Any = MakeFile) -> None:
        super().__init__(srv, sock, makefile)
        self.fresh = True  # accepted, not yet seen readable
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.tls_pending = self.tls
        self.header_since: float | None = None
        self.admitted = False
        self.served = False  # a worker has served (part of) a request on it

    @property
    def peer(self) -> str:
        return f"{self.remote_addr}:{self.remote_port}"

    def ready_for_worker(self) -> bool:
        """Whether a worker should serve this connection now (else it waits, costing none)."""
        guard = self.server.guard
        if self.fresh:
            self.fresh = False
            self.server.wait_readable(self)
            return False
        # TLS: the bytes on the socket are ciphertext; nothing to peek at. The worker
        # serves it under the header deadline instead.
        if self.tls or self.rfile.has_data():
            return True
        limit = guard.limits.max_header_bytes
        try:
            data = self.socket.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = b"\r"  # nothing yet after all: wait
        except OSError:
            return True  # let the worker meet the error and close
        if not data or len(data) >= limit or b"\r\n\r\n" in data or b"\n\n" in data:
            self.header_since = None
            return True
        now = time.monotonic()
        if self.header_since is None:
            self.header_since = now
        elif now - self.header_since > guard.limits.header_timeout_s:
            guard.count("header_timeout", f"{self.peer} sent incomplete headers; closed")
            self.close()
            return False
        guard.park(self)
        return False

    def communicate(self) -> bool:
        guard = self.server.guard
        _local.conn = self
        self.served = True
        try:
            guard.watch(self, guard.limits.header_timeout_s, "header_timeout")
            if self.tls_pending and not self._handshake():
                return False
            keep: bool = super().communicate()  # type: ignore[no-untyped-call]
            return keep
        finally:
            guard.unwatch(self)
            _local.conn = None

    def _handshake(self) -> bool:
        """The TLS handshake, on this worker thread under the header deadline."""
        sock: ssl.SSLSocket = self.socket
        try:
            sock.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.server.guard.count("tls_handshake", f"{self.peer}: {exc}")
            return False
        self.tls_pending = False
        adapter = self.server.ssl_adapter
        self.ssl_env = adapter.get_environ(sock) if adapter is not None else {}
        return True

    def cut(self) -> None:
        """Shut the socket down under whoever is blocked on it (they then close it)."""
        # socket.socket's own shutdown: SSLSocket's would drop its TLS state
        # under the thread still using it.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.socket, socket.SHUT_RDWR)

    def close(self) -> None:
        if self.admitted:
            self.admitted = False
            self.server.guard.release()
        super().close()


class _Connections(connections.ConnectionManager):
    """cheroot's selector loop, admitting at most `max_connections`."""

    server: Server

    def _expire(self, threshold: float) -> None:
        """cheroot's idle expiry, plus: a connection that has not started its first
        request within the header deadline of being accepted is closed (runs on the
        selector thread, which owns the connections waiting in the selector)."""
        super()._expire(threshold)  # type: ignore[misc]
        guard = self.server.guard
        unstarted = time.time() - guard.limits.header_timeout_s
        selector: Any = self.__dict__["_selector"]  # not in cheroot's stubs
        stale = [
            (fd, conn)
            for fd, conn in selector.connections
            if isinstance(conn, Connection) and not conn.served and conn.last_used < unstarted
        ]
        for fd, conn in stale:
            selector.unregister(fd)
            guard.count("header_timeout", f"{conn.peer} sent no request; closed")
            conn.close()

    def _from_server_socket(self, server_socket: socket.socket) -> Connection | None:
        guard = self.server.guard
        if not guard.admit():
            try:
                sock, peer = server_socket.accept()
            except OSError:
                return None
            guard.refuse(sock, peer, tls=self.server.ssl_adapter is not None)
            return None
        try:
            conn: Connection | None = super()._from_server_socket(server_socket)  # type: ignore[misc]
        except BaseException:
            guard.release()
            raise
        if conn is None:
            guard.release()
        else:
            conn.admitted = True
        return conn


class Server(wsgi.Server):
    """cheroot's WSGI server with the guard, logging through `logging`."""

    ConnectionClass = Connection

    def __init__(self, *args: Any, limits: HttpLimits, refused: Callable[[str], None], **kw: Any):
        super().__init__(*args, **kw)
        self.guard = Guard(limits, refused)
        self.guard.requeue = self.wait_readable
        self.timeout = limits.idle_timeout_s  # idle keep-alive expiry, and each socket wait
        self.max_request_header_size = limits.max_header_bytes
        self.keep_alive_conn_limit = limits.max_connections
        # cheroot's listen backlog is 5: a burst of connections would be refused by
        # the kernel before the limit above could answer them.
        self.request_queue_size = 1024
        self.expiration_interval = min(0.5, limits.idle_timeout_s / 2)

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        log.log(level, "authzen http: %s", msg, exc_info=traceback)

    def prepare(self) -> None:
        super().prepare()
        plain: Any = self.__dict__["_connections"]
        self._connections = _Connections(self)
        plain._selector.close()
        self.guard.start()

    def stop(self) -> None:
        super().stop()
        self.guard.stop()

    def wait_readable(self, conn: Connection) -> None:
        """Hand a connection to the selector until it has data (closed when stopping)."""
        if self.ready:
            self._connections.put(conn)
        else:
            conn.close()

    def process_conn(self, conn: Connection) -> None:
        try:
            ready = conn.ready_for_worker()
        except Exception:  # runs on the selector thread: one connection must not stop it
            log.exception("AuthZEN: dropping a connection that could not be examined")
            conn.close()
            return
        if ready:
            super().process_conn(conn)
