"""`Decider.decide_messages` (an AuthorizeBatch) decides each item as `decide_message` does.

The misses of a batch go to the engine in one call (engine.evaluate_many), and
nothing else may change: per item the same answer (or the same refusal, in its
place), the same `cached` flag (a repeat of an earlier item of the batch is a
hit, as it is when the items come one by one), the same cache counts, and the
trail holds one event per decision, in item order. Two deciders with the same
clock, cache settings and bundle, one fed the batch and one fed the items one
by one, must leave the same answers and the same trail.
"""

from __future__ import annotations

import time
from typing import Any

import cedarpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.audit.sink import MemorySink
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.event import PER_CALL, CallMeta
from sidecar.core.jsonreq import request_from_json
from sidecar.core.validate import Limits
from sidecar.decision import decider as decider_module
from sidecar.decision.cache import DecisionCache
from sidecar.decision.decider import Decided, Decider
from sidecar.decision.metrics import Metrics
from tests.helpers import BUSINESS_HOURS, POLICIES, grant_request, notify_request

_BUNDLE: list[Bundle] = []
META = CallMeta(peer="ipv4:127.0.0.1:1", identity="spiffe://example.org/ns/comms/sa/notifier")


def _bundle() -> Bundle:
    if not _BUNDLE:
        _BUNDLE.append(load_bundle(POLICIES))
    return _BUNDLE[0]


def _pool() -> list[pb.AuthorizeRequest]:
    """Messages the batches are drawn from: allowed, denied, invalid, unknown resource."""
    out: list[dict[str, Any]] = []
    for run in ("r1", "r2", "r3"):
        note = notify_request()
        note["context"]["run_id"] = run
        out.append(note)
        grant = grant_request()
        grant["context"]["run_id"] = run
        out.append(grant)
    out.append(grant_request(approver=None))  # denied: no approval
    out.append(grant_request(approver="maria"))  # denied: self-approval
    unknown = notify_request()
    unknown["resource"] = {"type": "TargetSystem", "id": "nowhere"}  # denied: unknown
    out.append(unknown)
    bad_action = notify_request()
    bad_action["action"] = {"type": "Action", "id": "fly"}  # invalid: no such action
    out.append(bad_action)
    bad_principal = notify_request()
    bad_principal["principal"] = {"type": "Robot", "id": "r2"}  # invalid: no such type
    out.append(bad_principal)
    return [request_from_json(d) for d in out]


POOL = _pool()


def _decider(cache: bool, bind: bool) -> tuple[Decider, MemorySink, Metrics]:
    sink, metrics = MemorySink(), Metrics()
    decider = Decider(
        sink,
        metrics,
        lambda: BUSINESS_HOURS,
        cache=DecisionCache(100, 1 << 20) if cache else None,
        bind_workload_identity=bind,
        now_granularity_ms=1000,
    )
    return decider, sink, metrics


def _answer(answer: Decided | Exception) -> tuple[Any, ...]:
    if isinstance(answer, Exception):
        return ("error", type(answer).__name__, str(answer))
    r = answer.result
    return (
        r.decision,
        frozenset(p.id for p in r.reasons),
        frozenset(r.errors),
        r.obligations,
        answer.cached,
    )


def _event(event: Any) -> dict[str, Any]:
    """An event without what differs between two calls made the same way."""
    return {
        k: (sorted(map(str, v)) if k in ("reasons", "errors") else v)
        for k, v in event.items()
        if k not in PER_CALL
    }


def _one_by_one(decider: Decider, msgs: list[pb.AuthorizeRequest]) -> list[Decided | Exception]:
    out: list[Decided | Exception] = []
    for msg in msgs:
        try:
            out.append(
                decider.decide_message(_bundle(), msg, META, Limits(), started=time.perf_counter())
            )
        except Exception as exc:  # compared with the batch's, in its place
            out.append(exc)
    return out


@settings(max_examples=60, deadline=None)
@given(
    warm=st.lists(st.sampled_from(range(len(POOL))), max_size=4),
    batch=st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=10),
    cache=st.booleans(),
    bind=st.booleans(),
    window=st.sampled_from([1, 3, 32]),
)
def test_a_batch_decides_as_its_items_one_by_one(
    warm: list[int], batch: list[int], cache: bool, bind: bool, window: int
) -> None:
    alone, alone_sink, alone_metrics = _decider(cache, bind)
    many, many_sink, many_metrics = _decider(cache, bind)
    for d in (alone, many):  # earlier calls: some items of the batch are hits
        _one_by_one(d, [POOL[i] for i in warm])
    msgs = [POOL[i] for i in batch]
    expected = _one_by_one(alone, msgs)
    with pytest.MonkeyPatch.context() as mp:  # windows of the batch: any size decides alike
        mp.setattr(decider_module, "BATCH_WINDOW", window)
        got = many.decide_messages(_bundle(), msgs, META, Limits(), started=time.perf_counter())
    assert [_answer(a) for a in got] == [_answer(a) for a in expected]
    assert [_event(e) for e in many_sink.events] == [_event(e) for e in alone_sink.events]
    decided = [a.decision_id for a in got if isinstance(a, Decided)]
    if decided:  # answered under the ids of the batch's events, in item order
        assert decided == [e["id"] for e in many_sink.events[-len(decided) :]]
    for result in ("hit", "miss"):
        counted = many_metrics.cache_lookups.labels(result=result)._value.get()
        assert counted == alone_metrics.cache_lookups.labels(result=result)._value.get()


def test_the_misses_of_a_batch_are_one_cedarpy_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point: ten distinct misses for the same step kind are one call per window
    (a spy counts cedarpy's real calls); the repeat of the batch is a hit."""
    real = cedarpy._internal.is_authorized_batch
    sizes: list[int] = []

    def spy(calls: list[Any], *args: Any) -> Any:
        sizes.append(len(calls))
        return real(calls, *args)

    monkeypatch.setattr(cedarpy._internal, "is_authorized_batch", spy)
    msgs = []
    for i in range(10):
        note = notify_request()
        note["context"]["run_id"] = f"run-{i}"
        msgs.append(request_from_json(note))
    decider, sink, _ = _decider(cache=True, bind=False)
    got = decider.decide_messages(
        _bundle(), [*msgs, msgs[0]], META, Limits(), started=time.perf_counter()
    )
    window = decider_module.BATCH_WINDOW
    assert 1 < window < 10
    assert sizes == [min(window, 10 - i) for i in range(0, 10, window)]
    assert all(isinstance(a, Decided) and a.result.allowed for a in got)
    assert [isinstance(a, Decided) and a.cached for a in got] == [False] * 10 + [True]
    assert len(sink.events) == 11
