"""A server under test, in its own process: `python -m benchmarks.serve KIND ...`.

Each server runs in a child process so it has its own interpreter and GIL, as
it would in production, and the load generator does not share them. The child
prints one line, `READY <tcp target> <unix target or ->`, once it accepts
calls, then serves until its stdin closes.

KIND is `stepguard` (the real Sidecar on a policy directory, with its audit
trail written to a real file; with `--workers N`, N > 1, the real supervisor
and N worker processes of `stepguard serve`, each writing its own chain next
to the audit file; clients reach them all over TCP with a connection each, or
over the socket with sidecar.client's spreading) or `empty` (baseline A: an
Authorizer that parses each request and returns an empty AuthorizeResponse, registered the
way stepguard registers its handlers, on the same gRPC server, options and
transport; `--mode` picks the grpc.aio or the thread-pool server).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.serving.aioserver import AioServer
from sidecar.serving.config import Settings
from sidecar.serving.server import Sidecar, tune_gc_for_serving

SERVICE = pb.DESCRIPTOR.services_by_name["Authorizer"].full_name
EMPTY = pb.AuthorizeResponse()


def _empty_batch(raw: bytes) -> pb.AuthorizeBatchResponse:
    out = pb.AuthorizeBatchResponse()
    for _ in pb.AuthorizeBatchRequest.FromString(raw).items:
        out.results.add().response.CopyFrom(EMPTY)
    return out


def _empty_item(raw: bytes) -> pb.AuthorizeStreamResponse:
    item = pb.AuthorizeStreamRequest.FromString(raw)
    return pb.AuthorizeStreamResponse(id=item.id, response=EMPTY)


def empty_handler(mode: str) -> grpc.GenericRpcHandler[Any, Any]:
    """Baseline A's methods: parse, answer empty; sync or asyncio like stepguard's."""
    if mode == "asyncio":

        async def authorize(raw: bytes, context: Any) -> pb.AuthorizeResponse:
            pb.AuthorizeRequest.FromString(raw)
            return EMPTY

        async def batch(raw: bytes, context: Any) -> pb.AuthorizeBatchResponse:
            return _empty_batch(raw)

        async def stream(
            requests: AsyncIterator[bytes], context: Any
        ) -> AsyncIterator[pb.AuthorizeStreamResponse]:
            async for raw in requests:
                yield _empty_item(raw)

        handlers = {
            "Authorize": grpc.unary_unary_rpc_method_handler(
                authorize, response_serializer=pb.AuthorizeResponse.SerializeToString
            ),
            "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(
                batch, response_serializer=pb.AuthorizeBatchResponse.SerializeToString
            ),
            "AuthorizeStream": grpc.stream_stream_rpc_method_handler(
                stream, response_serializer=pb.AuthorizeStreamResponse.SerializeToString
            ),
        }
    else:

        def authorize_sync(raw: bytes, context: Any) -> pb.AuthorizeResponse:
            pb.AuthorizeRequest.FromString(raw)
            return EMPTY

        def batch_sync(raw: bytes, context: Any) -> pb.AuthorizeBatchResponse:
            return _empty_batch(raw)

        def stream_sync(
            requests: Iterator[bytes], context: Any
        ) -> Iterator[pb.AuthorizeStreamResponse]:
            for raw in requests:
                yield _empty_item(raw)

        handlers = {
            "Authorize": grpc.unary_unary_rpc_method_handler(
                authorize_sync, response_serializer=pb.AuthorizeResponse.SerializeToString
            ),
            "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(
                batch_sync, response_serializer=pb.AuthorizeBatchResponse.SerializeToString
            ),
            "AuthorizeStream": grpc.stream_stream_rpc_method_handler(
                stream_sync, response_serializer=pb.AuthorizeStreamResponse.SerializeToString
            ),
        }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _empty_server(mode: str, socket: str | None) -> tuple[grpc.Server, str, str]:
    """Built like Sidecar.start builds its server: same executor size and options."""
    s = Settings(metrics_listen=None)
    options = [
        ("grpc.max_receive_message_length", s.max_batch_bytes + 64 * 1024),
        ("grpc.so_reuseport", 0),
    ]
    server: grpc.Server
    if mode == "asyncio":
        server = AioServer(options=options, workers=s.threads, event_loop=s.event_loop)
    else:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.threads, thread_name_prefix="stepguard"),
            options=options,
        )
    server.add_generic_rpc_handlers((empty_handler(mode),))
    port = server.add_insecure_port("127.0.0.1:0")
    unix = "-"
    if socket:
        server.add_insecure_port(f"unix:{socket}")
        unix = f"unix:{socket}"
    server.start()
    return server, f"127.0.0.1:{port}", unix


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["stepguard", "empty"])
    parser.add_argument("--policies", default="policies")
    parser.add_argument("--audit-file", default="benchmarks/.work/audit.jsonl")
    parser.add_argument("--socket", default=None)
    parser.add_argument("--mode", choices=["sync", "asyncio"], default=Settings().server_mode)
    parser.add_argument("--cache-max-entries", type=int, default=None)
    parser.add_argument(
        "--workers", type=int, default=1, help="stepguard worker processes (default 1)"
    )
    args = parser.parse_args()
    if args.socket:
        Path(args.socket).unlink(missing_ok=True)
    if args.kind == "empty":
        server, tcp, unix = _empty_server(args.mode, args.socket)
        tune_gc_for_serving()  # the same stack as stepguard serve, GC settings included
        print(f"READY {tcp} {unix}", flush=True)
        sys.stdin.read()
        server.stop(1).wait()
        return 0
    extra: dict[str, Any] = {}
    if args.cache_max_entries is not None:
        extra["cache_max_entries"] = args.cache_max_entries
    settings = Settings(
        policies=Path(args.policies),
        listen="127.0.0.1:0",
        socket=Path(args.socket) if args.socket else None,
        metrics_listen=None,
        audit_file=args.audit_file,
        server_mode=args.mode,
        **extra,
    )
    if args.workers > 1:
        return _supervised(args, dataclasses.replace(settings, worker_processes=args.workers))
    sidecar = Sidecar(settings)
    endpoints = sidecar.start()
    tune_gc_for_serving()
    unix = f"unix:{endpoints.socket}" if endpoints.socket else "-"
    print(f"READY {endpoints.tcp} {unix}", flush=True)
    sys.stdin.read()
    sidecar.stop(1)
    return 0


def _supervised(args: argparse.Namespace, settings: Settings) -> int:
    """`stepguard serve --workers N` as production runs it: a supervisor and N workers."""
    from sidecar.serving.supervisor import Supervisor

    command = [sys.executable, "-m", "sidecar.cli", "serve", "--log-level", "WARNING"]
    command += ["--policies", str(settings.policies), "--audit-file", settings.audit_file]
    command += ["--server-mode", settings.server_mode, "--metrics-listen", "off"]
    command += ["--cache-max-entries", str(settings.cache_max_entries)]
    if settings.socket is not None:
        command += ["--socket", str(settings.socket)]
    supervisor = Supervisor(settings, command)
    endpoints = supervisor.start()
    unix = f"unix:{endpoints.socket}" if endpoints.socket else "-"
    print(f"READY {endpoints.tcp} {unix}", flush=True)
    sys.stdin.read()
    supervisor.stop(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
