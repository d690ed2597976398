"""The asyncio client, with the same fail-closed contract as the blocking one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import grpc
import grpc.aio

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.client.channels import spread_over_workers
from sidecar.client.decisions import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT_S,
    Batch,
    RequestLike,
    StepDecision,
    StepDenied,
    failed_call,
    from_response,
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
from sidecar.client.reporter import AsyncOutcomeReporter


class AsyncStepguardClient:
    """asyncio client with the same fail-closed contract."""

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
        # Kept for the outcome reporter's last flush at exit (a blocking channel).
        self.target, self.credentials, self.options = target, credentials, tuple(options)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=list(options))
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=list(options))
        )
        self._stub = pb_grpc.AuthorizerStub(self._channel)
        self._reporter: AsyncOutcomeReporter | None = None

    async def authorize(
        self,
        request: RequestLike,
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> StepDecision:
        try:
            msg = to_proto(request)
            call: Awaitable[pb.AuthorizeResponse] = self._stub.Authorize(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return failed_call(exc)
        return from_response(resp)

    async def authorize_batch(
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
            call: Awaitable[pb.AuthorizeBatchResponse] = self._stub.AuthorizeBatch(
                batch.message,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return batch.failed(exc)
        return batch.decisions(resp)

    async def record_outcome(
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
        """Like `StepguardClient.record_outcome` (arguments and effect there): never raises."""
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
            call: Awaitable[pb.RecordOutcomeResponse] = self._stub.RecordOutcome(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - never fail the caller's task
            return outcome_failure(exc)
        return outcome_report(resp)

    @property
    def outcomes(self) -> AsyncOutcomeReporter:
        """This client's outcome reporter (made on first use; `close` flushes it)."""
        if self._reporter is None:
            self._reporter = AsyncOutcomeReporter(self)
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
        """Like `StepguardClient.report_outcome`: queued for a batch, a plain call (not
        awaited) on the client's loop; never blocks, never raises."""
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

    async def flush_outcomes(self, timeout: float | None = None) -> bool:
        """Send the queued outcomes now and wait; True when none is left pending."""
        return True if self._reporter is None else await self._reporter.flush(timeout)

    async def record_outcomes(
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
            call: Awaitable[pb.RecordOutcomesResponse] = self._stub.RecordOutcomes(
                batch.message,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - never fail the caller's task
            return batch.failed(exc)
        return batch.reports(resp)

    async def plan(
        self,
        plan: PlanLike,
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> PlanReport:
        """Pre-flight a run's planned steps; never raises (as `StepguardClient.plan`)."""
        try:
            msg = plan_message(plan)
            call: Awaitable[pb.AuthorizePlanResponse] = self._stub.AuthorizePlan(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - a plan never fails the caller
            return plan_failure(exc)
        return plan_report(resp)

    async def check(
        self,
        request: RequestLike,
        *,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> StepDecision:
        """Like `guard`: return the decision when allowed, raise StepDenied otherwise."""
        decision = await self.authorize(request, traceparent=traceparent, request_id=request_id)
        if not decision.allowed:
            raise StepDenied(decision)
        return decision

    async def close(self) -> None:
        """Flush the queued outcomes (at most the reporter's close timeout), then close."""
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            await reporter.close()
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncStepguardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
