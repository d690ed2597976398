"""One way through the decision path: the decider takes the message as received.

`Decider.decide_message` is the entry of the gRPC API and of `stepguard check`:
it looks the raw bytes up in the cache before validation, validates on a miss
(the request model carries its time bound and the resolved `now`), then
evaluates, audits and counts. The servicer only converts.
"""

from __future__ import annotations

import ast
import time
from datetime import datetime, timedelta
from pathlib import Path

from sidecar.audit.sink import MemorySink
from sidecar.core.bundle import load_bundle
from sidecar.core.event import CallMeta
from sidecar.core.jsonreq import request_from_json
from sidecar.core.validate import (
    Limits,
    cedar_datetime,
    effective_now_ms,
    request_from_proto,
    to_ms,
)
from sidecar.decision.cache import DecisionCache
from sidecar.decision.decider import Decider
from sidecar.decision.metrics import Metrics
from tests.helpers import BUSINESS_HOURS, POLICIES, ROOT, notify_request

GRANULE = 1000


def _bounded(not_after: datetime) -> dict[str, object]:
    req = notify_request()
    req["context"]["time_bound"] = {"not_after": not_after.isoformat().replace("+00:00", "Z")}
    return req


def test_validation_yields_the_time_bound_and_the_resolved_now() -> None:
    """The model carries the bound in ms, and `now` rounded but never back across it."""
    bundle = load_bundle(POLICIES)
    not_after = BUSINESS_HOURS + timedelta(milliseconds=300)
    clock = BUSINESS_HOURS + timedelta(milliseconds=700)  # past the bound, inside its granule
    msg = request_from_json(_bounded(not_after))
    request = request_from_proto(msg, bundle, Limits(), now=clock, now_granularity_ms=GRANULE)
    assert (request.not_before_ms, request.not_after_ms) == (None, to_ms(not_after))
    # Rounded down to the granule it would be before the bound: it stays past it.
    assert request.context["now"] == cedar_datetime(to_ms(not_after) + 1)
    assert to_ms(not_after) + 1 == effective_now_ms(to_ms(clock), GRANULE, None, to_ms(not_after))
    inside = request_from_proto(
        msg, bundle, Limits(), now=BUSINESS_HOURS, now_granularity_ms=GRANULE
    )
    assert inside.context["now"] == cedar_datetime(to_ms(BUSINESS_HOURS))


def test_a_raw_hit_comes_before_validation_and_is_audited() -> None:
    """A repeated message is answered from the cache, audited; a new granule of a
    `now`-reading bundle is evaluated again, like a fresh evaluation would be."""
    bundle = load_bundle(POLICIES)
    assert "now" in bundle.context_reads  # business_hours.cedar reads context.now
    clock = [BUSINESS_HOURS]
    sink = MemorySink()
    decider = Decider(
        sink,
        Metrics(),
        lambda: clock[0],
        cache=DecisionCache(100, 1 << 20),
        now_granularity_ms=GRANULE,
    )
    msg = request_from_json(notify_request())

    def decide() -> bool:
        decided = decider.decide_message(
            bundle, msg, CallMeta(), Limits(), started=time.perf_counter()
        )
        return decided.cached

    assert decide() is False
    clock[0] = BUSINESS_HOURS + timedelta(milliseconds=400)  # same granule, same `now`
    assert decide() is True
    clock[0] = BUSINESS_HOURS + timedelta(milliseconds=1400)  # the next granule
    assert decide() is False
    assert decide() is True
    nows = [event["context"]["now"] for event in sink.events]
    assert (
        nows
        == [cedar_datetime(to_ms(BUSINESS_HOURS))] * 2
        + [cedar_datetime(to_ms(BUSINESS_HOURS) + GRANULE)] * 2
    )
    assert [event["cached"] for event in sink.events] == [False, True, False, True]


def test_an_explained_hit_is_explained_again() -> None:
    """`explain` never comes from the cache: a hit carries its own explanation."""
    bundle = load_bundle(POLICIES)
    decider = Decider(
        MemorySink(), Metrics(), lambda: BUSINESS_HOURS, cache=DecisionCache(10, 1 << 20)
    )
    msg = request_from_json(notify_request())
    msg.explain = True
    first = decider.decide_message(bundle, msg, CallMeta(), Limits(), started=0.0)
    second = decider.decide_message(bundle, msg, CallMeta(), Limits(), started=0.0)
    assert (first.cached, second.cached) == (False, True)
    assert first.explanation is not None and second.explanation == first.explanation


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_transport_only_converts_and_the_core_builds_no_answers() -> None:
    """The servicer neither validates nor explains (the decider does, one way down);
    the time bound is read by validation alone; protobuf answers are built in serving."""
    servicer = _imports(ROOT / "sidecar/serving/servicer.py")
    assert "sidecar.core.validate.request_from_proto" not in servicer
    assert "sidecar.core.explain" not in servicer
    assert "sidecar.decision.cache" not in servicer
    explain = _imports(ROOT / "sidecar/core/explain.py")
    assert not any("authorizer_pb2" in name for name in explain)
    cache = (ROOT / "sidecar/decision/cache.py").read_text()
    assert "def time_bound_ms" not in cache and "def effective_now_ms" not in cache
