"""OpenID AuthZEN Authorization API 1.0 over HTTP, decided by the gRPC API's decider.

    schema.py     what the bundle's schema declares (to keep only declared data)
    translate.py  AuthZEN JSON -> Cedar requests (pure)
    service.py    evaluation, evaluations, search over the shared Decider
    wsgi.py       the HTTP binding: WSGI app on cheroot's threaded server (HTTPS with TLS)

See docs/authzen.md for the mapping to Cedar and the behaviour on the wire.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.authzen.service import AuthzenService
from sidecar.authzen.wsgi import AuthzenApp, AuthzenServer
from sidecar.bundle import Bundle
from sidecar.decider import Decider
from sidecar.metrics import Metrics
from sidecar.tls import CertificateReloader
from sidecar.validate import Limits

__all__ = ["AuthzenApp", "AuthzenServer", "AuthzenService", "build_server"]


def build_server(
    listen: str,
    bundle: Callable[[], Bundle],
    decider: Decider,
    metrics: Metrics,
    *,
    limits: Limits,
    max_batch_bytes: int,
    workers: int,
    tls: CertificateReloader | None = None,
) -> AuthzenServer:
    """The AuthZEN HTTP server for a sidecar: same bundle holder, decider and metrics."""
    service = AuthzenService(bundle, decider, limits, metrics)
    app = AuthzenApp(
        service, max_request_bytes=limits.max_request_bytes, max_batch_bytes=max_batch_bytes
    )
    return AuthzenServer(app, listen, workers=workers, max_body_bytes=max_batch_bytes, tls=tls)
