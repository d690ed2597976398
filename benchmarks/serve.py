"""A server under test, in its own process: `python -m benchmarks.serve KIND ...`.

Each server runs in a child process so it has its own interpreter and GIL, as
it would in production, and the load generator does not share them. The child
prints one line, `READY <target>`, once it accepts calls, then serves until its
stdin closes.

KIND is `stepguard` (the real Sidecar on a policy directory, with its audit
trail written to a real file) or `empty` (an Authorizer servicer that returns
an empty AuthorizeResponse on the same gRPC stack, options and transport).
"""

from __future__ import annotations

import argparse
import sys
from concurrent import futures
from pathlib import Path

import grpc

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.config import Settings
from sidecar.server import Sidecar


class EmptyAuthorizer(pb_grpc.AuthorizerServicer):
    """Baseline A: the cost of the gRPC call alone."""

    def Authorize(
        self, request: pb.AuthorizeRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizeResponse:
        return pb.AuthorizeResponse()

    def AuthorizeBatch(
        self, request: pb.AuthorizeBatchRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizeBatchResponse:
        out = pb.AuthorizeBatchResponse()
        for _ in request.items:
            out.results.add().response.CopyFrom(pb.AuthorizeResponse())
        return out


def _empty_server(listen: str, socket: str | None) -> tuple[grpc.Server, str]:
    """Built like Sidecar.start builds its server: same executor size and options."""
    s = Settings(listen=listen, socket=Path(socket) if socket else None, metrics_listen=None)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="stepguard"),
        options=[
            ("grpc.max_receive_message_length", s.max_batch_bytes + 64 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_AuthorizerServicer_to_server(EmptyAuthorizer(), server)
    if socket:
        server.add_insecure_port(f"unix:{socket}")
        target = f"unix:{socket}"
    else:
        port = server.add_insecure_port(listen)
        target = f"127.0.0.1:{port}"
    server.start()
    return server, target


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["stepguard", "empty"])
    parser.add_argument("--policies", default="policies")
    parser.add_argument("--audit-file", default="benchmarks/.work/audit.jsonl")
    parser.add_argument("--socket", default=None)
    args = parser.parse_args()
    if args.kind == "empty":
        server, target = _empty_server("127.0.0.1:0", args.socket)
        print(f"READY {target}", flush=True)
        sys.stdin.read()
        server.stop(1).wait()
        return 0
    settings = Settings(
        policies=Path(args.policies),
        listen=None if args.socket else "127.0.0.1:0",
        socket=Path(args.socket) if args.socket else None,
        metrics_listen=None,
        audit_file=args.audit_file,
    )
    sidecar = Sidecar(settings)
    endpoints = sidecar.start()
    target = f"unix:{endpoints.socket}" if endpoints.socket else str(endpoints.tcp)
    print(f"READY {target}", flush=True)
    sys.stdin.read()
    sidecar.stop(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
