"""`stepguard healthcheck`: ask a sidecar's gRPC health service, exit 0 only for SERVING.

For Kubernetes exec probes (the chart's, over the Unix socket), for people
and for scripts: one line saying the status, exit 0 (SERVING) or 1 (anything
else: NOT_SERVING, an unknown service, unreachable, timed out, a TLS failure).

    stepguard healthcheck --socket /run/stepguard/grpc.sock --service stepguard.v1.Authorizer
    stepguard healthcheck --address 10.0.0.7:50051 --tls-ca ca.crt --tls-cert c.crt --tls-key c.key

The empty service name ("", the default) asks about the server itself;
`stepguard.v1.Authorizer` is serving once a policy bundle is loaded and the
audit trail is writable (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_OK
from sidecar.core.errors import StepguardError

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Where a worker finds its sidecar (the chart's `stepguard.sidecar.workerEnv` sets it).
ADDRESS_ENV = "STEPGUARD_ADDRESS"


def register(sub: Any) -> None:
    """Add `stepguard healthcheck` to the CLI."""
    cmd = sub.add_parser(
        "healthcheck",
        help="ask a running sidecar's gRPC health service (exit 0 only when SERVING)",
        description="Check a sidecar's gRPC health (grpc.health.v1) over TCP or its Unix socket.",
    )
    where = cmd.add_mutually_exclusive_group()
    where.add_argument(
        "--address",
        help=f"gRPC target: HOST:PORT, or unix:///PATH (default: ${ADDRESS_ENV}, "
        f"else {DEFAULT_ADDRESS})",
    )
    where.add_argument("--socket", type=Path, help="path of the sidecar's Unix socket (--socket)")
    cmd.add_argument(
        "--service",
        default="",
        help='service to ask about: "" the server (default), stepguard.v1.Authorizer the '
        "decisions (serving once policies are loaded and the trail is writable)",
    )
    cmd.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)"
    )
    cmd.add_argument(
        "--tls", action="store_true", help="speak TLS, trusting the system's CAs (or --tls-ca)"
    )
    cmd.add_argument(
        "--tls-ca",
        type=Path,
        help="PEM CA bundle that signs the server certificate: speak TLS (TCP only)",
    )
    cmd.add_argument("--tls-cert", type=Path, help="PEM client certificate, for mutual TLS")
    cmd.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    cmd.add_argument(
        "--tls-server-name",
        help="name to expect in the server certificate when it differs from the address's host",
    )
    cmd.add_argument("--quiet", "-q", action="store_true", help="print nothing; exit code only")
    cmd.set_defaults(run=run_command)


def target_of(args: argparse.Namespace) -> str:
    """The gRPC target to dial: the socket as unix:// (absolute), or the address."""
    if args.socket is not None:
        return f"unix://{Path(args.socket).absolute()}"
    return str(args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS)


def check(
    target: str,
    service: str = "",
    timeout: float = 3.0,
    *,
    credentials: Any = None,
    server_name: str | None = None,
) -> tuple[bool, str]:
    """(serving, status or error) of `service` at `target`; never raises for a bad answer."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        if code == grpc.StatusCode.NOT_FOUND:
            return False, f"SERVICE_UNKNOWN: {details}"
        return False, f"{name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return status == "SERVING", status


def run_command(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise StepguardError("--timeout: must be a positive number of seconds")
    credentials = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        if args.socket is not None or str(args.address or "").startswith("unix:"):
            raise StepguardError("--tls-*: the Unix socket is never TLS; drop the --tls-* flags")
        from sidecar.client import channel_credentials

        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    elif args.tls_server_name:
        raise StepguardError("--tls-server-name needs TLS: give --tls-ca (and for mTLS a cert)")
    target = target_of(args)
    serving, status = check(
        target,
        args.service,
        args.timeout,
        credentials=credentials,
        server_name=args.tls_server_name,
    )
    if not args.quiet:
        from sidecar.core.textsafe import escape

        line = f"{escape(target)} {escape(args.service) or '(server)'}: {escape(status)}"
        print(line, file=sys.stdout if serving else sys.stderr)
    return EXIT_OK if serving else EXIT_ERROR
