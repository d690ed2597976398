"""The gRPC handlers on the asyncio server: the same calls as servicer.py, on the loop.

The sync server runs a handler on a worker thread; the asyncio server (the
default) runs the same conversions on its event loop and hands decisions to the
trail's committer without blocking it (`defer_audit`: one wake-up per commit).
The servicer's handlers and conversions are shared; what is loop-specific is here.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError, Message

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.decision.decider import BATCH_WINDOW, Decided
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
        # Requests are read ahead into a small queue, so that those that arrived
        # together are decided together: a window of up to BATCH_WINDOW, its
        # misses in one engine call. With deferred audit (fsync) one at a time,
        # each answer held for its own events (`run`).
        widest = 1 if defer_audit else BATCH_WINDOW
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(2 * BATCH_WINDOW)
        reader = asyncio.ensure_future(_read_ahead(requests, queue))
        try:
            while True:
                reading[0] = True
                try:
                    first = await queue.get()
                except asyncio.CancelledError:
                    if not slot.closed_idle:
                        raise
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, slot.closed_idle)
                finally:
                    reading[0] = False
                # A read completes only when the loop runs: give requests already on
                # their way a few turns to arrive (each costs microseconds; a lone
                # request waits one), so that windows form from the start.
                for _ in range(GATHER_TURNS if widest > 1 and isinstance(first, bytes) else 0):
                    before = queue.qsize()
                    await asyncio.sleep(0)
                    if queue.qsize() == before or queue.qsize() >= widest - 1:
                        break
                window, last = _window(first, queue, widest)
                if window and not slot.begin():  # closed as idle as it arrived: never decided
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, slot.closed_idle)
                try:
                    if len(window) == 1:
                        answers = [
                            await run(
                                pb.AuthorizeStreamResponse,
                                servicer.stream_item,
                                window[0],
                                meta,
                                view,
                            )
                        ]
                        ending = ""
                    elif window:
                        answers, ending = servicer.stream_window(window, meta)
                    else:
                        answers, ending = [], ""
                except _Aborted as stop:
                    await context.abort(stop.code, stop.details)
                finally:
                    if window:
                        slot.end()
                for out in answers:
                    yield out
                if ending:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ending)
                if isinstance(last, BaseException):
                    raise last
                if last is None:
                    return
        finally:
            reader.cancel()
            slot.release()

    return method_handlers(
        unary(servicer.authorize_wire, pb.AuthorizeRequest, pb.AuthorizeResponse),
        unary(servicer.AuthorizeBatch, pb.AuthorizeBatchRequest, pb.AuthorizeBatchResponse),
        stream,
    )


_DECISION_ID_OF = operator.attrgetter("decision_id")


def aio_outcome_handler(
    servicer: AuthorizerServicer, *, defer_audit: bool = False
) -> grpc.GenericRpcHandler[Any, Any]:
    """The outcome methods for grpc.aio.

    An outcome whose decisions are all in the recorder's memory (the usual case:
    reported moments after its decision) is recorded inline on the loop, as a
    decision is: an index lookup and one trail write, no thread hop. One that
    needs the trail files searched, or a trail that fsyncs (`defer_audit`), runs
    on a thread, so that neither holds the event loop.
    """
    recorder = servicer._outcomes

    def in_memory(msg: Any) -> object:
        """Whether every item's decision is in memory: then (truthy) the items as read
        here, which the handler keeps while the call runs, so that reading them again
        finds the same Python objects (upb makes and drops one per item otherwise)."""
        if defer_audit or recorder is None:
            return False
        items = list(msg.items) if isinstance(msg, pb.RecordOutcomesRequest) else [msg]
        if recorder.index.holds_all(map(_DECISION_ID_OF, items)):
            return items or True
        return False

    return outcome_methods(
        _on_thread(servicer, servicer.RecordOutcome, pb.RecordOutcomeRequest, in_memory),
        _on_thread(servicer, servicer.RecordOutcomes, pb.RecordOutcomesRequest, in_memory),
    )


def aio_plan_handler(servicer: AuthorizerServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """AuthorizePlan for grpc.aio, on a thread like the outcomes: partial evaluation
    takes about a millisecond a step, and the trail write may fsync."""
    return plan_methods(_on_thread(servicer, servicer.AuthorizePlan, pb.AuthorizePlanRequest))


def _on_thread(
    servicer: AuthorizerServicer,
    fn: Callable[[Any, grpc.ServicerContext], Any],
    request_type: type[Message],
    inline: Callable[[Any], object] = lambda _msg: False,
) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Any]:
    """A sync handler run on a thread for the event loop (raw bytes in), or on the
    loop itself for a message `inline` says is quick (its truthy answer is kept
    until the call returns)."""

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
                kept = inline(msg)
                if kept:
                    return fn(msg, view)
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


_MORE: Any = object()  # `_window`: the stream goes on
GATHER_TURNS = 4  # loop turns a stream's first request waits for others (see `stream`)


async def _read_ahead(
    requests: AsyncIterator[bytes], queue: asyncio.Queue[bytes | BaseException | None]
) -> None:
    """Put each request of the stream in `queue`, then None at its end (or what reading raised)."""
    try:
        async for raw in requests:
            await queue.put(raw)
    except asyncio.CancelledError:
        raise  # the call is over: nobody reads the queue
    except BaseException as exc:  # noqa: BLE001 - the handler raises it, in order
        await queue.put(exc)
        return
    await queue.put(None)


def _window(
    first: bytes | BaseException | None,
    queue: asyncio.Queue[bytes | BaseException | None],
    widest: int,
) -> tuple[list[bytes], Any]:
    """The requests ready now (`first`, then what is queued, up to `widest`), and what
    came after them: None (the stream ended), an exception (reading failed) or _MORE."""
    window: list[bytes] = []
    item = first
    while isinstance(item, bytes):
        window.append(item)
        if len(window) >= widest or queue.empty():
            return window, _MORE
        item = queue.get_nowait()
    return window, item


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
