"""The blocking client and its AuthorizeStream: ask before every step, fail closed."""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.client.channels import spread_over_workers
from sidecar.client.decisions import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    Batch,
    DecisionKind,
    RequestLike,
    StepDecision,
    StepDenied,
    denied,
    failed_call,
    from_response,
    item_decision,
    metadata,
    to_proto,
)
from sidecar.client.outcomes import (
    OutcomeBatch,
    OutcomeReport,
    outcome_failure,
    outcome_message,
    outcome_report,
)
from sidecar.client.plans import PlanLike, PlanReport, plan_failure, plan_message, plan_report
from sidecar.client.reporter import OutcomeReporter

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class StepguardClient:
    """Blocking client. `target` is HOST:PORT or `unix:///path/to.sock`.

    For TLS or mutual TLS give `credentials=channel_credentials(...)`;
    `options` are gRPC channel arguments, for example
    `[("grpc.ssl_target_name_override", "stepguard.example")]` when the server
    certificate names a host other than the one dialled.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.timeout = timeout
        target, options = spread_over_workers(target, options)
        self._channel = (
            grpc.secure_channel(target, credentials, options=list(options))
            if credentials is not None
            else grpc.insecure_channel(target, options=list(options))
        )
        self._stub = pb_grpc.AuthorizerStub(self._channel)
        self._reporter: OutcomeReporter | None = None
        self._reporter_lock = threading.Lock()

    def authorize(
        self,
        request: RequestLike,
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> StepDecision:
        try:
            msg = to_proto(request)
            resp = self._stub.Authorize(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return failed_call(exc)
        return from_response(resp)

    def authorize_batch(
        self,
        requests: Sequence[RequestLike],
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> list[StepDecision]:
        """One decision per request, in order; a failure denies the items it touches."""
        batch = Batch(requests)
        if not batch.message.items:  # nothing to send: every item (if any) denied here
            return batch.decisions(pb.AuthorizeBatchResponse())
        try:
            resp = self._stub.AuthorizeBatch(
                batch.message,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return batch.failed(exc)
        return batch.decisions(resp)

    def record_outcome(
        self,
        decision_id: str,
        status: str,
        *,
        effect: Mapping[str, Any] | None = None,
        error_class: str = "",
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        attempt: int = 0,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> OutcomeReport:
        """Report what the step decided as `decision_id` did; never raises.

        `status`: succeeded, failed (give `error_class`), skipped or timed_out.
        `effect` as JSON (docs/api.md): `identity` ({"type", "id"}),
        `target_system`, `entitlements_added`, `entitlements_removed`,
        `credential` ({"id", "change": "issued"|"revoked", "issued_at",
        "expires_at"}, times as datetimes or RFC 3339), `account` (created,
        disabled, deleted). For orchestrator hooks (success, failure, skip,
        retry): a report that cannot be made comes back with `recorded`
        False, so a hook never fails its task by reporting.
        """
        try:
            msg = outcome_message(
                decision_id,
                status,
                effect=effect,
                error_class=error_class,
                started_at=started_at,
                finished_at=finished_at,
                attempt=attempt,
            )
            resp = self._stub.RecordOutcome(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - never fail the caller's task
            return outcome_failure(exc)
        return outcome_report(resp)

    @property
    def outcomes(self) -> OutcomeReporter:
        """This client's outcome reporter (sidecar/client/reporter.py): made on first
        use with the defaults; `close` flushes it."""
        with self._reporter_lock:
            if self._reporter is None:
                self._reporter = OutcomeReporter(self)
            return self._reporter

    def report_outcome(
        self,
        decision_id: str,
        status: str,
        *,
        effect: Mapping[str, Any] | None = None,
        error_class: str = "",
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        attempt: int = 0,
        on_result: Callable[[OutcomeReport], object] | None = None,
    ) -> bool:
        """Queue what the step did, to be sent in a batch; never blocks, never raises.

        The default way to report outcomes: `record_outcome`'s arguments, sent
        by `outcomes` (a RecordOutcomes batch every 128 outcomes or 0.1 s, on
        `flush_outcomes`, `close` and at exit). True when queued; an outcome not
        recorded is logged and counted (`outcomes.stats`), and `on_result`, if
        given, gets its report. Use `record_outcome` when the step needs the
        sidecar's answer (a violation flag) before it goes on.
        """
        return self.outcomes.report(
            decision_id,
            status,
            effect=effect,
            error_class=error_class,
            started_at=started_at,
            finished_at=finished_at,
            attempt=attempt,
            on_result=on_result,
        )

    def flush_outcomes(self, timeout: float | None = None) -> bool:
        """Send the queued outcomes now and wait; True when none is left pending."""
        with self._reporter_lock:
            reporter = self._reporter
        return True if reporter is None else reporter.flush(timeout)

    def record_outcomes(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> list[OutcomeReport]:
        """Many outcomes in one call, one report each in order; never raises.

        Each item has `record_outcome`'s arguments as keys (`decision_id`,
        `status`, `effect`, `error_class`, `started_at`, `finished_at`,
        `attempt`); an item that is wrong is refused alone.
        """
        batch = OutcomeBatch(items)
        if not batch.message.items:
            return batch.reports(pb.RecordOutcomesResponse())
        try:
            resp = self._stub.RecordOutcomes(
                batch.message,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - never fail the caller's task
            return batch.failed(exc)
        return batch.reports(resp)

    def plan(
        self,
        plan: PlanLike,
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> PlanReport:
        """Pre-flight a run's planned steps (AuthorizePlan); never raises.

        `plan` as JSON: `{"run_id", "workflow_id", "steps": [{"step_id",
        "principal", "action", "resource", "context", "unknown": [...], "at"}]}`
        (docs/api.md, "Plans"). A plan never replaces the decisions: every step
        is still decided when it runs.
        """
        try:
            msg = plan_message(plan)
            resp = self._stub.AuthorizePlan(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - a plan never fails the caller
            return plan_failure(exc)
        return plan_report(resp)

    @contextmanager
    def guard(
        self,
        request: RequestLike,
        *,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> Iterator[StepDecision]:
        """Run the block only if the step is allowed; raise StepDenied otherwise."""
        decision = self.authorize(request, traceparent=traceparent, request_id=request_id)
        if not decision.allowed:
            raise StepDenied(decision)
        yield decision

    def guarded(self, request: RequestLike) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator form of `guard`: the function runs only when allowed."""

        def wrap(fn: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(fn)
            def inner(*args: P.args, **kwargs: P.kwargs) -> R:
                with self.guard(request):
                    return fn(*args, **kwargs)

            return inner

        return wrap

    def stream(
        self, *, traceparent: str | None = None, request_id: str | None = None
    ) -> DecisionStream:
        """One AuthorizeStream call for many decisions, shared by any number of threads.

        Cheaper per decision than `authorize` (docs/performance.md). Use it as a
        context manager; `traceparent` and `request_id` apply to every decision
        on it. If the stream cannot open or breaks, later calls fall back to
        `authorize` (decisions keep flowing, fail closed as ever) and `broken`
        says why.
        """
        return DecisionStream(self, traceparent, request_id)

    def close(self) -> None:
        """Flush the queued outcomes (at most the reporter's close timeout), then close."""
        with self._reporter_lock:
            reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.close()
        self._channel.close()

    def __enter__(self) -> StepguardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CLOSE = object()  # ends the request iterator
_RETRY = denied("")  # to a waiting caller: never decided; ask over `authorize` instead
# Refusals that come before the sidecar read a single item (so nothing was decided).
_REFUSED_AT_OPEN = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED)


