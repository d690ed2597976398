"""The orchestrator-side client: ask before every step, fail closed.

`authorize` never raises. An unreachable sidecar, a deadline, a bad request
or anything else gives a DENY `StepDecision` whose `reason` says why, so a
caller that forgets a try/except cannot go on by accident. `guard` is the
opposite on purpose: it raises `StepDenied` so the guarded step does not run.

    client = StepguardClient("unix:///run/stepguard/grpc.sock")
    with client.guard({"principal": ..., "action": ..., "resource": ...}) as decision:
        issue_credential(ttl=decision.max_credential_ttl)

Every call takes an optional `traceparent` (W3C trace context) and
`request_id` (a correlation id); the sidecar records them in the decision's
audit event as `trace_id` and `request_id`, so an auditor can join the trail
with the orchestrator's traces and logs.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.errors import InvalidRequest, StepguardError
from sidecar.jsonreq import request_from_json

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 2.0

RequestLike = pb.AuthorizeRequest | Mapping[str, Any]
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class StepDecision:
    allowed: bool
    reason: str
    decision_id: str = ""
    policy_revision: str = ""
    determining_policies: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    max_credential_ttl: timedelta | None = None
    response: pb.AuthorizeResponse | None = field(default=None, repr=False)


class StepDenied(StepguardError):
    """Raised by `guard` when a step is not allowed; carries the decision."""

    def __init__(self, decision: StepDecision) -> None:
        self.decision = decision
        super().__init__(f"step denied by stepguard: {decision.reason}")


def denied(reason: str) -> StepDecision:
    return StepDecision(allowed=False, reason=reason)


def from_response(resp: pb.AuthorizeResponse) -> StepDecision:
    ttl = (
        resp.obligations.max_credential_ttl.ToTimedelta()
        if resp.obligations.HasField("max_credential_ttl")
        else None
    )
    return StepDecision(
        allowed=resp.decision == pb.DECISION_ALLOW,
        reason=resp.reason,
        decision_id=resp.decision_id,
        policy_revision=resp.policy_revision,
        determining_policies=tuple(p.id for p in resp.determining_policies),
        errors=tuple(e.message for e in resp.errors),
        max_credential_ttl=ttl,
        response=resp,
    )


def _to_proto(request: RequestLike) -> pb.AuthorizeRequest:
    if isinstance(request, pb.AuthorizeRequest):
        return request
    return request_from_json(dict(request))


def _metadata(traceparent: str | None, request_id: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata the sidecar records in the audit event (and ignores when malformed)."""
    out: list[tuple[str, str]] = []
    if traceparent:
        out.append(("traceparent", traceparent))
    if request_id:
        out.append(("x-request-id", request_id))
    return tuple(out)


class _Batch:
    """A batch to send: the items that convert, and a DENY for each that does not.

    An item the client cannot even build (not a request at all) is denied
    here, on its own, like an item the sidecar finds invalid; the others go.
    """

    def __init__(self, requests: Sequence[RequestLike]) -> None:
        self.size = len(requests)
        self.local: dict[int, StepDecision] = {}
        self.message = pb.AuthorizeBatchRequest()
        for i, request in enumerate(requests):
            try:
                self.message.items.append(_to_proto(request))
            except Exception as exc:  # noqa: BLE001 - this item fails closed, not the batch
                self.local[i] = _failure(exc)

    def decisions(self, resp: pb.AuthorizeBatchResponse) -> list[StepDecision]:
        sent = iter(
            from_response(r.response)
            if r.HasField("response")
            else denied(f"invalid request: {r.error.message}")
            for r in resp.results
        )
        if len(resp.results) != self.size - len(self.local):
            return [denied("stepguard answered a different number of results")] * self.size
        return [self.local[i] if i in self.local else next(sent) for i in range(self.size)]

    def failed(self, exc: Exception) -> list[StepDecision]:
        return [_failure(exc)] * self.size


def _failure(exc: Exception) -> StepDecision:
    """The DENY that stands for a call that went wrong, saying how."""
    if isinstance(exc, InvalidRequest):
        return denied(f"invalid request: {exc}")
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        return denied(f"stepguard call failed ({name}): {details}")
    return denied(f"stepguard client error: {type(exc).__name__}: {exc}")


class StepguardClient:
    """Blocking client. `target` is HOST:PORT or `unix:///path/to.sock`.

    For TLS or mutual TLS give `credentials=sidecar.tls.channel_credentials(...)`;
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
        self._channel = (
            grpc.secure_channel(target, credentials, options=list(options))
            if credentials is not None
            else grpc.insecure_channel(target, options=list(options))
        )
        self._stub = pb_grpc.AuthorizerStub(self._channel)

    def authorize(
        self,
        request: RequestLike,
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> StepDecision:
        try:
            msg = _to_proto(request)
            resp = self._stub.Authorize(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=_metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return _failure(exc)
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
        batch = _Batch(requests)
        if not batch.message.items:  # nothing to send: every item (if any) denied here
            return batch.decisions(pb.AuthorizeBatchResponse())
        try:
            resp = self._stub.AuthorizeBatch(
                batch.message,
                timeout=self.timeout if timeout is None else timeout,
                metadata=_metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return batch.failed(exc)
        return batch.decisions(resp)

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

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> StepguardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=list(options))
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=list(options))
        )
        self._stub = pb_grpc.AuthorizerStub(self._channel)

    async def authorize(
        self,
        request: RequestLike,
        *,
        timeout: float | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> StepDecision:
        try:
            msg = _to_proto(request)
            call: Awaitable[pb.AuthorizeResponse] = self._stub.Authorize(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=_metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return _failure(exc)
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
        batch = _Batch(requests)
        if not batch.message.items:  # nothing to send: every item (if any) denied here
            return batch.decisions(pb.AuthorizeBatchResponse())
        try:
            call: Awaitable[pb.AuthorizeBatchResponse] = self._stub.AuthorizeBatch(
                batch.message,
                timeout=self.timeout if timeout is None else timeout,
                metadata=_metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return batch.failed(exc)
        return batch.decisions(resp)

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
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncStepguardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
