"""What a decision goes through below the cache: identity, validation, the engine, its event.

The decision cache reads through to here (cache.py `read`): a hit brings its
request and result, a miss is made here, the message's caller facts first
(`context.caller`, workload binding), then validation into the request model
(time bound read, `now` resolved) and the engine. Either way the decision's
audit event is built last, from the request and the result, by
core/event.py: stamped from the entry's template on a hit when redaction
allows it, else built anew. So the order a request travels runs one way:
decider -> cache -> here -> identity -> validation -> engine -> event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.bundle import Bundle
from sidecar.core.engine import deny, evaluate
from sidecar.core.event import PER_CALL, CallMeta, Redactor, decision_event
from sidecar.core.ids import DecisionIds
from sidecar.core.model import AuthzRequest, PolicyErrors, Result
from sidecar.core.validate import Limits, request_from_proto
from sidecar.decision.identity import CallerContext, CallerFacts


class WindowItem:
    """An AuthorizeBatch item between its validation and its decision (`decide_messages`)."""

    __slots__ = ("at", "caller", "error", "index", "msg", "request", "result")

    def __init__(self, msg: pb.AuthorizeRequest, at: datetime) -> None:
        self.msg = msg
        self.at = at
        self.request: AuthzRequest | None = None  # None: not validated (looked like a hit)
        self.caller = CallerFacts(None, None)
        self.error: Exception | None = None  # what validation raised
        self.index = -1  # its place among the window's evaluated requests
        self.result: Result | None = None


@dataclass(slots=True)  # not frozen: built on every call, and a frozen one costs more
class Made:
    """A decision and its event, before the trail has it.

    `template` is the event less its per-call facts, set only when a miss
    will fill the cache and hits may be stamped from it.
    """

    decision_id: str
    request: AuthzRequest
    result: Result
    event: dict[str, Any]
    template: dict[str, Any] | None
    cached: bool


class Evaluator:
    """Identity, validation, engine and event, under the settings fixed for a decider's life."""

    def __init__(
        self,
        ids: DecisionIds,
        *,
        bind_workload_identity: bool,
        redactor: Redactor | None,
        now_granularity_ms: int,
        policy_errors: PolicyErrors,
        audit_note: str,
    ) -> None:
        self._ids = ids
        self._bind = bind_workload_identity
        self._redactor = redactor
        self.now_granularity_ms = now_granularity_ms
        self.policy_errors = policy_errors
        self._audit_note = audit_note
        self._caller = CallerContext()  # `context.caller` where the schema declares it
        # Hits stamp their event from the cached decision's template unless a
        # redaction path could reach a per-call field (then each builds anew).
        self.stamps = redactor is None or not redactor.touches(PER_CALL)
        self.stamps_now = redactor is None or not redactor.touches(("context",))

    def validated(
        self, bundle: Bundle, msg: pb.AuthorizeRequest, meta: CallMeta, limits: Limits, at: datetime
    ) -> tuple[CallerFacts, AuthzRequest]:
        """The message's caller facts, then the message validated into the request model.

        For `make`, and for an AuthorizeBatch window whose misses are
        validated first and evaluated together (decider.py).
        """
        caller = self._caller.facts_of(bundle, msg, meta.identity, bind=self._bind)
        request = request_from_proto(
            msg,
            bundle,
            limits,
            now=at,
            now_granularity_ms=self.now_granularity_ms,
            extra_context=caller.context,
            principal_bound=self._bind,
        )
        return caller, request

    def make(
        self,
        bundle: Bundle,
        msg: pb.AuthorizeRequest | None,
        asked: AuthzRequest | None,
        meta: CallMeta,
        *,
        limits: Limits | None,
        at: datetime,
        started: float,
        item: WindowItem | None,
        found: Any,
        filling: bool,
    ) -> Made:
        """The decision of one call and its event; `found` is the cache's hit, or None.

        The call is a message as received (`msg`) or a request in the model
        (`asked`); an AuthorizeBatch `item` comes with its validation (or the
        refusal validation raised) and its result, made with its window.

        `filling`: a miss that will be stored, so the event's template is
        returned with it. With workload binding on, a request about anyone but
        the authenticated caller is a DENY saying so, audited like any other.
        """
        if found is not None:
            request, result = found.request, found.result
        else:
            if item is not None and item.error is not None:
                raise item.error  # validation refused it, before the engine
            if item is not None and item.request is not None:
                request, caller = item.request, item.caller
            elif msg is not None:  # the message as received: identity facts, validation
                assert limits is not None
                caller, request = self.validated(bundle, msg, meta, limits, at)
            else:  # `context.caller` came with the request, from its transport
                assert asked is not None
                request = asked
                caller = self._caller.facts(
                    bundle,
                    asked.principal,
                    asked.action,
                    meta.identity,
                    bind=self._bind,
                    context=False,
                )
            if caller.refusal:
                result = deny(bundle.revision, caller.refusal, self.policy_errors)
            elif item is not None and item.result is not None and item.request is request:
                result = item.result  # evaluated with its window (engine.evaluate_many)
            else:
                result = evaluate(bundle, request, policy_errors=self.policy_errors)
        decision_id = self._ids.next()
        event, template = decision_event(
            decision_id,
            at,
            request,
            result,
            meta,
            cached=found is not None,
            latency_s=time.perf_counter() - started,
            stamp_from=found.event if found is not None else None,
            now=found.now if found is not None else None,
            stamp_now=self.stamps_now,
            with_template=filling and self.stamps,
            audit_note=self._audit_note,
            redactor=self._redactor,
        )
        return Made(decision_id, request, result, event, template, found is not None)
