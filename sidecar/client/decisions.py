"""A decision as the client hands it to the orchestrator, and how every failure
becomes a DENY that says why (the fail-closed contract of the clients)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.errors import InvalidRequest, StepguardError
from sidecar.core.jsonreq import request_from_json

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 2.0

RequestLike = pb.AuthorizeRequest | Mapping[str, Any]


class DecisionKind(enum.Enum):
    """What a `StepDecision` stands for; only ALLOW lets a step run."""

    ALLOW = "allow"  # the sidecar decided ALLOW
    DENY = "deny"  # the sidecar decided DENY (its policies, or its own fail-closed rules)
    INVALID_REQUEST = "invalid_request"  # the request is wrong: a bug in the caller
    UNAVAILABLE = "unavailable"  # no sidecar answered: down, restarting, the stream broke
    DEADLINE = "deadline"  # no answer within the timeout
    OVERLOADED = "overloaded"  # the sidecar refused the call for load (RESOURCE_EXHAUSTED)
    UNAUTHENTICATED = "unauthenticated"  # the caller's TLS identity was refused
    ERROR = "error"  # anything else (INTERNAL, UNIMPLEMENTED, a failure in the client)

    @property
    def decided(self) -> bool:
        """The sidecar made (and recorded) a decision: ALLOW or DENY."""
        return self in (DecisionKind.ALLOW, DecisionKind.DENY)

    @property
    def retryable(self) -> bool:
        """No decision was had for a reason that may pass: asking again may succeed."""
        return self in (DecisionKind.UNAVAILABLE, DecisionKind.DEADLINE, DecisionKind.OVERLOADED)


_KIND_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: DecisionKind.INVALID_REQUEST,
    grpc.StatusCode.UNAVAILABLE: DecisionKind.UNAVAILABLE,
    grpc.StatusCode.CANCELLED: DecisionKind.UNAVAILABLE,
    grpc.StatusCode.ABORTED: DecisionKind.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: DecisionKind.DEADLINE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: DecisionKind.OVERLOADED,
    grpc.StatusCode.UNAUTHENTICATED: DecisionKind.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: DecisionKind.UNAUTHENTICATED,
}
CODE_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


def kind_of(code: grpc.StatusCode | None) -> DecisionKind:
    """The kind of a call that ended with `code` and no decision."""
    if code is None:
        return DecisionKind.ERROR
    return _KIND_OF_CODE.get(code, DecisionKind.ERROR)


@dataclass(frozen=True, slots=True)
class StepDecision:
    """One answer. `kind` says what it is, `code` the gRPC status the call ended with
    (OK for a decision; for a request the client could not even build, the
    INVALID_ARGUMENT the sidecar would have given; None when no call was made for
    another reason). A DENY is never of kind ALLOW, whatever was passed."""

    allowed: bool
    reason: str
    decision_id: str = ""
    policy_revision: str = ""
    determining_policies: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    max_credential_ttl: timedelta | None = None
    # How soon what the step grants must be removed after its holder leaves (the
    # permit's @revoke_within); None when no determining policy names one.
    revoke_within: timedelta | None = None
    response: pb.AuthorizeResponse | None = field(default=None, repr=False)
    kind: DecisionKind = DecisionKind.DENY
    code: grpc.StatusCode | None = None

    def __post_init__(self) -> None:
        if self.allowed and self.kind is not DecisionKind.ALLOW:
            object.__setattr__(self, "kind", DecisionKind.ALLOW)
        elif not self.allowed and self.kind is DecisionKind.ALLOW:
            object.__setattr__(self, "kind", DecisionKind.DENY)


class StepDenied(StepguardError):
    """Raised by `guard` when a step is not allowed; carries the decision."""

    def __init__(self, decision: StepDecision) -> None:
        self.decision = decision
        super().__init__(f"step denied by stepguard: {decision.reason}")


def denied(
    reason: str,
    kind: DecisionKind = DecisionKind.DENY,
    code: grpc.StatusCode | None = None,
) -> StepDecision:
    """A DENY not decided by the sidecar; `kind` says why (DENY: the caller's own rule)."""
    return StepDecision(allowed=False, reason=reason, kind=kind, code=code)


def from_response(resp: pb.AuthorizeResponse) -> StepDecision:
    duties = resp.obligations
    ttl = duties.max_credential_ttl.ToTimedelta() if duties.HasField("max_credential_ttl") else None
    revoke = duties.revoke_within.ToTimedelta() if duties.HasField("revoke_within") else None
    return StepDecision(
        allowed=resp.decision == pb.DECISION_ALLOW,
        reason=resp.reason,
        decision_id=resp.decision_id,
        policy_revision=resp.policy_revision,
        determining_policies=tuple(p.id for p in resp.determining_policies),
        errors=tuple(e.message for e in resp.errors),
        max_credential_ttl=ttl,
        revoke_within=revoke,
        response=resp,
        kind=DecisionKind.ALLOW if resp.decision == pb.DECISION_ALLOW else DecisionKind.DENY,
        code=grpc.StatusCode.OK,
    )


def to_proto(request: RequestLike) -> pb.AuthorizeRequest:
    if isinstance(request, pb.AuthorizeRequest):
        return request
    return request_from_json(dict(request))


def item_decision(item: pb.AuthorizeBatchResult | pb.AuthorizeStreamResponse) -> StepDecision:
    """A batch result's or stream answer's outcome: its decision, or a DENY for its error."""
    if item.HasField("response"):
        return from_response(item.response)
    code = CODE_BY_VALUE.get(item.error.code, grpc.StatusCode.INVALID_ARGUMENT)
    if code is grpc.StatusCode.OK:  # an error without a code: the item was refused
        code = grpc.StatusCode.INVALID_ARGUMENT
    kind = kind_of(code)
    if kind is DecisionKind.INVALID_REQUEST:
        return denied(f"invalid request: {item.error.message}", kind, code)
    return denied(f"stepguard refused the item ({code.name}): {item.error.message}", kind, code)


def metadata(traceparent: str | None, request_id: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata the sidecar records in the audit event (and ignores when malformed)."""
    out: list[tuple[str, str]] = []
    if traceparent:
        out.append(("traceparent", traceparent))
    if request_id:
        out.append(("x-request-id", request_id))
    return tuple(out)


class Batch:
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
                self.message.items.append(to_proto(request))
            except Exception as exc:  # noqa: BLE001 - this item fails closed, not the batch
                self.local[i] = failed_call(exc)

    def decisions(self, resp: pb.AuthorizeBatchResponse) -> list[StepDecision]:
        sent = map(item_decision, resp.results)
        if len(resp.results) != self.size - len(self.local):
            mismatch = denied(
                "stepguard answered a different number of results",
                DecisionKind.ERROR,
                grpc.StatusCode.INTERNAL,
            )
            return [mismatch] * self.size
        return [self.local[i] if i in self.local else next(sent) for i in range(self.size)]

    def failed(self, exc: Exception) -> list[StepDecision]:
        """The call failed: each item sent gets the failure; an item never sent keeps its own."""
        failure = failed_call(exc)
        return [self.local.get(i, failure) for i in range(self.size)]


def failed_call(exc: Exception) -> StepDecision:
    """The DENY that stands for a call that went wrong, saying how (and of which kind)."""
    if isinstance(exc, InvalidRequest):  # the client could not build it: never sent
        return denied(
            f"invalid request: {exc}",
            DecisionKind.INVALID_REQUEST,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        kind = kind_of(code)
        if kind is DecisionKind.INVALID_REQUEST:  # the sidecar refused the request itself
            return denied(f"invalid request: {details}", kind, code)
        name = code.name if code is not None else "UNKNOWN"
        return denied(f"stepguard call failed ({name}): {details}", kind, code)
    return denied(f"stepguard client error: {type(exc).__name__}: {exc}", DecisionKind.ERROR)
