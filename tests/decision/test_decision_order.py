"""A decision travels one way: each room asked once, in the data path's order.

Traced at run time, not read from the source: every call from one stepguard
module into another is recorded, in order, for a real decision on the
example policies. The decider asks the cache, the trail and (when asked
for) the explanation. The cache reads through to the evaluator on a miss and
stores what it made, without leaving its module; the evaluator asks identity,
validation, the engine, the decision id and the event, in that order. A hit
skips identity, validation and Cedar, and only resolves its `now` with
validation's rule. No room is entered twice (docs/architecture.md).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest

from sidecar.audit.sink import MemorySink
from sidecar.core.bundle import load_bundle
from sidecar.core.errors import InvalidRequest
from sidecar.core.event import CallMeta
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
def _calls() -> Iterator[dict[str, list[str]]]:
    """For each stepguard module, the modules it calls into directly, in call order;
    consecutive calls into one module counted once (a stay, not each function)."""
    calls: dict[str, list[str]] = {}

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call" or frame.f_back is None:
            return
        caller, callee = _room(frame.f_back.f_code.co_filename), _room(frame.f_code.co_filename)
        if caller and callee and callee != caller:
            rooms = calls.setdefault(caller, [])
            if not rooms or rooms[-1] != callee:
                rooms.append(callee)

    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(None)


def _decider() -> Decider:
    return Decider(
        MemorySink(), Metrics(), lambda: BUSINESS_HOURS, cache=DecisionCache(100, 1 << 20)
    )


DECIDER = [
    "decision/cache.py",  # reads through: a hit, or a miss made below and stored
    "audit/sink.py",  # recorded before the answer leaves
    "core/explain.py",  # asked for: of the decision answered
]
MISS = {
    "decision/decider.py": DECIDER,
    "decision/cache.py": ["decision/evaluation.py"],  # the key is new: made below
    "decision/evaluation.py": [
        "decision/identity.py",  # `context.caller`, workload binding
        "core/validate.py",  # protobuf -> the request model, time bound and `now` resolved
        "core/engine.py",  # the decision
        "core/ids.py",  # its id
        "core/event.py",  # its event (and the template hits are stamped from)
    ],
}
HIT = {
    "decision/decider.py": DECIDER,
    # this call's `now`, from the entry's own time bound (validation's rule)
    "decision/cache.py": ["core/validate.py", "decision/evaluation.py"],
    "decision/evaluation.py": ["core/ids.py", "core/event.py"],  # stamped from the template
}


def _path(calls: dict[str, list[str]], module: str = "decision/decider.py") -> list[str]:
    """The rooms in the order a request enters them (depth first), explain's own helpers aside."""
    rooms = [module]
    for callee in calls.get(module, []):
        rooms += _path(calls, callee) if callee != "core/explain.py" else [callee]
    return rooms


def test_a_miss_then_a_hit_ask_each_room_in_the_data_paths_order() -> None:
    bundle = load_bundle(POLICIES)
    decider = _decider()
    msg = request_from_json(notify_request())
    msg.explain = True

    def decide() -> bool:
        return decider.decide_message(
            bundle, msg, CallMeta(), Limits(), started=time.perf_counter()
        ).cached

    with _calls() as miss:
        assert decide() is False
    with _calls() as hit:
        assert decide() is True
    assert {m: miss[m] for m in MISS} == MISS
    assert {m: hit[m] for m in HIT} == HIT
    for calls in (miss, hit):  # one way: no room is entered twice
        path = _path(calls)
        assert len(path) == len(set(path)), path


def test_a_request_in_the_model_takes_the_same_order() -> None:
    """AuthZEN's entry (`decide`): validated by its transport, then the same rooms."""
    bundle = load_bundle(POLICIES)
    decider = _decider()
    request = request_from_proto(
        request_from_json(notify_request()), bundle, Limits(), now=BUSINESS_HOURS
    )
    with _calls() as calls:
        decider.decide(bundle, request, CallMeta(), at=BUSINESS_HOURS, started=0.0)
    assert calls["decision/decider.py"] == [r for r in DECIDER if r != "core/explain.py"]
    assert calls["decision/cache.py"] == ["decision/evaluation.py"]
    below = [r for r in MISS["decision/evaluation.py"] if r != "core/validate.py"]
    assert calls["decision/evaluation.py"] == below
    path = _path(calls)
    assert len(path) == len(set(path)), path


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
    with _calls() as calls:
        request = request_from_proto(msg, bundle, Limits(), now=BUSINESS_HOURS)
    assert request.now_ms is not None and request.not_before_ms is not None
    assert calls.get("core/validate.py", []) == []


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
    with _calls() as calls, pytest.raises(InvalidRequest) as refused:
        request_from_proto(request_from_json(req), bundle, Limits(), now=BUSINESS_HOURS)
    assert refused.value.field == field
    assert hint in str(refused.value)
    assert calls["core/validate.py"] == ["core/errors.py"]  # and from there, core/suggest.py


def test_the_error_composes_did_you_mean_from_its_candidates() -> None:
    exc = InvalidRequest("action", "is unknown", near=("notfy", ["notify", "grant_access"]))
    assert (exc.field, exc.detail) == ("action", "is unknown; did you mean notify?")
    assert str(exc) == "action: is unknown; did you mean notify?"
    far = InvalidRequest("action", "is unknown", near=("zzz", ["notify"]))
    assert far.detail == "is unknown"
