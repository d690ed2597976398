"""The sidecar process: gRPC server, health, reflection, metrics, shutdown.

Shutdown runs in order: health NOT_SERVING, stop accepting, drain in-flight
calls for the grace period, then close the audit trail and the metrics port.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.audit.sink import AuditSink
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.errors import ListenError
from sidecar.core.event import timestamp
from sidecar.core.workernames import worker_path
from sidecar.decision.cache import DecisionCache
from sidecar.decision.decider import Decider
from sidecar.decision.metrics import Metrics
from sidecar.decision.outcomes import DecisionIndex, OutcomeRecorder, indexing, trail_lookup
from sidecar.decision.plans import PlanRecorder
from sidecar.serving.aiohandlers import aio_generic_handler, aio_outcome_handler, aio_plan_handler
from sidecar.serving.aioserver import AioServer
from sidecar.serving.authzen import AuthzenServer, build_server
from sidecar.serving.config import Settings, split_host_port
from sidecar.serving.httpstatus import start_status_server
from sidecar.serving.servicer import (
    AuthorizerServicer,
    generic_handler,
    outcome_handler,
    plan_handler,
)
from sidecar.serving.tls import CertificateReloader, TlsFiles
from sidecar.serving.trail import open_trail
from sidecar.serving.watch import PolicyWatcher, ReloadStatus

log = logging.getLogger(__name__)
# The start of the `note` of every decision event made under --fixed-clock.
FIXED_CLOCK_NOTE = "non-production: fixed clock"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Authorizer"].full_name
# gRPC health of the policy files under --watch: NOT_SERVING while a change is
# refused (the last good bundle keeps serving; SERVICE_NAME stays SERVING).
POLICY_HEALTH = "stepguard.policies"
# The reload fields /healthz shows to anyone (no directory, no error text).
_TERSE_RELOAD = ("watching", "revision", "ok", "error", "reloads", "failures", "last_change")


# Young-generation collections: the default (700 allocations) runs one every
# few calls on the hot path. Measured at 8 clients (benchmarks, cache hits):
# ~5% less server CPU per decision with these.
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc_for_serving() -> None:
    """For a process whose only job is serving: call once, after start-up.

    Start-up objects (modules, the bundle, the servers) are moved out of the
    collector's sight for good (`gc.freeze`), and the young generation is
    collected less often. Cyclic garbage is still collected; only later.
    Process-wide, so the serving entry points call it, never the Sidecar
    itself (tests run many sidecars in one process).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def utc_now() -> datetime:
    return datetime.now(UTC)


def fixed_clock(at: datetime) -> tuple[Callable[[], datetime], str]:
    """A clock that always reads `at`, and the note every decision event then carries."""
    at = at.astimezone(UTC)
    return (lambda: at), f"{FIXED_CLOCK_NOTE} {timestamp(at)}"


