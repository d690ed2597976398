"""The orchestrator-side client: ask before every step, fail closed.

`authorize` never raises. An unreachable sidecar, a deadline, a bad request
or anything else gives a DENY `StepDecision` whose `reason` says why, so a
caller that forgets a try/except cannot go on by accident. `guard` is the
opposite on purpose: it raises `StepDenied` so the guarded step does not run.

    client = StepguardClient("unix:///run/stepguard/grpc.sock")
    with client.guard({"principal": ..., "action": ..., "resource": ...}) as decision:
        issue_credential(ttl=decision.max_credential_ttl)

Every decision says what it is in `kind` (a `DecisionKind`) and `code` (the
gRPC status the call ended with), so a worker can tell a DENY by policy from a
bug in its own request (INVALID_REQUEST: fix the caller, do not retry) and
from an outage (UNAVAILABLE, DEADLINE, OVERLOADED: asking again may help),
without parsing `reason` and still without an exception:

    decision = client.authorize(request)
    if decision.kind is DecisionKind.INVALID_REQUEST:
        raise BugInMyRequest(decision.reason)
    if decision.kind.retryable:
        schedule_retry()

Every call takes an optional `traceparent` (W3C trace context) and
`request_id` (a correlation id); the sidecar records them in the decision's
audit event as `trace_id` and `request_id`, so an auditor can join the trail
with the orchestrator's traces and logs.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.errors import ConfigError, InvalidRequest, StepguardError
from sidecar.core.jsonreq import request_from_json
from sidecar.core.outcome import VIOLATION_OF_PROTO, outcome_from_json, outcome_to_proto
from sidecar.core.workernames import worker_name_pattern

log = logging.getLogger(__name__)

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 2.0

RequestLike = pb.AuthorizeRequest | Mapping[str, Any]
P = ParamSpec("P")
R = TypeVar("R")


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
_CODE_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


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
        kind=DecisionKind.ALLOW if resp.decision == pb.DECISION_ALLOW else DecisionKind.DENY,
        code=grpc.StatusCode.OK,
    )


def _to_proto(request: RequestLike) -> pb.AuthorizeRequest:
    if isinstance(request, pb.AuthorizeRequest):
        return request
    return request_from_json(dict(request))


def _item_decision(item: pb.AuthorizeBatchResult | pb.AuthorizeStreamResponse) -> StepDecision:
    """A batch result's or stream answer's outcome: its decision, or a DENY for its error."""
    if item.HasField("response"):
        return from_response(item.response)
    code = _CODE_BY_VALUE.get(item.error.code, grpc.StatusCode.INVALID_ARGUMENT)
    if code is grpc.StatusCode.OK:  # an error without a code: the item was refused
        code = grpc.StatusCode.INVALID_ARGUMENT
    kind = kind_of(code)
    if kind is DecisionKind.INVALID_REQUEST:
        return denied(f"invalid request: {item.error.message}", kind, code)
    return denied(f"stepguard refused the item ({code.name}): {item.error.message}", kind, code)


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
        sent = map(_item_decision, resp.results)
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
        failure = _failure(exc)
        return [self.local.get(i, failure) for i in range(self.size)]


def _failure(exc: Exception) -> StepDecision:
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


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """What became of a reported outcome. `record_outcome` never raises: when the
    outcome was not recorded, `recorded` is False and `reason` says why; `kind`
    says what kind of failure it was (`kind.retryable`: reporting again may work;
    INVALID_REQUEST: a bug in the report, never sent again as is)."""

    recorded: bool
    reason: str
    outcome_id: str = ""  # the outcome's own audit event id
    decision_id: str = ""
    # Why the sidecar flagged the step as a violation ("" when it did not):
    # decision_denied, decision_unknown, after_time_bound, before_time_bound,
    # credential_ttl_exceeded (docs/api.md, "Outcomes").
    violation: str = ""
    decision: str = ""  # the decision it followed: "ALLOW", "DENY", "" when none was found
    kind: DecisionKind | None = None  # None when recorded; else why not (as for decisions)
    code: grpc.StatusCode | None = None


_ERROR_CLASS_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/-"
)


def error_class_of(exc: BaseException) -> str:
    """The `error_class` for a failure hook's exception: its class's qualified name
    (`requests.exceptions.HTTPError`), never its message, fit to what the sidecar
    accepts (1 to 128 of `[A-Za-z0-9_.:/-]`)."""
    kind = type(exc)
    name = (
        f"{kind.__module__}.{kind.__qualname__}"
        if kind.__module__ != "builtins"
        else kind.__qualname__
    )
    cleaned = "".join(c if c in _ERROR_CLASS_CHARS else "_" for c in name)
    return cleaned[-128:] or "Exception"


def _outcome_message(
    decision_id: str,
    status: str,
    *,
    effect: Mapping[str, Any] | None,
    error_class: str,
    started_at: datetime | None,
    finished_at: datetime | None,
    attempt: int,
) -> pb.RecordOutcomeRequest:
    """The request, checked here first (the sidecar's own rules, sidecar/core/outcome.py)."""
    body: dict[str, Any] = {"decision_id": decision_id, "status": status, "attempt": attempt}
    if error_class:
        body["error_class"] = error_class
    if effect is not None:
        body["effect"] = _json_times(effect)
    if started_at is not None:
        body["started_at"] = _json_times(started_at)
    if finished_at is not None:
        body["finished_at"] = _json_times(finished_at)
    return outcome_to_proto(outcome_from_json(body))


def _json_times(value: Any) -> Any:
    """Datetimes (at any depth) as RFC 3339 text, as the JSON form takes them."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _json_times(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_times(v) for v in value]
    return value


def _outcome_report(resp: pb.RecordOutcomeResponse) -> OutcomeReport:
    decision = {pb.DECISION_ALLOW: "ALLOW", pb.DECISION_DENY: "DENY"}.get(resp.decision, "")
    return OutcomeReport(
        recorded=True,
        reason=resp.reason,
        outcome_id=resp.outcome_id,
        decision_id=resp.decision_id,
        violation=VIOLATION_OF_PROTO.get(resp.violation, "unknown"),
        decision=decision,
        code=grpc.StatusCode.OK,
    )


def _outcome_failure(exc: Exception) -> OutcomeReport:
    """The report for an outcome that was not recorded, saying why (like `_failure`)."""
    failed = _failure(exc)
    return OutcomeReport(
        recorded=False,
        reason=failed.reason.replace("stepguard call failed", "outcome not recorded", 1),
        kind=failed.kind,
        code=failed.code,
    )


class _OutcomeBatch:
    """Outcomes to send in one RecordOutcomes call: the ones that convert, and a
    refusal for each that does not (like `_Batch` for decisions)."""

    def __init__(self, items: Sequence[Mapping[str, Any]]) -> None:
        self.size = len(items)
        self.local: dict[int, OutcomeReport] = {}
        self.message = pb.RecordOutcomesRequest()
        for i, item in enumerate(items):
            try:
                self.message.items.append(outcome_to_proto(outcome_from_json(_json_times(item))))
            except Exception as exc:  # noqa: BLE001 - this item is refused, not the batch
                self.local[i] = _outcome_failure(exc)

    def reports(self, resp: pb.RecordOutcomesResponse) -> list[OutcomeReport]:
        if len(resp.results) != self.size - len(self.local):
            return self.failed(RuntimeError("stepguard answered a different number of results"))
        sent = iter(resp.results)
        out = []
        for i in range(self.size):
            if i in self.local:
                out.append(self.local[i])
                continue
            result = next(sent)
            if result.HasField("response"):
                out.append(_outcome_report(result.response))
            else:
                code = _CODE_BY_VALUE.get(result.error.code, grpc.StatusCode.UNKNOWN)
                kind = kind_of(code)
                why = "invalid request" if kind is DecisionKind.INVALID_REQUEST else "not recorded"
                reason = f"{why}: {result.error.message}"
                out.append(OutcomeReport(False, reason, kind=kind, code=code))
        return out

    def failed(self, exc: Exception) -> list[OutcomeReport]:
        failure = _outcome_failure(exc)
        return [self.local.get(i, failure) for i in range(self.size)]


def spread_over_workers(
    target: str, options: Sequence[tuple[str, Any]]
) -> tuple[str, Sequence[tuple[str, Any]]]:
    """A Unix socket target of a sidecar with worker processes: every worker's socket.

    `serve --workers N` listens on one socket per worker next to the
    well-known path (`grpc.sock` -> `grpc.w0.sock`, `grpc.w1.sock`, ...;
    docs/deployment.md). The channel then dials all of them and spreads calls
    round-robin, skipping a worker that is down; with no worker sockets found
    (one worker, or a sidecar not started yet) the target is left as given.
    """
    if not target.startswith("unix:") or "," in target:
        return target, options
    path = target.removeprefix("unix:")
    path = path.removeprefix("//") if path.startswith("///") else path
    well_known = Path(path)
    pattern = worker_name_pattern(well_known)
    try:
        found = sorted(
            (int(m.group(1)), entry)
            for entry in well_known.parent.iterdir()
            if (m := pattern.fullmatch(entry.name)) and entry.is_socket()
        )
    except OSError:
        return target, options
    if not found:
        return target, options
    spread = "unix:" + ",".join(str(entry) for _, entry in found)
    if any(key == "grpc.lb_policy_name" for key, _ in options):
        return spread, options
    return spread, [*options, ("grpc.lb_policy_name", "round_robin")]


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
            msg = _outcome_message(
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
                metadata=_metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - never fail the caller's task
            return _outcome_failure(exc)
        return _outcome_report(resp)

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
        batch = _OutcomeBatch(items)
        if not batch.message.items:
            return batch.reports(pb.RecordOutcomesResponse())
        try:
            resp = self._stub.RecordOutcomes(
                batch.message,
                timeout=self.timeout if timeout is None else timeout,
                metadata=_metadata(traceparent, request_id),
            )
        except Exception as exc:  # noqa: BLE001 - never fail the caller's task
            return batch.failed(exc)
        return batch.reports(resp)

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
            self._requests(), metadata=_metadata(traceparent, request_id)
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
            msg = _to_proto(request)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return _failure(exc)
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
                    waiter.set_result(_item_decision(out))
        except Exception as exc:  # noqa: BLE001 - whatever broke it, fail closed
            failure = _failure(exc)
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
        """Like `StepguardClient.record_outcome`: never raises.

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
            msg = _outcome_message(
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
                metadata=_metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - never fail the caller's task
            return _outcome_failure(exc)
        return _outcome_report(resp)

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
        batch = _OutcomeBatch(items)
        if not batch.message.items:
            return batch.reports(pb.RecordOutcomesResponse())
        try:
            call: Awaitable[pb.RecordOutcomesResponse] = self._stub.RecordOutcomes(
                batch.message,
                timeout=self.timeout if timeout is None else timeout,
                metadata=_metadata(traceparent, request_id),
            )
            resp = await call
        except Exception as exc:  # noqa: BLE001 - never fail the caller's task
            return batch.failed(exc)
        return batch.reports(resp)

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


def channel_credentials(
    root_ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> grpc.ChannelCredentials:
    """Client credentials for `StepguardClient(credentials=...)`.

    `root_ca` is the bundle that signs the server's certificate (None: the
    system roots); `cert` and `key`, given together, are the client's own
    certificate for mutual TLS (for SPIFFE, the workload's X.509 SVID).
    """
    if (cert is None) != (key is None):
        raise ConfigError("give both a client certificate and its key, or neither")
    files = [root_ca, key, cert]
    try:
        root, key_pem, cert_pem = (None if p is None else p.read_bytes() for p in files)
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file: {exc}") from exc
    return grpc.ssl_channel_credentials(root, key_pem, cert_pem)
