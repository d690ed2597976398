"""AuthZEN's HTTPS JSON binding: a WSGI app on cheroot's threaded server.

Why cheroot: the gRPC API runs on a synchronous grpcio server with a thread
pool, and the decider, cedarpy and the audit sink are all blocking calls; a
threaded WSGI server keeps one model for both APIs (no event loop to bridge),
serves HTTP/1.1 keep-alive from a fixed pool of worker threads, drains
in-flight requests on `stop()` for a bounded time, enforces a request body
limit itself, and has a TLS adapter for when TLS is configured. It is pure
Python, typed, and maintained by the CherryPy project. (waitress has no TLS;
uvicorn and hypercorn are asyncio servers; gunicorn forks worker processes,
which cannot share this process's decider and audit trail.)

The app is thin: check method, media type and size, decode JSON strictly,
call `AuthzenService`, encode the answer. Errors are plain-text messages:
400 for a request that is not well formed (naming the field), 413 over the
size limits, 404/405 for other paths and methods, 500 (never a decision)
when something breaks. `X-Request-ID` is echoed on every response.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from email.message import Message
from typing import Any, Final

from cheroot.ssl.builtin import BuiltinSSLAdapter

from sidecar.core.errors import InvalidRequest
from sidecar.core.event import CallMeta, recorded_request_id
from sidecar.core.jsonreq import MAX_JSON_DEPTH, nesting_path
from sidecar.decision.identity import IdentityRefused, certificate_identity
from sidecar.decision.outcomes import OutcomeRecorder
from sidecar.decision.plans import PlanRecorder
from sidecar.serving.authzen import outcome as outcomes
from sidecar.serving.authzen import plan as plans
from sidecar.serving.authzen.guard import HttpLimits, Server, body_read
from sidecar.serving.authzen.service import AuthzenService
from sidecar.serving.authzen.translate import SearchKind
from sidecar.serving.config import split_host_port
from sidecar.serving.tls import CertificateReloader

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Environ = Mapping[str, Any]
WELL_KNOWN: Final = "/.well-known/authzen-configuration"
CALLER_IDENTITY: Final = "stepguard.caller_identity"  # environ key, set by _ReloadingTls
CALLER_REFUSED: Final = "stepguard.caller_refused"  # why its certificate gives no identity
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_SEARCH: Final[dict[str, SearchKind]] = {
    "/access/v1/search/subject": "subject",
    "/access/v1/search/resource": "resource",
    "/access/v1/search/action": "action",
}


class _HttpError(Exception):
    def __init__(self, status: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


class AuthzenApp:
    """The WSGI application: routes, media type, body limits, JSON, status codes."""

    def __init__(
        self,
        service: AuthzenService,
        *,
        max_request_bytes: int,
        max_batch_bytes: int,
        tls: bool = False,
        outcomes: OutcomeRecorder | None = None,
        max_batch_items: int = 1000,
        plans: PlanRecorder | None = None,
    ):
        self._service = service
        self._outcomes = outcomes  # stepguard's extension paths (authzen/outcome.py)
        self._plans = plans  # and POST /stepguard/v1/plan (authzen/plan.py)
        self._max_batch_items = max_batch_items
        self._scheme = "https" if tls else "http"
        self.listening = ""  # HOST:PORT once bound (AuthzenServer.start)
        self._max_request = max_request_bytes
        self._max_batch = max_batch_bytes

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = environ.get("HTTP_X_REQUEST_ID")
        try:
            status, payload, extra = self._route(environ, started)
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            return _respond(
                start_response,
                status,
                body,
                content_type="application/json",
                request_id=request_id,
                extra=extra,
            )
        except InvalidRequest as exc:
            self._service.count_invalid(exc.field)
            return _text(start_response, "400 Bad Request", str(exc), request_id)
        except _HttpError as exc:
            return _text(start_response, exc.status, exc.message, request_id, exc.headers)
        except (outcomes.NotRecorded, plans.NotRecorded) as exc:
            return _text(start_response, "503 Service Unavailable", str(exc), request_id)
        except Exception:  # an error status, never a decision
            log.exception("AuthZEN request failed")
            return _text(
                start_response,
                "500 Internal Server Error",
                "internal error; the request is not authorized",
                request_id,
            )

    def _route(
        self, environ: Environ, started: float
    ) -> tuple[str, dict[str, Any], tuple[tuple[str, str], ...]]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        batch = path in ("/access/v1/evaluations", outcomes.MANY, plans.PATH)
        limit = self._max_batch if batch else self._max_request
        # Read before anything can fail: cheroot drains an unread fixed-length body,
        # but an unread chunked one would be parsed as the connection's next request.
        raw = _read_body(environ, limit)
        if path == WELL_KNOWN:
            if method not in ("GET", "HEAD"):
                raise _HttpError("405 Method Not Allowed", f"{path} takes GET", [("Allow", "GET")])
            caching = (("Cache-Control", "max-age=300"), ("Vary", "Host"))
            return (
                "200 OK",
                self._service.metadata(_base_url(environ, self._scheme, self.listening)),
                caching,
            )
        service = self._service
        handler: Callable[[Mapping[str, Any], CallMeta, float], dict[str, Any]]
        if path == "/access/v1/evaluation":
            handler = service.evaluation
        elif path == "/access/v1/evaluations":
            handler = service.evaluations
        elif path in outcomes.PATHS and self._outcomes is not None:
            handler = self._outcome_handler(path, self._outcomes)
        elif path == plans.PATH and self._plans is not None:
            recorder = self._plans

            def handler(body: Mapping[str, Any], meta: CallMeta, started: float) -> dict[str, Any]:
                return plans.plan_one(recorder, service.bundle, service.limits, body, meta)

        elif path in _SEARCH:
            kind = _SEARCH[path]

            def handler(body: Mapping[str, Any], meta: CallMeta, started: float) -> dict[str, Any]:
                return service.search(kind, body, meta, started)

        else:
            raise _HttpError("404 Not Found", f"no AuthZEN endpoint at {path}")
        if method != "POST":
            raise _HttpError("405 Method Not Allowed", f"{path} takes POST", [("Allow", "POST")])
        body = _json_body(environ, raw)
        return "200 OK", handler(body, _meta(environ), started), (("Cache-Control", "no-store"),)

    def _outcome_handler(
        self, path: str, recorder: OutcomeRecorder
    ) -> Callable[[Mapping[str, Any], CallMeta, float], dict[str, Any]]:
        """POST /stepguard/v1/outcome(s): stepguard's extension, not AuthZEN's."""
        if path == outcomes.ONE:
            return lambda body, meta, started: outcomes.record_one(recorder, body, meta)
        max_items = self._max_batch_items
        count = self._service.count_invalid
        return lambda body, meta, started: outcomes.record_many(
            recorder, body, meta, max_items=max_items, count_invalid=count
        )


def _read_body(environ: Environ, limit: int) -> bytes:
    """The whole request body, or 413 (cheroot then closes the connection) over `limit`."""
    length_text = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length_text:
        try:
            length = int(length_text)
        except ValueError as exc:
            raise InvalidRequest("request", f"bad Content-Length {length_text!r}") from exc
        if length > limit:
            raise _HttpError("413 Content Too Large", f"request: body over {limit} bytes")
        raw = stream.read(length) if length > 0 else b""
    else:
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise _HttpError("413 Content Too Large", f"request: body over {limit} bytes")
    body_read()
    data: bytes = raw
    if length_text and len(data) < int(length_text):
        # Cut off (the peer stalled past the body deadline, or hung up): never decide
        # on part of a body, even one that happens to parse.
        raise _HttpError("400 Bad Request", "request: the body ended before Content-Length")
    return data


def _json_body(environ: Environ, raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidRequest saying what is wrong with it."""
    media, charset = _media_type(environ.get("CONTENT_TYPE") or "")
    if media != "application/json":
        raise InvalidRequest(
            "request", f"Content-Type must be application/json, got {media or 'none'}"
        )
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise InvalidRequest("request", f"JSON must be UTF-8, got charset={charset}")
    if not raw.strip():
        raise InvalidRequest("request", "the body is empty; send a JSON object")
    try:
        data = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except UnicodeDecodeError as exc:
        raise InvalidRequest("request", "the body is not UTF-8") from exc
    except RecursionError as exc:  # name the field, as every refusal does (issue 16, point 6)
        where = nesting_path(raw.decode("utf-8")) or "request"
        raise InvalidRequest(where, f"nests more than {MAX_JSON_DEPTH} levels deep") from exc
    except ValueError as exc:
        raise InvalidRequest("request", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("request", "the body must be a JSON object")
    return data


def _media_type(value: str) -> tuple[str, str | None]:
    """`type/subtype` (lower case) and the charset parameter of a Content-Type value."""
    msg = Message()
    msg["Content-Type"] = value
    media = msg.get_content_type() if value.strip() else ""
    charset = msg.get_param("charset")
    return media, charset if isinstance(charset, str) else None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """I-JSON: a member name appears once; a repeated one is ambiguous, so refused."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member name {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _meta(environ: Environ) -> CallMeta:
    """Caller facts for the audit event, in the form the gRPC API records them.

    A client certificate whose identity breaks a rule (sidecar/decision/identity.py) gets
    no decision: 403 naming the rule, as gRPC answers UNAUTHENTICATED.
    """
    refused = environ.get(CALLER_REFUSED)
    if refused:
        raise _HttpError("403 Forbidden", f"caller: {refused}")
    addr = str(environ.get("REMOTE_ADDR") or "")
    port = str(environ.get("REMOTE_PORT") or "")
    peer = ""
    if addr:
        peer = f"ipv6:[{addr}]:{port}" if ":" in addr else f"ipv4:{addr}:{port}"
    trace = ""
    m = _TRACEPARENT.fullmatch(str(environ.get("HTTP_TRACEPARENT") or "").strip())
    if m and m["trace"] != "0" * 32:
        trace = m["trace"]
    return CallMeta(
        peer=peer,
        identity=str(environ.get(CALLER_IDENTITY) or ""),
        trace_id=trace,
        request_id=recorded_request_id(environ.get("HTTP_X_REQUEST_ID")),
    )


_HOST: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)


def _base_url(environ: Environ, scheme: str, listening: str) -> str:
    """The PDP's base URL as the caller reached it.

    The scheme is the listener's own (`https` whenever it serves TLS), never
    taken from the request. The host is the request's `Host` when it is a
    plain host[:port]; anything else (paths, userinfo, spaces) is not echoed
    into URLs a PEP will follow: the listener's own address is used instead.
    """
    host = str(environ.get("HTTP_HOST") or "")
    if not _HOST.fullmatch(host):
        host = listening or f"localhost:{environ.get('SERVER_PORT')}"
    return f"{scheme}://{host}"


def _respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    *,
    content_type: str,
    request_id: str | None,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
    if request_id is not None:
        headers.append(("X-Request-ID", request_id))
    start_response(status, headers)
    return [body]


def _text(
    start_response: StartResponse,
    status: str,
    message: str,
    request_id: str | None,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    body = (message + "\n").encode()
    return _respond(
        start_response,
        status,
        body,
        content_type="text/plain; charset=utf-8",
        request_id=request_id,
        extra=(("Cache-Control", "no-store"), *extra),
    )


class _ReloadingTls(BuiltinSSLAdapter):
    """cheroot's standard-library TLS, serving the reloader's current certificates.

    Each connection is wrapped with the context `CertificateReloader` holds at
    that moment (rotated files take effect at the next handshake, as on
    gRPC), and its environ carries the caller's identity as gRPC derives it.
    """

    def __init__(self, reloader: CertificateReloader) -> None:
        # Not BuiltinSSLAdapter.__init__: it loads the files itself, once; the
        # reloader has read and checked them already.
        self._reloader = reloader
        self.certificate = str(reloader.files.cert)
        self.private_key = str(reloader.files.key)
        self.certificate_chain = None
        self.ciphers = None
        self.private_key_password = None
        self._server_env: dict[str, Any] = {}

    @property
    def context(self) -> ssl.SSLContext:
        return self._reloader.server_context()

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        raise AttributeError("the TLS context follows the certificate files; it is not set")

    def wrap(self, sock: socket.socket) -> tuple[ssl.SSLSocket, dict[str, Any]]:
        """Wrap without the handshake: it runs on a worker (guard.py), not on the acceptor."""
        wrapped = self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True)
        return wrapped, {}

    def get_environ(self, sock: ssl.SSLSocket) -> dict[str, Any]:  # type: ignore[override]
        environ: dict[str, Any] = super().get_environ(sock)  # type: ignore[no-untyped-call]
        try:
            environ[CALLER_IDENTITY] = certificate_identity(sock.getpeercert(binary_form=True))
        except IdentityRefused as exc:
            environ[CALLER_REFUSED] = str(exc)
        return environ


class AuthzenServer:
    """The HTTP listener: started and stopped by `Sidecar`, beside the gRPC server.

    With `tls` it serves HTTPS (mutual TLS when the reloader has a client CA).
    Connections are bounded in number and in time (`HttpLimits`, guard.py);
    `refused(reason)` counts each one refused or cut.
    """

    def __init__(
        self,
        app: AuthzenApp,
        listen: str,
        *,
        workers: int,
        max_body_bytes: int,
        tls: CertificateReloader | None = None,
        http: HttpLimits | None = None,
        refused: Callable[[str], None] = lambda reason: None,
        reuse_port: bool = False,
    ) -> None:
        """`reuse_port`: listen with SO_REUSEPORT, beside the other worker processes."""
        host, port = split_host_port(listen, "authzen_listen")
        self._app = app
        self._server = Server(
            (host, port),
            app,
            numthreads=workers,
            server_name="stepguard",
            limits=http or HttpLimits(),
            refused=refused,
            reuse_port=reuse_port,
        )
        self._server.max_request_body_size = max_body_bytes
        if tls is not None:
            self._server.ssl_adapter = _ReloadingTls(tls)
        self._thread: threading.Thread | None = None

    @property
    def open_connections(self) -> int:
        return self._server.guard.open_connections

    def start(self) -> str:
        """Bind (raising OSError when the address is taken) and serve; return HOST:PORT."""
        self._server.prepare()
        host, port = self._server.bind_addr[:2]
        self._thread = threading.Thread(
            target=self._server.serve, name="stepguard-authzen", daemon=True
        )
        self._thread.start()
        self._app.listening = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self._app.listening

    def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds."""
        self._server.shutdown_timeout = grace
        self._server.stop()
        if self._thread is not None:
            self._thread.join(grace + 1.0)
