"""The gRPC handlers on the asyncio server: the same calls as servicer.py, on the loop.

The sync server runs a handler on a worker thread; the asyncio server (the
default) runs the same conversions on its event loop and hands decisions to the
trail's committer without blocking it (`defer_audit`: one wake-up per commit).
The servicer's handlers and conversions are shared; what is loop-specific is here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError, Message

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.decision.decider import Decided
from sidecar.serving.answer import to_response
from sidecar.serving.servicer import (
    AuthorizerServicer,
    call_meta,
    method_handlers,
    outcome_methods,
    plan_methods,
    undecodable,
)
from sidecar.serving.streams import Slot, caller_key

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
T = TypeVar("T")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _SyncView:
    """An asyncio call context seen as the sync handlers expect: `abort` raises."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def auth_context(self) -> Any:
        return self._context.auth_context()


def aio_generic_handler(
    servicer: AuthorizerServicer, *, defer_audit: bool = False
) -> grpc.GenericRpcHandler[Any, Any]:
    """The Authorizer methods for grpc.aio: the sync handlers, run on the event loop.

    A decision is CPU work under the GIL, so each call is decided inline, with
    no hop to a thread pool. With the default durability the audit event is
    written (to the OS) inline too: one write. With `defer_audit` (the server
    sets it for durability fsync) the loop does not wait for the disk: events
    are queued for the trail's committer thread, the loop goes on deciding
    other calls (whose events share the next fsync), and each answer is held
    until its events are on disk. A decision whose event could not be written
    becomes a DENY saying it was not recorded, under an id of its own; the
    others stand, even in the same batch (their events are in the trail).
    """
    decider = servicer._decider
    wakeups: list[_Wakeups] = []  # made on the server's loop, at its first deferred call

    async def run(answer_type: type[Message], fn: Callable[..., T], *args: Any) -> Any:
        """`fn(*args)`, an answer (bytes or an `answer_type` message), held as said above."""
        if not defer_audit:
            return fn(*args)
        if not wakeups:
            wakeups.append(_Wakeups(asyncio.get_running_loop()))

        def settle_unanswered() -> None:  # count them once written; nobody gets the answer
            if pending:
                decider.tickets_done(pending, lambda error: decider.settle(pending, error))

        with decider.deferring() as pending:
            try:
                out = fn(*args)
            except BaseException:
                settle_unanswered()
                raise
        if not pending:
            return out
        written: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        decider.tickets_done(pending, lambda error: wakeups[0].resolve(written, error))
        try:
            error = await written
        except asyncio.CancelledError:  # the caller left; the events are still written
            settle_unanswered()
            raise
        refusals = decider.settle(pending, error)
        if not refusals:
            return out
        answer = answer_type.FromString(out) if isinstance(out, bytes) else out
        return _refused(cast(Message, answer), refusals)

    def unary(
        fn: Callable[[Any, grpc.ServicerContext], Any],
        request_type: type[Message],
        answer_type: type[Message],
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Any]:
        async def handler(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                msg = request_type.FromString(raw)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    undecodable(raw, request_type, servicer._limits, exc),
                )
            try:
                return await run(answer_type, fn, msg, _SyncView(context))
            except _Aborted as stop:
                await context.abort(stop.code, stop.details)
            raise AssertionError("unreachable")  # pragma: no cover

        return handler

    async def stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes | pb.AuthorizeStreamResponse]:
        view = _SyncView(context)
        meta = call_meta(view)  # type: ignore[arg-type]
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        reading = [False]  # awaiting the next request: the only place the reaper cancels

        def end_if_reading() -> None:  # on the loop
            if reading[0] and task is not None:
                task.cancel()

        slot = servicer.streams.open(
            caller_key(meta.peer, meta.identity),
            lambda why: loop.call_soon_threadsafe(end_if_reading),
        )
        if isinstance(slot, str):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, slot)
        assert isinstance(slot, Slot)
        try:
            items = aiter(requests)
            while True:
                reading[0] = True
                try:
                    raw = await anext(items)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not slot.closed_idle:
                        raise
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, slot.closed_idle)
                finally:
                    reading[0] = False
                if not slot.begin():  # closed as idle as it arrived: never decided
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, slot.closed_idle)
                try:
                    out = await run(
                        pb.AuthorizeStreamResponse, servicer.stream_item, raw, meta, view
                    )
                except _Aborted as stop:
                    await context.abort(stop.code, stop.details)
                finally:
                    slot.end()
                yield out
        finally:
            slot.release()

    return method_handlers(
        unary(servicer.authorize_wire, pb.AuthorizeRequest, pb.AuthorizeResponse),
        unary(servicer.AuthorizeBatch, pb.AuthorizeBatchRequest, pb.AuthorizeBatchResponse),
        stream,
    )


