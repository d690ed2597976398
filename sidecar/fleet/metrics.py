"""Prometheus metrics of the shipper and the collector (docs/fleet.md, "Metrics").

Each process has a registry of its own (no default process collectors), served
on `--metrics-listen` like the sidecar's.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from sidecar.core.errors import ConfigError


@dataclass
class ShipMetrics:
    registry: CollectorRegistry
    lag_events: Gauge
    lag_seconds: Gauge
    up: Gauge
    stopped: Gauge
    published: Counter
    errors: Counter
    pruned: Counter


def ship_metrics() -> ShipMetrics:
    r = CollectorRegistry()
    return ShipMetrics(
        r,
        Gauge(
            "stepguard_ship_lag_events",
            "trail records on disk not yet acknowledged by the broker",
            registry=r,
        ),
        Gauge(
            "stepguard_ship_lag_seconds",
            "age of the oldest record not yet acknowledged by the broker (0 when caught up)",
            registry=r,
        ),
        Gauge(
            "stepguard_ship_up",
            "1 while the broker takes records, 0 while shipping is stopped",
            registry=r,
        ),
        Gauge(
            "stepguard_ship_stopped",
            "1 while shipping is stopped for this reason",
            ["reason"],
            registry=r,
        ),
        Counter("stepguard_ship_published", "records the broker acknowledged", registry=r),
        Counter("stepguard_ship_errors", "rounds that failed, by reason", ["reason"], registry=r),
        Counter(
            "stepguard_ship_pruned_segments",
            "rotated segments deleted after the collectors' watermark passed them",
            registry=r,
        ),
    )


@dataclass
class CollectMetrics:
    registry: CollectorRegistry
    stored: Counter
    redelivered: Counter
    findings: Counter
    batch_errors: Counter


def collect_metrics() -> CollectMetrics:
    r = CollectorRegistry()
    return CollectMetrics(
        r,
        Counter(
            "stepguard_collect_events_stored",
            "records written to the store (each once)",
            registry=r,
        ),
        Counter(
            "stepguard_collect_events_redelivered",
            "records the store already held (redeliveries, repeats)",
            registry=r,
        ),
        Counter(
            "stepguard_collect_findings",
            "integrity findings recorded, by kind",
            ["kind"],
            registry=r,
        ),
        Counter(
            "stepguard_collect_batch_errors",
            "batches that failed (not acknowledged: they are redelivered)",
            ["reason"],
            registry=r,
        ),
    )


def serve(listen: str | None, registry: CollectorRegistry) -> int | None:
    """Serve the registry on host:port; the port bound (0 picks one), or None."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    try:
        server, _ = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--metrics-listen {listen}: {exc}") from exc
    return int(server.server_port)
