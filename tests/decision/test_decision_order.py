"""The decider asks each room once, in the data path's order (docs/architecture.md).

Traced at run time, not read from the source: every call the decider makes
into another stepguard module is recorded, in order, for a real decision on
the example policies. A miss goes cache -> identity -> validation -> engine
-> decision id -> audit event -> trail -> cache entry -> metrics ->
explanation; a hit skips identity, validation and Cedar. The cache is the
one room asked twice on a miss: the key is looked up before validation, and
filled only once the engine and the audit event exist.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest

from sidecar.audit.event import CallMeta
from sidecar.audit.sink import MemorySink
from sidecar.core.bundle import load_bundle
from sidecar.core.errors import InvalidRequest
from sidecar.core.jsonreq import request_from_json
from sidecar.core.validate import Limits, request_from_proto
from sidecar.decision.cache import DecisionCache
from sidecar.decision.decider import Decider
from sidecar.decision.metrics import Metrics
from tests.helpers import BUSINESS_HOURS, POLICIES, ROOT, notify_request

PACKAGE = str(ROOT / "sidecar") + "/"


# The value objects' own methods (`EntityUid.to_json`): their work is their caller's.
DATA = "core/model.py"


def _room(filename: str) -> str:
    room = filename[len(PACKAGE) :] if filename.startswith(PACKAGE) else ""
    return "" if room == DATA else room


@contextmanager
def _calls_from(module: str) -> Iterator[list[str]]:
    """The stepguard modules `module` calls into directly, in call order, consecutive
    calls into one module counted once (a stay, not each function)."""
    rooms: list[str] = []

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call" or frame.f_back is None:
            return
        caller, callee = _room(frame.f_back.f_code.co_filename), _room(frame.f_code.co_filename)
        if caller == module and callee and callee != module and (not rooms or rooms[-1] != callee):
            rooms.append(callee)

    sys.setprofile(profile)
    try:
        yield rooms
    finally:
        sys.setprofile(None)


def _decider() -> Decider:
    return Decider(
        MemorySink(), Metrics(), lambda: BUSINESS_HOURS, cache=DecisionCache(100, 1 << 20)
    )


MISS = [
    "decision/cache.py",  # lookup: the raw bytes, before validation
    "decision/identity.py",  # `context.caller`, workload binding
    "core/validate.py",  # protobuf -> the request model, time bound and `now` resolved
    "core/engine.py",  # the decision
    "core/ids.py",  # its id
    "audit/event.py",  # its event (and the template hits are stamped from)
    "audit/sink.py",  # recorded before the answer leaves
    "decision/cache.py",  # the entry: needs the result and the event
    "decision/metrics.py",
    "core/explain.py",  # asked for: of the decision answered
]
HIT = [
    "decision/cache.py",  # lookup: the entry, this call's `now` resolved
    "core/ids.py",
    "audit/event.py",  # stamped from the entry's template
    "audit/sink.py",
    "decision/metrics.py",
    "core/explain.py",
]


def test_a_miss_then_a_hit_ask_each_room_in_the_data_paths_order() -> None:
    bundle = load_bundle(POLICIES)
    decider = _decider()
    msg = request_from_json(notify_request())
    msg.explain = True

    def decide() -> bool:
        return decider.decide_message(
            bundle, msg, CallMeta(), Limits(), started=time.perf_counter()
        ).cached

    with _calls_from("decision/decider.py") as miss:
        assert decide() is False
    with _calls_from("decision/decider.py") as hit:
        assert decide() is True
    assert miss == MISS
    assert hit == HIT


def test_a_request_in_the_model_takes_the_same_order() -> None:
    """AuthZEN's entry (`decide`): validated by its transport, then the same rooms."""
    bundle = load_bundle(POLICIES)
    decider = _decider()
    request = request_from_proto(
        request_from_json(notify_request()), bundle, Limits(), now=BUSINESS_HOURS
    )
    with _calls_from("decision/decider.py") as rooms:
        decider.decide(bundle, request, CallMeta(), at=BUSINESS_HOURS, started=0.0)
    assert rooms == [r for r in MISS if r not in ("core/validate.py", "core/explain.py")]


def test_validation_reads_a_request_without_leaving_its_module() -> None:
    """The time bound, `now` and Cedar's datetime form are validation's own functions:
    a valid request is read without a call into another stepguard module."""
    bundle = load_bundle(POLICIES)
    req = notify_request()
    req["context"]["time_bound"] = {"not_before": "2026-11-25T09:00:00Z"}
    req["context"]["approval"] = {
        "approver": {"type": "User", "id": "ines"},
        "approved_at": "2026-11-25T09:00:00Z",
    }
    msg = request_from_json(req)
    with _calls_from("core/validate.py") as rooms:
        request = request_from_proto(msg, bundle, Limits(), now=BUSINESS_HOURS)
    assert request.now_ms is not None and request.not_before_ms is not None
    assert rooms == []


@pytest.mark.parametrize(
    ("change", "field", "hint"),
    [
        (lambda r: r["action"].update(id="notfy"), "action", 'did you mean Action::"notify"?'),
        (lambda r: r["resource"].update(type="TargetSystm"), "resource.type", "TargetSystem"),
    ],
)
def test_a_mistyped_name_is_refused_with_the_closest_known_ones(
    change: Callable[[dict[str, Any]], None], field: str, hint: str
) -> None:
    """The refusal composes its own "did you mean": validation hands it the candidates."""
    bundle = load_bundle(POLICIES)
    req = notify_request()
    change(req)
    with _calls_from("core/validate.py") as rooms, pytest.raises(InvalidRequest) as refused:
        request_from_proto(request_from_json(req), bundle, Limits(), now=BUSINESS_HOURS)
    assert refused.value.field == field
    assert hint in str(refused.value)
    assert rooms == ["core/errors.py"]  # and from there, core/suggest.py


def test_the_error_composes_did_you_mean_from_its_candidates() -> None:
    exc = InvalidRequest("action", "is unknown", near=("notfy", ["notify", "grant_access"]))
    assert (exc.field, exc.detail) == ("action", "is unknown; did you mean notify?")
    assert str(exc) == "action: is unknown; did you mean notify?"
    far = InvalidRequest("action", "is unknown", near=("zzz", ["notify"]))
    assert far.detail == "is unknown"