def aio_outcome_handler(servicer: AuthorizerServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The outcome methods for grpc.aio: run on a thread, so that a trail lookup or an
    fsync never holds the event loop (outcomes are not on the decision path)."""
    return outcome_methods(
        _on_thread(servicer, servicer.RecordOutcome, pb.RecordOutcomeRequest),
        _on_thread(servicer, servicer.RecordOutcomes, pb.RecordOutcomesRequest),
    )


def aio_plan_handler(servicer: AuthorizerServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """AuthorizePlan for grpc.aio, on a thread like the outcomes: partial evaluation
    takes about a millisecond a step, and the trail write may fsync."""
    return plan_methods(_on_thread(servicer, servicer.AuthorizePlan, pb.AuthorizePlanRequest))


def _on_thread(
    servicer: AuthorizerServicer,
    fn: Callable[[Any, grpc.ServicerContext], Any],
    request_type: type[Message],
) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Any]:
    """A sync handler run on a thread for the event loop (raw bytes in)."""

    def unary(
        fn: Callable[[Any, grpc.ServicerContext], Any], request_type: type[Message]
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Any]:
        async def handler(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                msg = request_type.FromString(raw)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    undecodable(raw, request_type, servicer._limits, exc),
                )
            try:
                view = cast(grpc.ServicerContext, _SyncView(context))
                return await asyncio.to_thread(fn, msg, view)
            except _Aborted as stop:
                await context.abort(stop.code, stop.details)
            raise AssertionError("unreachable")  # pragma: no cover

        return handler

    return unary(fn, request_type)


class _Wakeups:
    """Hands commit outcomes from the trail's committer to the loop, one wake-up per batch.

    Waking the loop costs a syscall and a loop pass; a commit finishes many
    calls at once, so their futures are resolved together.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[str], str]] = []

    def resolve(self, future: asyncio.Future[str], error: str) -> None:
        """From any thread: set `future` to `error` on the loop, soon."""
        with self._lock:
            self._ready.append((future, error))
            if len(self._ready) > 1:  # a wake-up is on its way already
                return
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for future, error in ready:
            if not future.done():
                future.set_result(error)


def _refused(out: M, refusals: Mapping[str, Decided]) -> M:
    """`out` with each decision whose event was not written replaced by its refusal.

    `refusals` maps an answered decision id to the DENY (with a new id) that
    replaces it; decisions not in it were recorded and stand.
    """
    if isinstance(out, pb.AuthorizeResponse):
        refusal = refusals.get(out.decision_id)
        if refusal is None:
            return out
        refused = to_response(refusal)
        refused.policy_revision = out.policy_revision
        return cast(M, refused)
    if isinstance(out, pb.AuthorizeBatchResponse):
        for slot in out.results:
            if slot.HasField("response"):
                slot.response.CopyFrom(_refused(slot.response, refusals))
    elif isinstance(out, pb.AuthorizeStreamResponse) and out.HasField("response"):
        out.response.CopyFrom(_refused(out.response, refusals))
    return out
