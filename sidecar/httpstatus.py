"""The metrics port: Prometheus at /metrics (and any other path), health detail at /healthz.

gRPC health answers SERVING or NOT_SERVING and nothing more; an operator who
asks why (which bundle is serving, whether the policy files on disk were
refused and where) reads `/healthz`, a small JSON document. It is served by
the same loopback HTTP server as the metrics, so it adds no port.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr: scrapes come every few seconds."""


def start_status_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    detail: Callable[[], dict[str, Any]],
) -> ThreadingWSGIServer:
    """Serve metrics and `/healthz` on a daemon thread; `shutdown()` stops it."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            body = json.dumps(detail(), indent=2).encode() + b"\n"
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family  # IPv6 hosts such as ::1 too

    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="stepguard-metrics", daemon=True).start()
    return httpd
