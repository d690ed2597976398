"""Dialling the sidecar: TLS credentials from files, and spreading calls over the
sockets of a sidecar with worker processes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from sidecar.core.errors import ConfigError
from sidecar.core.workernames import worker_name_pattern


def spread_over_workers(
    target: str, options: Sequence[tuple[str, Any]]
) -> tuple[str, Sequence[tuple[str, Any]]]:
    """A Unix socket target of a sidecar with worker processes: every worker's socket.

    `serve --workers N` listens on one socket per worker next to the
    well-known path (`grpc.sock` -> `grpc.w0.sock`, `grpc.w1.sock`, ...;
    docs/deployment.md). The channel then dials all of them and spreads calls
    round-robin, skipping a worker that is down; with no worker sockets found
    (one worker, or a sidecar not started yet) the target is left as given.
    """
    if not target.startswith("unix:") or "," in target:
        return target, options
    path = target.removeprefix("unix:")
    path = path.removeprefix("//") if path.startswith("///") else path
    well_known = Path(path)
    pattern = worker_name_pattern(well_known)
    try:
        found = sorted(
            (int(m.group(1)), entry)
            for entry in well_known.parent.iterdir()
            if (m := pattern.fullmatch(entry.name)) and entry.is_socket()
        )
    except OSError:
        return target, options
    if not found:
        return target, options
    spread = "unix:" + ",".join(str(entry) for _, entry in found)
    if any(key == "grpc.lb_policy_name" for key, _ in options):
        return spread, options
    return spread, [*options, ("grpc.lb_policy_name", "round_robin")]


def channel_credentials(
    root_ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> grpc.ChannelCredentials:
    """Client credentials for `StepguardClient(credentials=...)`.

    `root_ca` is the bundle that signs the server's certificate (None: the
    system roots); `cert` and `key`, given together, are the client's own
    certificate for mutual TLS (for SPIFFE, the workload's X.509 SVID).
    """
    if (cert is None) != (key is None):
        raise ConfigError("give both a client certificate and its key, or neither")
    files = [root_ca, key, cert]
    try:
        root, key_pem, cert_pem = (None if p is None else p.read_bytes() for p in files)
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file: {exc}") from exc
    return grpc.ssl_channel_credentials(root, key_pem, cert_pem)
