"""OpenID AuthZEN Authorization API 1.0 over HTTP, decided by the gRPC API's decider.

    schema.py     what the bundle's schema declares (to keep only declared data)
    translate.py  AuthZEN JSON -> parsed requests, shape checked (pure)
    mapping.py    parsed requests -> Cedar requests for one bundle (pure)
    service.py    evaluation, evaluations, search over the shared Decider
    wsgi.py       the HTTP binding: WSGI app on cheroot's threaded server (HTTPS with TLS)

See docs/authzen.md for the mapping to Cedar and the behaviour on the wire.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter

from sidecar.core.bundle import Bundle
from sidecar.core.validate import Limits
from sidecar.decision.decider import Decider
from sidecar.decision.metrics import Metrics
from sidecar.decision.outcomes import OutcomeRecorder
from sidecar.decision.plans import PlanRecorder
from sidecar.serving.authzen.guard import REASONS, HttpLimits
from sidecar.serving.authzen.service import AuthzenService
from sidecar.serving.authzen.wsgi import AuthzenApp, AuthzenServer
from sidecar.serving.tls import CertificateReloader

__all__ = ["AuthzenApp", "AuthzenServer", "AuthzenService", "HttpLimits", "build_server"]


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
    http: HttpLimits | None = None,
    outcomes: OutcomeRecorder | None = None,
    plans: PlanRecorder | None = None,
    reuse_port: bool = False,
) -> AuthzenServer:
    """The AuthZEN HTTP server for a sidecar: same bundle holder, decider and metrics;
    with `outcomes`, stepguard's `POST /stepguard/v1/outcome(s)` too; with `plans`,
    `POST /stepguard/v1/plan`."""
    service = AuthzenService(bundle, decider, limits, metrics)
    app = AuthzenApp(
        service,
        max_request_bytes=limits.max_request_bytes,
        max_batch_bytes=max_batch_bytes,
        tls=tls is not None,
        outcomes=outcomes,
        max_batch_items=limits.max_batch_items,
        plans=plans,
    )
    # Declared here, not in metrics.py: it exists only where the AuthZEN listener runs.
    refused = Counter(
        "stepguard_authzen_connections_refused_total",
        "AuthZEN connections refused (over authzen_max_connections) or closed for missing "
        "a deadline (headers, body, TLS handshake), by reason.",
        ["reason"],
        registry=metrics.registry,
    )
    for reason in REASONS:
        refused.labels(reason=reason)
    return AuthzenServer(
        app,
        listen,
        workers=workers,
        max_body_bytes=max_batch_bytes,
        tls=tls,
        http=http,
        refused=lambda reason: refused.labels(reason=reason).inc(),
        reuse_port=reuse_port,
    )