def decision_cache(settings: Settings) -> DecisionCache | None:
    """The decision cache the settings ask for; None when it is off."""
    if settings.cache_max_entries == 0:
        return None
    return DecisionCache(settings.cache_max_entries, settings.cache_max_bytes)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a started sidecar actually listens (ports resolved when 0 was asked)."""

    tcp: str | None
    socket: str | None
    metrics: str | None
    authzen: str | None = None


class BundleHolder:
    """The bundle in use. Reads are one attribute load; a reload swaps one reference."""

    def __init__(self, bundle: Bundle) -> None:
        self._bundle = bundle
        self._lock = threading.Lock()

    def current(self) -> Bundle:
        return self._bundle

    def swap(self, bundle: Bundle) -> None:
        with self._lock:
            self._bundle = bundle


class Sidecar:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utc_now,
        sink: AuditSink | None = None,
        worker: int | None = None,
    ) -> None:
        """`worker`: this process's index among `settings.workers` worker processes
        (sidecar/serving/supervisor.py); None for a sidecar that is the only one."""
        self.settings = settings
        self.worker = worker
        self.metrics = Metrics()
        self.holder = BundleHolder(load_bundle(settings.policies))
        bundle = self.holder.current()
        self.metrics.set_bundle(bundle.revision, bundle.policy_count)
        workers = settings.workers if worker is not None else None
        self.sink, redactor = open_trail(settings, sink, worker=worker, workers=workers)
        # A worker listens on its own socket next to the well-known path (the
        # supervisor points that path at a live worker's): docs/deployment.md.
        self.socket_path = settings.socket
        if settings.socket is not None and worker is not None:
            self.socket_path = worker_path(settings.socket, worker)
        # Whether every worker serves (the supervisor says): gRPC health of the
        # Authorizer is SERVING only then, so any worker answers for all of them.
        self._fleet_serving = True
        note = ""
        if settings.fixed_clock is not None:  # non-production only (config.py refuses it else)
            clock, note = fixed_clock(settings.fixed_clock)
            log.warning(
                "NON-PRODUCTION: the clock is fixed at %s: every request is decided as if "
                "then, and every decision event records it (note: %r)",
                settings.fixed_clock.isoformat(),
                note,
            )
        # Outcomes (decision/outcomes.py) are judged against the decisions the trail
        # took: the index notes them as the decider writes them, the rest is looked up.
        index = DecisionIndex()
        self.outcomes = OutcomeRecorder(
            self.sink,
            self.metrics,
            clock,
            index=index,
            trail=trail_lookup(settings.audit_file),
            redactor=redactor,
            audit_note=note,
            bind_workload_identity=settings.bind_workload_identity,
        )
        # Plans (decision/plans.py): predicted beside the decisions, recorded in the same trail.
        self.plans = PlanRecorder(
            self.sink,
            clock,
            policy_errors=settings.policy_errors,
            redactor=redactor,
            audit_note=note,
            bind_workload_identity=settings.bind_workload_identity,
        )
        self.decider = Decider(
            indexing(self.sink, index),
            self.metrics,
            clock,
            audit_note=note,
            bind_workload_identity=settings.bind_workload_identity,
            redactor=redactor,
            cache=decision_cache(settings),
            now_granularity_ms=settings.now_granularity_ms,
            policy_errors=settings.policy_errors,
        )
        # Read (and checked) now, so unusable certificate files fail startup, not a handshake.
        self.tls: CertificateReloader | None = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            files = TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            self.tls = CertificateReloader(files)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self._health_lock = threading.Lock()
        self.sink.watch(self._on_audit_health)
        self._grpc: grpc.Server | None = None
        self._serving = False  # gRPC started (health follows the trail from then on)
        self._authzen: AuthzenServer | None = None
        self._metrics_server: Any = None
        self.watcher: PolicyWatcher | None = None
        self._stopped = threading.Event()
        self.endpoints = Endpoints(None, None, None)

    def start(self) -> Endpoints:
        """Bind every listener, then serve; a listener that cannot bind stops all of it.

        A failure half-way must not leave a process behind: gRPC's and the
        HTTP servers' threads would keep it alive in interpreter shutdown,
        answering every call with an error and never exiting. So whatever
        started is stopped before the error (a ListenError naming the setting)
        goes up.
        """
        try:
            return self._start()
        except BaseException:
            self.stop(grace=0.0)
            raise

    def _start(self) -> Endpoints:
        s = self.settings
        authzen = metrics = None
        # The HTTP listeners first: a taken port fails before any gRPC object exists.
        if s.metrics_listen is not None:
            host, port = split_host_port(s.metrics_listen, "metrics_listen")
            try:
                httpd = start_status_server(host, port, self.metrics.registry, self.health_detail)
            except OSError as exc:
                raise ListenError("metrics_listen", s.metrics_listen, str(exc)) from exc
            self._metrics_server = httpd
            metrics = f"{host}:{httpd.server_port}"
        # Worker processes share the AuthZEN port as they share the gRPC one (SO_REUSEPORT,
        # the supervisor reserved it); a sidecar on its own must fail on a taken port.
        if s.authzen_listen is not None:
            self._authzen = build_server(
                s.authzen_listen,
                self.holder.current,
                self.decider,
                self.metrics,
                limits=s.limits,
                max_batch_bytes=s.max_batch_bytes,
                workers=s.threads,
                tls=self.tls,
                http=s.authzen_http,
                outcomes=self.outcomes,
                plans=self.plans,
                reuse_port=self.worker is not None,
            )
            try:
                authzen = self._authzen.start()
            except OSError as exc:
                raise ListenError("authzen_listen", s.authzen_listen, str(exc)) from exc
        message_limit = s.max_batch_bytes + 64 * 1024
        # Worker processes share the TCP port (SO_REUSEPORT: the kernel spreads new
        # connections over them); a sidecar on its own must fail on a taken port.
        reuse_port = 1 if self.worker is not None else 0
        options = [
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.so_reuseport", reuse_port),
        ]
        server: grpc.Server
        if s.server_mode == "asyncio":  # docs/performance.md: sync vs asyncio
            server = AioServer(options=options, workers=s.threads, event_loop=s.event_loop)
        else:
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=s.threads, thread_name_prefix="stepguard"),
                options=options,
            )
        self._grpc = server  # stopped by stop(), even when start() fails before it serves
        servicer = AuthorizerServicer(
            self.holder.current,
            self.decider,
            s.limits,
            self.metrics,
            s.max_batch_bytes,
            max_streams=max(1, s.threads // 2),
            max_streams_per_caller=s.stream_max_per_caller,
            stream_idle_timeout_s=s.stream_idle_timeout_s,
            outcomes=self.outcomes,
            plans=self.plans,
        )
        if isinstance(server, AioServer):
            # With fsync durability the loop must not wait for the disk (servicer.py).
            defer = s.audit_durability == "fsync"
            server.add_generic_rpc_handlers((aio_generic_handler(servicer, defer_audit=defer),))
            server.add_generic_rpc_handlers((aio_outcome_handler(servicer, defer_audit=defer),))
            server.add_generic_rpc_handlers((aio_plan_handler(servicer),))
        else:
            server.add_generic_rpc_handlers((generic_handler(servicer),))
            server.add_generic_rpc_handlers((outcome_handler(servicer),))
            server.add_generic_rpc_handlers((plan_handler(servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        tcp = sock = None
        if s.listen is not None:
            host, _ = split_host_port(s.listen, "listen")
            port = (
                server.add_secure_port(s.listen, self.tls.credentials())
                if self.tls is not None
                else server.add_insecure_port(s.listen)
            )
            if port == 0:
                raise ListenError("listen", s.listen, "the address is taken or not this host's")
            tcp = f"{host}:{port}"
        if self.socket_path is not None:
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
            self.socket_path.unlink(missing_ok=True)
            if server.add_insecure_port(f"unix:{self.socket_path}") == 0:
                raise ListenError("socket", str(self.socket_path), "cannot bind the Unix socket")
            sock = str(self.socket_path)
        if s.bind_workload_identity and sock is not None:
            log.warning(
                "workload identity binding is on: calls over the Unix socket %s carry no "
                "certificate and every decision they ask for is denied",
                sock,
            )
        server.start()
        self._serving = True
        if sock is not None:
            # Group-writable: a worker container sharing the socket's volume and
            # group (fsGroup) may connect without running as the sidecar's uid.
            os.chmod(sock, 0o660)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.watch:
            self.health.set(POLICY_HEALTH, health_pb2.HealthCheckResponse.SERVING)
            self.watcher = PolicyWatcher(
                s.policies,
                self.holder,
                self.metrics,
                interval_s=s.watch_interval_s,
                on_status=self._on_reload,
            )
            self.watcher.start()
        self._sync_audit_health()
        self.endpoints = Endpoints(tcp, sock, metrics, authzen)
        scheme = "http" if self.tls is None else "https"
        log.info(
            "stepguard serving policies %s (revision %s, %d policies) on %s",
            s.policies,
            self.holder.current().revision[:12],
            self.holder.current().policy_count,
            ", ".join(
                e
                for e in (
                    tcp,
                    f"unix:{sock}" if sock else None,
                    authzen and f"{scheme}://{authzen}",
                )
                if e
            ),
        )
        return self.endpoints

    def _on_audit_health(self, healthy: bool, detail: str) -> None:
        log.log(
            logging.INFO if healthy else logging.ERROR,
            "audit trail %s%s",
            "recovered: serving again" if healthy else "failed: NOT_SERVING, denying: ",
            "" if healthy else detail,
        )
        self._sync_audit_health()

    def _sync_audit_health(self) -> None:
        """Authorizer health follows the trail: no trail, NOT_SERVING (and every answer DENY)."""
        with self._health_lock:
            healthy = self.sink.healthy
            self.metrics.audit_healthy.set(1 if healthy else 0)
            if self._serving:  # before start(), start() sets it
                status = health_pb2.HealthCheckResponse
                serving = healthy and self._fleet_serving
                self.health.set(SERVICE_NAME, status.SERVING if serving else status.NOT_SERVING)

    def set_fleet_serving(self, serving: bool) -> None:
        """The supervisor says whether every worker serves (see `_fleet_serving`)."""
        self._fleet_serving = serving
        self._sync_audit_health()

    def _on_reload(self, status: ReloadStatus) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        self.health.set(
            POLICY_HEALTH, serving if status.ok else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    def health_detail(self, verbose: bool = False) -> dict[str, Any]:
        """What /healthz shows: the bundle in use, the trail and, under --watch, the reload state.

        `ok` is false while something is wrong (trail failing, policy files on
        disk refused). The policy directory and the refusal's text (paths,
        policy source) are only in the verbose form, which the metrics port
        gives to loopback peers that ask (sidecar/serving/httpstatus.py).
        """
        bundle = self.holder.current()
        watcher = self.watcher
        audit_healthy = bool(getattr(self.sink, "healthy", True))
        reload: dict[str, Any] = {"watching": False}
        if watcher is not None:
            reload = watcher.status().to_json()
            if not verbose:  # a fixed set of fields: none carries a path or policy text
                terse = {k: reload.get(k) for k in _TERSE_RELOAD}
                if reload.get("error"):
                    terse["error"] = (
                        "the policy files on disk were refused; the last good bundle serves "
                        "(the log, or /healthz?verbose=1 from loopback, says why)"
                    )
                reload = terse
        return {
            "ok": audit_healthy and reload.get("ok", True) is not False,
            "policy_revision": bundle.revision,
            "policies": bundle.policy_count,
            "audit_healthy": audit_healthy,
            "reload": reload,
        }

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown; safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.watcher is not None:
            self.watcher.stop()
        self.health.enter_graceful_shutdown()
        grace = self.settings.grace_s if grace is None else grace
        # Both APIs stop accepting at once and drain in parallel, then the trail closes.
        drained = self._grpc.stop(grace) if self._grpc is not None else None
        if self._authzen is not None:
            self._authzen.stop(grace)
        if drained is not None:
            drained.wait()
        self.sink.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        log.info("stepguard stopped")

    def wait(self) -> None:
        if self._grpc is not None:
            self._grpc.wait_for_termination()