class DecisionStream:
    """Decisions over one AuthorizeStream call (see `StepguardClient.stream`).

    Each `authorize` sends one item with an id of its own and waits for the
    answer with that id; a reader thread hands answers to their callers, so
    threads share the stream without waiting for each other's decisions.
    """

    def __init__(
        self, client: StepguardClient, traceparent: str | None, request_id: str | None
    ) -> None:
        self._client = client
        self._call_ids = {"traceparent": traceparent, "request_id": request_id}
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, Future[StepDecision]] = {}
        self._broken = ""
        self._closing = False
        answers = client._stub.AuthorizeStream(
            self._requests(), metadata=metadata(traceparent, request_id)
        )
        self._reader = threading.Thread(
            target=self._read, args=(answers,), name="stepguard-stream", daemon=True
        )
        self._reader.start()

    @property
    def broken(self) -> str:
        """Why the stream stopped ("" while it works); calls then go through `authorize`."""
        return self._broken

    def authorize(self, request: RequestLike, *, timeout: float | None = None) -> StepDecision:
        """The decision for `request`; never raises (a failure is a DENY saying why)."""
        timeout = self._client.timeout if timeout is None else timeout
        try:
            msg = to_proto(request)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return failed_call(exc)
        answer: Future[StepDecision] = Future()
        with self._lock:
            if not self._broken:
                item_id = next(self._ids)
                self._waiting[item_id] = answer
        if self._broken:
            return self._client.authorize(msg, timeout=timeout, **self._call_ids)
        self._items.put(pb.AuthorizeStreamRequest(id=item_id, request=msg))
        try:
            decision = answer.result(timeout=timeout)
        except FutureTimeout:
            with self._lock:
                self._waiting.pop(item_id, None)
            return denied(
                f"stepguard call failed (DEADLINE_EXCEEDED): no answer in {timeout} s",
                DecisionKind.DEADLINE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        if decision is _RETRY:
            return self._client.authorize(msg, timeout=timeout, **self._call_ids)
        return decision

    def close(self) -> None:
        """End the stream; decisions still awaited are denied."""
        self._closing = True
        self._items.put(_CLOSE)
        self._reader.join(timeout=max(self._client.timeout, 1.0))
        self._fail("the stream was closed")

    def __enter__(self) -> DecisionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _requests(self) -> Iterator[pb.AuthorizeStreamRequest]:
        while (item := self._items.get()) is not _CLOSE:
            assert isinstance(item, pb.AuthorizeStreamRequest)
            yield item

    def _read(self, answers: Iterator[pb.AuthorizeStreamResponse]) -> None:
        try:
            for out in answers:
                with self._lock:
                    waiter = self._waiting.pop(out.id, None)
                if waiter is not None:  # else its caller gave up waiting
                    waiter.set_result(item_decision(out))
        except Exception as exc:  # noqa: BLE001 - whatever broke it, fail closed
            failure = failed_call(exc)
            retry = isinstance(exc, grpc.RpcError) and exc.code() in _REFUSED_AT_OPEN
            self._fail(failure.reason, retry=retry, kind=failure.kind, code=failure.code)
            return
        self._fail("the stream was closed" if self._closing else "the sidecar ended the stream")

    def _fail(
        self,
        reason: str,
        *,
        retry: bool = False,
        kind: DecisionKind = DecisionKind.UNAVAILABLE,
        code: grpc.StatusCode | None = None,
    ) -> None:
        """Later calls go unary; what is awaited is retried so if never decided, else denied.

        A break mid-stream may come after the sidecar decided (and audited) an
        item whose answer was lost: those are denied, never asked twice.
        """
        with self._lock:
            if not self._broken:
                self._broken = reason
                if not self._closing:
                    log.warning("stepguard stream stopped, using unary calls: %s", reason)
            waiting, self._waiting = self._waiting, {}
        self._items.put(_CLOSE)  # the request iterator, if gRPC still reads it, ends
        if kind is DecisionKind.INVALID_REQUEST:  # the stream ended, not this item's fault
            kind = DecisionKind.ERROR
        outcome = _RETRY if retry else denied(f"stepguard stream failed: {reason}", kind, code)
        for waiter in waiting.values():
            waiter.set_result(outcome)
