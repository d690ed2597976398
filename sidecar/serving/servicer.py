"""gRPC handlers: bytes -> message -> decider -> answer bytes. Thin by design.

The decider (decision/decider.py) owns everything between: the raw-bytes
cache lookup, validation, evaluation, audit and metrics; a handler only
converts, and turns refusals into statuses.

Handlers take one bundle snapshot per call, so validation and evaluation of a
request always see the same policies, even across a reload.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.bundle import Bundle
from sidecar.core.decoderefusal import decode_refusal
from sidecar.core.errors import AuditError, InvalidRequest
from sidecar.core.event import CallMeta, recorded_request_id
from sidecar.core.outcome import outcome_from_proto
from sidecar.core.planreq import plan_from_proto
from sidecar.core.validate import Limits
from sidecar.decision.decider import Decided, Decider
from sidecar.decision.identity import IdentityRefused, caller_identity
from sidecar.decision.metrics import Metrics
from sidecar.decision.outcomes import OutcomeRecorder
from sidecar.decision.plans import PlanRecorder
from sidecar.serving.answer import Answers, to_response
from sidecar.serving.outcomeanswer import outcomes_response, recorded_response
from sidecar.serving.plananswer import plan_response
from sidecar.serving.streams import Slot, StreamSlots, caller_key

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
T = TypeVar("T")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


class AuthorizerServicer(pb_grpc.AuthorizerServicer):
    def __init__(
        self,
        bundle: Callable[[], Bundle],
        decider: Decider,
        limits: Limits,
        metrics: Metrics,
        max_batch_bytes: int,
        *,
        max_streams: int = 8,
        max_streams_per_caller: int = 0,
        stream_idle_timeout_s: float = 60.0,
        outcomes: OutcomeRecorder | None = None,
        plans: PlanRecorder | None = None,
    ) -> None:
        self._bundle = bundle
        self._plans = plans  # AuthorizePlan; UNIMPLEMENTED without one
        self._outcomes = outcomes  # RecordOutcome(s); UNIMPLEMENTED without one
        self._decider = decider
        self._limits = limits
        self._metrics = metrics
        self._max_batch_bytes = max_batch_bytes
        # Each open AuthorizeStream holds a worker: cap them so unary calls keep
        # theirs, per caller too, and close idle ones (sidecar/serving/streams.py).
        self.max_streams = max_streams
        per_caller = max_streams_per_caller or max(1, max_streams // 2)
        self.streams = StreamSlots(max_streams, per_caller, stream_idle_timeout_s, metrics)
        self._answers = Answers()

    def Authorize(
        self, request: pb.AuthorizeRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizeResponse:
        """The generated base's entry (a message), for add_AuthorizerServicer_to_server."""
        return self._authorize(request, context, to_response)

    def authorize_wire(self, request: pb.AuthorizeRequest, context: grpc.ServicerContext) -> bytes:
        """Authorize as the servers register it: the answer already serialized (answer.py)."""
        return self._authorize(request, context, self._answers.encode)

    def _authorize(
        self,
        request: pb.AuthorizeRequest,
        context: grpc.ServicerContext,
        answer: Callable[[Decided], T],
    ) -> T:
        started = time.perf_counter()
        meta = call_meta(context)  # outside the try: a refused caller keeps its own status
        try:
            return answer(self._decide(request, meta, started))
        except InvalidRequest as exc:
            self._count_invalid(exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:  # an error status, never an ALLOW
            log.exception("Authorize failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the step is not authorized")

    def AuthorizeBatch(
        self, request: pb.AuthorizeBatchRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizeBatchResponse:
        started = time.perf_counter()
        count, size = len(request.items), request.ByteSize()
        if count > self._limits.max_batch_items:
            self._count_invalid(InvalidRequest("items", ""))
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"items: {count} items, over the limit of {self._limits.max_batch_items}",
            )
        if size > self._max_batch_bytes:
            self._count_invalid(InvalidRequest("items", ""))
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"items: batch is {size} bytes, over the limit of {self._max_batch_bytes}",
            )
        meta = call_meta(context)
        out = pb.AuthorizeBatchResponse()
        # One bundle snapshot for the whole batch; its misses go to Cedar together.
        decided = self._decider.decide_messages(
            self._bundle(), request.items, meta, self._limits, started=started
        )
        for i, answer in enumerate(decided):
            slot = out.results.add()
            try:
                if isinstance(answer, Exception):
                    raise answer
                slot.response.CopyFrom(to_response(answer))
            except InvalidRequest as exc:
                self._count_invalid(exc)
                slot.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                slot.error.message = f"items[{i}].{exc}"
            except Exception:  # this item fails closed; the rest go on
                log.exception("AuthorizeBatch item %d failed", i)
                slot.error.code = grpc.StatusCode.INTERNAL.value[0]
                slot.error.message = f"items[{i}]: internal error; the step is not authorized"
        return out

    def authorize_stream(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """AuthorizeStream: one response per request, in order (see the proto).

        Requests arrive as bytes so that an undecodable one is INVALID_ARGUMENT.
        """
        meta = call_meta(context)
        slot = self.streams.open(
            caller_key(meta.peer, meta.identity), lambda why: _end_sync_call(context, why)
        )
        if isinstance(slot, str):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, slot)
        assert isinstance(slot, Slot)
        try:
            for raw in requests:
                if not slot.begin():  # closed as idle as it arrived: never decided
                    return
                try:
                    answer = self.stream_item(raw, meta, context)
                finally:
                    slot.end()
                yield answer
        except grpc.RpcError:
            if not slot.closed_idle:  # the reaper ended the call (RESOURCE_EXHAUSTED)
                raise
        finally:
            slot.release()

    def stream_item(self, raw: bytes, meta: CallMeta, context: grpc.ServicerContext) -> bytes:
        """One AuthorizeStream answer, serialized (answer.py)."""
        started = time.perf_counter()
        item = self._stream_request(raw, context)
        try:
            decided: Decided | Exception = self._decide(item.request, meta, started)
        except Exception as exc:  # noqa: BLE001 - this item's answer (_stream_answer)
            decided = exc
        return self._stream_answer(item.id, decided)

    def stream_window(self, raws: Sequence[bytes], meta: CallMeta) -> tuple[list[bytes], str]:
        """The answers to AuthorizeStream requests that arrived together, in order, their
        misses decided in one engine call (decider.decide_messages, as AuthorizeBatch).

        Also returns why the stream ends ("" when it goes on): an undecodable
        request is INVALID_ARGUMENT for the stream, after the answers to the
        requests before it, as when they come one at a time.
        """
        started = time.perf_counter()
        items: list[pb.AuthorizeStreamRequest] = []
        ending = ""
        for raw in raws:
            try:
                items.append(pb.AuthorizeStreamRequest.FromString(raw))
            except DecodeError as exc:
                ending = undecodable(raw, pb.AuthorizeStreamRequest, self._limits, exc)
                break
        decided = self._decider.decide_messages(
            self._bundle(), [item.request for item in items], meta, self._limits, started=started
        )
        answers = [self._stream_answer(i.id, d) for i, d in zip(items, decided, strict=True)]
        return answers, ending

    def _stream_request(self, raw: bytes, context: grpc.ServicerContext) -> Any:
        try:
            return pb.AuthorizeStreamRequest.FromString(raw)
        except DecodeError as exc:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                undecodable(raw, pb.AuthorizeStreamRequest, self._limits, exc),
            )

    def _stream_answer(self, item_id: int, decided: Decided | Exception) -> bytes:
        """A stream item's answer: its decision, or its refusal (the stream goes on)."""
        if isinstance(decided, Decided):
            try:
                return self._answers.encode_stream(item_id, decided)
            except Exception as exc:  # noqa: BLE001 - fails closed below
                decided = exc
        out = pb.AuthorizeStreamResponse(id=item_id)
        if isinstance(decided, InvalidRequest):
            self._count_invalid(decided)
            out.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            out.error.message = str(decided)
        else:  # this item fails closed; the stream goes on
            log.error("AuthorizeStream item %d failed", item_id, exc_info=decided)
            out.error.code = grpc.StatusCode.INTERNAL.value[0]
            out.error.message = "internal error; the step is not authorized"
        return out.SerializeToString()

    def AuthorizeStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        """The generated base's entry (parsed requests), for add_AuthorizerServicer_to_server."""
        answers = self.authorize_stream((r.SerializeToString() for r in request_iterator), context)
        return (pb.AuthorizeStreamResponse.FromString(raw) for raw in answers)

    # --- outcomes (docs/api.md, "Outcomes") ---------------------------------------

    def RecordOutcome(
        self, request: pb.RecordOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.RecordOutcomeResponse:
        """Judge and record one outcome: INVALID_ARGUMENT naming the field, UNAVAILABLE
        when the trail cannot take it (not recorded), else what was recorded."""
        recorder = self._outcome_recorder(context)
        meta = call_meta(context)
        try:
            return recorded_response(recorder.record(outcome_from_proto(request), meta))
        except InvalidRequest as exc:
            self._count_invalid(exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except AuditError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"outcome not recorded: {exc}")
        except Exception:
            log.exception("RecordOutcome failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the outcome is not recorded")
        raise AssertionError("unreachable")  # pragma: no cover

    def RecordOutcomes(
        self, request: pb.RecordOutcomesRequest, context: grpc.ServicerContext
    ) -> pb.RecordOutcomesResponse:
        """Many outcomes, one result each in order; an invalid item fails only itself."""
        recorder = self._outcome_recorder(context)
        count = len(request.items)
        if count > self._limits.max_batch_items:
            self._count_invalid(InvalidRequest("items", ""))
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"items: {count} items, over the limit of {self._limits.max_batch_items}",
            )
        meta = call_meta(context)
        return outcomes_response(request.items, recorder, meta, self._count_invalid)

    # --- plans (docs/api.md, "Plans") ------------------------------------------------

    def AuthorizePlan(
        self, request: pb.AuthorizePlanRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizePlanResponse:
        """Predict a run's steps and record the plan: INVALID_ARGUMENT naming the field,
        UNAVAILABLE when the trail cannot take the plan. Never on the decision path."""
        if self._plans is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server answers no plans")
        assert self._plans is not None
        meta = call_meta(context)
        bundle = self._bundle()  # one snapshot for validation and every step
        try:
            plan = plan_from_proto(request, bundle, self._limits)
            return plan_response(self._plans.plan(bundle, plan, meta))
        except InvalidRequest as exc:
            self._count_invalid(exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except AuditError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"plan not recorded: {exc}")
        except Exception:
            log.exception("AuthorizePlan failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error; no plan was made")
        raise AssertionError("unreachable")  # pragma: no cover

    def _outcome_recorder(self, context: grpc.ServicerContext) -> OutcomeRecorder:
        if self._outcomes is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server records no outcomes")
        assert self._outcomes is not None
        return self._outcomes

    def _decide(self, msg: pb.AuthorizeRequest, meta: CallMeta, started: float) -> Decided:
        """One request, decided on one bundle snapshot (decider.py owns the order)."""
        return self._decider.decide_message(
            self._bundle(),
            msg,
            meta,
            self._limits,
            started=started,
        )

    def _count_invalid(self, exc: InvalidRequest) -> None:
        top = re.split(r"[.\[]", exc.field, maxsplit=1)[0]
        self._metrics.invalid_requests.labels(api="grpc", field=top).inc()


def generic_handler(servicer: AuthorizerServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """Register the unary methods so that undecodable bytes are INVALID_ARGUMENT.

    grpcio answers a request its deserializer cannot parse with INTERNAL; the
    API promises INVALID_ARGUMENT for any malformed input, so handlers receive
    raw bytes and parse them here.
    """
    return method_handlers(
        _parsing(servicer.authorize_wire, pb.AuthorizeRequest, servicer._limits),
        _parsing(servicer.AuthorizeBatch, pb.AuthorizeBatchRequest, servicer._limits),
        servicer.authorize_stream,
    )


def method_handlers(
    authorize: Callable[..., Any], batch: Callable[..., Any], stream: Callable[..., Any]
) -> grpc.GenericRpcHandler[Any, Any]:
    """The Authorizer's methods, taking raw request bytes (sync or asyncio handlers).

    Authorize and AuthorizeStream answers are mostly bytes already (answer.py);
    a message (a refusal made after the fact) is serialized here.
    """
    handlers = {
        "Authorize": grpc.unary_unary_rpc_method_handler(
            authorize, response_serializer=_serialized
        ),
        "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(
            batch, response_serializer=pb.AuthorizeBatchResponse.SerializeToString
        ),
        "AuthorizeStream": grpc.stream_stream_rpc_method_handler(
            stream, response_serializer=_serialized
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["Authorizer"].full_name
    return grpc.method_handlers_generic_handler(service, handlers)


def _serialized(answer: bytes | Message) -> bytes:
    return answer if isinstance(answer, bytes) else answer.SerializeToString()


def _parsing(
    fn: Callable[[M, grpc.ServicerContext], T], request_type: type[M], limits: Limits
) -> Callable[[bytes, grpc.ServicerContext], T]:
    def handler(raw: bytes, context: grpc.ServicerContext) -> T:
        try:
            msg = request_type.FromString(raw)
        except DecodeError as exc:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, undecodable(raw, request_type, limits, exc)
            )
        return fn(msg, context)

    return handler


def undecodable(raw: bytes, request_type: type[Message], limits: Limits, exc: Exception) -> str:
    """Why bytes the decoder refused are INVALID_ARGUMENT, naming the field when it can.

    protobuf refuses deep nesting itself, before validation's depth check;
    `decode_refusal` finds the field so that this refusal names it too.
    """
    refusal = decode_refusal(raw, request_type.DESCRIPTOR, limits, exc)
    if refusal is not None:
        return str(refusal)
    return f"request: not a valid {request_type.DESCRIPTOR.full_name} message"


def call_meta(context: grpc.ServicerContext) -> CallMeta:
    trace = correlation = ""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            m = _TRACEPARENT.fullmatch(value.strip())
            if m and m["trace"] != "0" * 32:
                trace = m["trace"]
        elif key == "x-request-id":
            correlation = recorded_request_id(value)
    try:
        identity = caller_identity(context.auth_context())
    except IdentityRefused as exc:  # a certificate breaking an identity rule gets no decision
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"caller: {exc}")
    return CallMeta(
        peer=context.peer() or "", identity=identity, trace_id=trace, request_id=correlation
    )


def outcome_methods(
    one: Callable[..., Any], many: Callable[..., Any]
) -> grpc.GenericRpcHandler[Any, Any]:
    """RecordOutcome(s), registered beside the Authorize methods (same service)."""
    handlers = {
        "RecordOutcome": grpc.unary_unary_rpc_method_handler(
            one, response_serializer=pb.RecordOutcomeResponse.SerializeToString
        ),
        "RecordOutcomes": grpc.unary_unary_rpc_method_handler(
            many, response_serializer=pb.RecordOutcomesResponse.SerializeToString
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["Authorizer"].full_name
    return grpc.method_handlers_generic_handler(service, handlers)


def outcome_handler(servicer: AuthorizerServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The outcome methods for the sync server (raw bytes in: undecodable is INVALID_ARGUMENT)."""
    return outcome_methods(
        _parsing(servicer.RecordOutcome, pb.RecordOutcomeRequest, servicer._limits),
        _parsing(servicer.RecordOutcomes, pb.RecordOutcomesRequest, servicer._limits),
    )


def plan_methods(plan: Callable[..., Any]) -> grpc.GenericRpcHandler[Any, Any]:
    """AuthorizePlan, registered beside the Authorize methods (same service)."""
    handlers = {
        "AuthorizePlan": grpc.unary_unary_rpc_method_handler(
            plan, response_serializer=pb.AuthorizePlanResponse.SerializeToString
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["Authorizer"].full_name
    return grpc.method_handlers_generic_handler(service, handlers)


def plan_handler(servicer: AuthorizerServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """AuthorizePlan for the sync server (raw bytes in: undecodable is INVALID_ARGUMENT)."""
    return plan_methods(_parsing(servicer.AuthorizePlan, pb.AuthorizePlanRequest, servicer._limits))


# --- the asyncio server -------------------------------------------------------


def _end_sync_call(context: grpc.ServicerContext, details: str) -> None:
    """End a sync server call from another thread, with RESOURCE_EXHAUSTED and `details`.

    grpcio's public `cancel()` sends a bare CANCELLED (RST_STREAM), which tells
    the caller nothing; the call object underneath can end it with a status.
    """
    call: Any = getattr(getattr(context, "_rpc_event", None), "call", None)
    if call is not None:
        call.cancel(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], details)
    else:  # pragma: no cover - another grpcio layout: still ended, as CANCELLED
        context.cancel()  # type: ignore[no-untyped-call]
