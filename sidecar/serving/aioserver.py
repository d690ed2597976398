"""The asyncio gRPC server behind the calls `Sidecar` makes on a `grpc.Server`.

`server_mode: asyncio` serves the Authorizer from a grpc.aio server whose
event loop runs in its own thread, so the rest of the sidecar (start, stop,
wait, signals) stays synchronous. Authorizer calls are decided on the loop
(sidecar/serving/aiohandlers.py `aio_generic_handler`); the sync health and reflection
servicers run on a small thread pool, as grpc.aio allows for migration.
docs/performance.md compares this server with the default sync one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc
import grpc.aio

from sidecar.core.errors import ConfigError

T = TypeVar("T")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A loop of the kind the settings name: "uvloop" or "asyncio" (the stdlib's).

    uvloop runs the loop's own work (callbacks, the selector, transports) in
    compiled code; grpc.aio goes round its loop about a dozen times per call.
    """
    if kind == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError as exc:
        raise ConfigError(
            "event_loop uvloop: the uvloop package is not installed "
            f"({exc}); install stepguard's pinned dependencies or set event_loop: asyncio"
        ) from exc
    return uvloop.new_event_loop()


class AioServer(grpc.Server):
    def __init__(
        self, *, options: Sequence[tuple[str, Any]], workers: int, event_loop: str
    ) -> None:
        self._loop = new_event_loop(event_loop)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="stepguard-aio", daemon=True
        )
        self._thread.start()
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max(2, workers // 4), thread_name_prefix="stepguard-sync"
        )
        self._server: grpc.aio.Server = self._run(self._make(options))
        self._done = threading.Event()  # set once stop() has drained and closed

    async def _make(self, options: Sequence[tuple[str, Any]]) -> grpc.aio.Server:
        return grpc.aio.server(migration_thread_pool=self._pool, options=options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _on_loop(self, fn: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return fn(*args)

        return self._run(call())

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._on_loop(self._server.add_generic_rpc_handlers, tuple(generic_rpc_handlers))

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        # Called by generated add_*Servicer_to_server in grpcio >= 1.62 (not in the stubs).
        register = getattr(self._server, "add_registered_method_handlers")  # noqa: B009
        self._on_loop(register, service, handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._on_loop(self._server.add_insecure_port, address)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self._on_loop(self._server.add_secure_port, address, credentials)

    def start(self) -> None:
        self._run(self._server.start())

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop accepting now; the event is set once calls drained (up to `grace`)."""
        stopping = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self._loop)
        stopped = threading.Event()

        def finish() -> None:
            try:
                stopping.result()
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
                self._loop.close()
                self._pool.shutdown(wait=True)
                self._done.set()
                stopped.set()

        threading.Thread(target=finish, name="stepguard-aio-stop", daemon=True).start()
        return stopped

    async def _shutdown(self, grace: float | None) -> None:
        """Stop the server, then end what it leaves on the loop.

        grpc.aio cancels the calls still running at the end of the grace, but
        their tasks may not have finished when the loop stops; a task destroyed
        while pending is reported by asyncio whenever the garbage collector
        gets to it, in whatever code then runs.
        """
        await self._server.stop(grace)
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not current]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stopped (True) or `timeout` passed (False)."""
        return self._done.wait(timeout)
