"""The decision cache: `context.now` rounding, bounds, and hits on the real server."""

from __future__ import annotations

import shutil
import tracemalloc
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.bundle import load_bundle
from sidecar.core.errors import ConfigError
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import AuthzRequest, Decision, EntityUid, Obligations, Result
from sidecar.core.validate import (
    Limits,
    cedar_datetime,
    effective_now_ms,
    from_ms,
    parse_cedar_datetime,
    request_from_proto,
    to_ms,
)
from sidecar.decision.cache import DecisionCache, Entry, entry_size
from sidecar.serving.config import Settings
from tests.helpers import BUSINESS_HOURS, grant_request, notify_request, running_sidecar

ROOT = Path(__file__).resolve().parents[2]

# --- context.now ------------------------------------------------------------

instants = st.integers(min_value=0, max_value=4_102_444_800_000)  # 1970 .. 2100, ms
granules = st.sampled_from([1, 10, 250, 1000, 60_000])


@st.composite
def clocks_and_bounds(draw: st.DrawFn) -> tuple[int, int, int | None, int | None]:
    """A clock, a granularity and time bounds drawn near the clock, within two granules.

    Drawn independently over 130 years, a bound would almost never fall in the
    clock's own granule, where the clamp is what keeps `now` on the right side.
    """
    g = draw(granules)
    real = draw(instants)
    near = st.integers(min_value=-2 * g - 1, max_value=2 * g + 1).map(lambda d: real + d)
    nb = draw(st.none() | near | instants)
    na = draw(st.none() | near | instants)
    return real, g, nb, na


@given(clocks_and_bounds())
def test_effective_now_keeps_the_clock_side_of_the_time_bound(
    drawn: tuple[int, int, int | None, int | None],
) -> None:
    real, g, nb, na = drawn
    now = effective_now_ms(real, g, nb, na)
    # Never later than the clock, never earlier than the clock rounded down.
    assert real - real % g <= now <= real
    # On the same side of each bound as the clock itself.
    if nb is not None:
        assert (now >= nb) == (real >= nb)
    if na is not None:
        assert (now > na) == (real > na)
    # Idempotent: rounding an effective now again changes nothing.
    assert effective_now_ms(now, g, nb, na) == now


@given(real=instants, g=granules)
def test_requests_in_one_granule_share_now(real: int, g: int) -> None:
    start = real - real % g
    assert effective_now_ms(start, g, None, None) == effective_now_ms(start + g - 1, g, None, None)
    assert effective_now_ms(start + g, g, None, None) == start + g


@given(ms=instants)
def test_cedar_datetime_round_trips(ms: int) -> None:
    assert parse_cedar_datetime(cedar_datetime(ms)) == ms
    assert to_ms(from_ms(ms)) == ms


def test_granularity_is_validated() -> None:
    assert Settings().now_granularity_ms == 1000
    for bad in (0, 60_001):
        with pytest.raises(ConfigError, match="now_granularity_ms"):
            Settings(now_granularity_ms=bad)
    with pytest.raises(ConfigError, match="cache_max_entries"):
        Settings(cache_max_entries=-1)


def test_cache_settings_from_flags_env_and_file(tmp_path: Path) -> None:
    from sidecar.cli.main import _parser
    from sidecar.serving.config import build_settings

    args = _parser().parse_args(
        ["serve", "--cache-max-entries", "5", "--server-mode", "sync", "--event-loop", "asyncio"]
    )
    flags = {k: v for k, v in vars(args).items() if k not in ("run", "config", "log_level")}
    config = tmp_path / "stepguard.yaml"
    config.write_text("now-granularity-ms: 250\ncache_max_entries: 9\n")
    settings = build_settings(
        {k: v for k, v in flags.items() if v is not None},
        {"STEPGUARD_CACHE_MAX_BYTES": "1000000"},
        config,
    )
    assert settings.cache_max_entries == 5  # the flag wins over the file
    assert settings.cache_max_bytes == 1_000_000
    assert settings.now_granularity_ms == 250
    assert settings.server_mode == "sync"
    assert Settings().server_mode == "asyncio"
    with pytest.raises(ConfigError, match="server_mode"):
        Settings(server_mode="threads")
    assert settings.event_loop == "asyncio"
    assert Settings().event_loop == "uvloop"
    with pytest.raises(ConfigError, match="event_loop must be one of uvloop, asyncio"):
        Settings(event_loop="trio")


# --- bounds -----------------------------------------------------------------


def _entry(i: int, *, allowed: bool = True, size: int = 0) -> tuple[tuple[str, int], Entry]:
    request = AuthzRequest(
        EntityUid("User", f"u{i}"), EntityUid("Action", "a"), EntityUid("Doc", "d"), {"i": i}
    )
    result = Result(Decision.ALLOW if allowed else Decision.DENY, (), (), Obligations(), "rev")
    key = ("k", i)
    return key, Entry(request, result, None, None, size or entry_size(100))


def test_cache_is_bounded_in_entries() -> None:
    cache = DecisionCache(max_entries=10, max_bytes=1 << 30)
    for i in range(100):
        cache.put(*_entry(i)[:1], "rev", _entry(i)[1])
        assert cache.stats().entries <= 10
    assert cache.get(("k", 99)) is not None and cache.get(("k", 0)) is None


def test_cache_is_bounded_in_bytes() -> None:
    cache = DecisionCache(max_entries=1_000_000, max_bytes=10_000)
    for i in range(100):
        key, entry = _entry(i, size=1000)
        cache.put(key, "rev", entry)
        assert cache.stats().bytes <= 10_000
    assert cache.stats().entries == 10
    key, big = _entry(1000, size=20_000)  # larger than the whole cache: not kept
    cache.put(key, "rev", big)
    assert cache.get(key) is None


def test_least_recently_used_goes_first() -> None:
    cache = DecisionCache(max_entries=2, max_bytes=1 << 20)
    for i in range(2):
        cache.put(_entry(i)[0], "rev", _entry(i)[1])
    assert cache.get(("k", 0)) is not None  # 0 is now more recent than 1
    cache.put(_entry(2)[0], "rev", _entry(2)[1])
    assert cache.get(("k", 1)) is None and cache.get(("k", 0)) is not None


def test_a_new_revision_drops_old_entries() -> None:
    cache = DecisionCache(max_entries=10, max_bytes=1 << 20)
    cache.put(_entry(0)[0], "r1", _entry(0)[1])
    cache.put(_entry(1)[0], "r2", _entry(1)[1])
    assert cache.get(("k", 0)) is None and cache.stats().entries == 1


def _many_attributes() -> dict[str, Any]:
    req = notify_request()
    req["context"]["attributes"] = {f"a{i}": i % 7 for i in range(60)}
    req["context"]["attributes"]["tags"] = [f"t{i}" for i in range(40)]
    return req


@pytest.mark.parametrize(
    "make",
    [notify_request, grant_request, _many_attributes],
    ids=["notify", "grant", "many-attributes"],
)
def test_size_estimate_covers_what_entries_hold(make: Any) -> None:
    """The byte bound bounds memory: an entry's estimate is at least what it holds.

    Requests are parsed, validated and stored as the server does, inside the
    traced region, so their objects count.
    """
    bundle = load_bundle(ROOT / "policies")
    template = request_from_json(make())
    # A per-entry floor of 1 KiB (max_bytes / max_entries): the estimates count.
    cache = DecisionCache(max_entries=1 << 20, max_bytes=1 << 30)
    result = Result(Decision.DENY, (), (), Obligations(), bundle.revision)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(1000):
        template.context.run_id = f"run-{i}"
        wire = template.SerializeToString(deterministic=True)
        msg = pb.AuthorizeRequest.FromString(wire)
        req = request_from_proto(msg, bundle, Limits(), now=BUSINESS_HOURS)
        key = ("wire", bundle.revision, wire, None, "")
        cache.put(key, bundle.revision, Entry(req, result, None, None, entry_size(len(wire))))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert cache.stats().entries == 1000
    assert cache.stats().bytes >= grown, (cache.stats().bytes, grown)


def test_cached_allow_outside_its_time_bound_is_not_servable() -> None:
    _key, entry = _entry(0)
    bounded = Entry(entry.request, entry.result, 1000, 2000, entry.size)
    assert bounded.servable(1000) and bounded.servable(2000)
    assert not bounded.servable(999) and not bounded.servable(2001)
    denied = Entry(entry.request, _entry(1, allowed=False)[1].result, 1000, 2000, 1)
    assert denied.servable(5000)  # a DENY may be served at any time


# --- the real server ----------------------------------------------------------


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Any, Clock, pb_grpc.AuthorizerStub]]:
    clock = Clock(BUSINESS_HOURS)
    with (
        running_sidecar(tmp_path, clock=clock) as running,
        grpc.insecure_channel(running.tcp) as channel,
    ):
        yield running, clock, pb_grpc.AuthorizerStub(channel)


def _metric(running: Any, name: str, **labels: str) -> float:
    value = running.sidecar.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


def test_hits_are_audited_marked_cached_and_counted(served: Any) -> None:
    running, _clock, stub = served
    msg = request_from_json(grant_request())
    first = stub.Authorize(msg, timeout=5)
    second = stub.Authorize(msg, timeout=5)
    assert first.decision == second.decision == pb.DECISION_ALLOW
    assert first.decision_id != second.decision_id
    assert [p.id for p in first.determining_policies] == [p.id for p in second.determining_policies]
    events = {e["id"]: e for e in running.audit_events() if e.get("kind") == "decision"}
    assert events[first.decision_id]["cached"] is False
    hit = events[second.decision_id]
    assert hit["cached"] is True
    assert hit["decision"] == "ALLOW" and hit["context"] == events[first.decision_id]["context"]
    lookups = "stepguard_decision_cache_lookups_total"
    assert _metric(running, lookups, result="hit") == 1
    assert _metric(running, lookups, result="miss") == 1
    assert _metric(running, "stepguard_decisions_total", decision="ALLOW", cached="true") == 1
    with urllib.request.urlopen(f"http://{running.metrics}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'stepguard_decision_cache_lookups_total{result="hit"} 1.0' in text
    assert "stepguard_decision_cache_entries 1.0" in text


def test_now_moves_by_granule_and_keys_the_entry(served: Any) -> None:
    running, clock, stub = served
    msg = request_from_json(notify_request())
    clock.at = BUSINESS_HOURS + timedelta(milliseconds=200)
    a = stub.Authorize(msg, timeout=5)
    clock.at = BUSINESS_HOURS + timedelta(milliseconds=900)  # same granule: a hit
    b = stub.Authorize(msg, timeout=5)
    clock.at = BUSINESS_HOURS + timedelta(seconds=1)  # next granule: a miss
    c = stub.Authorize(msg, timeout=5)
    events = {e["id"]: e for e in running.audit_events() if e.get("kind") == "decision"}
    assert [events[r.decision_id]["cached"] for r in (a, b, c)] == [False, True, False]
    nows = [events[r.decision_id]["context"]["now"]["__extn"]["arg"] for r in (a, b, c)]
    assert nows == [
        "2026-11-25T10:00:00.000Z",
        "2026-11-25T10:00:00.000Z",
        "2026-11-25T10:00:01.000Z",
    ]
    # The event's own time is the clock's, to the microsecond.
    assert events[b.decision_id]["time"] == "2026-11-25T10:00:00.900000Z"


def test_time_bound_is_exact_despite_the_granule(served: Any) -> None:
    """A step whose bound ends mid-granule is denied from the first millisecond after it."""
    _running, clock, stub = served
    req = notify_request()
    req["context"]["time_bound"] = {"not_after": "2026-11-25T10:00:00.400Z"}
    msg = request_from_json(req)
    clock.at = BUSINESS_HOURS + timedelta(milliseconds=400)
    assert stub.Authorize(msg, timeout=5).decision == pb.DECISION_ALLOW
    assert stub.Authorize(msg, timeout=5).decision == pb.DECISION_ALLOW  # cached
    clock.at = BUSINESS_HOURS + timedelta(milliseconds=401)
    late = stub.Authorize(msg, timeout=5)
    assert late.decision == pb.DECISION_DENY
    assert [p.id for p in late.determining_policies] == ["step-outside-time-bound"]


def test_reload_never_serves_an_old_decision(served: Any, tmp_path: Path) -> None:
    running, _clock, stub = served
    msg = request_from_json(notify_request())
    assert stub.Authorize(msg, timeout=5).decision == pb.DECISION_ALLOW
    assert stub.Authorize(msg, timeout=5).decision == pb.DECISION_ALLOW  # now cached
    changed = tmp_path / "changed"
    shutil.copytree(ROOT / "policies", changed)
    (changed / "zz_no_notify.cedar").write_text(
        '@id("no-notify")\nforbid (principal, action == Action::"notify", resource);\n'
    )
    running.sidecar.holder.swap(load_bundle(changed))
    after = stub.Authorize(msg, timeout=5)
    assert after.decision == pb.DECISION_DENY
    assert [p.id for p in after.determining_policies] == ["no-notify"]
    assert after.policy_revision == running.sidecar.holder.current().revision


def test_cache_off(tmp_path: Path) -> None:
    with running_sidecar(tmp_path, cache_max_entries=0) as running:
        assert running.sidecar.decider.cache is None
        with grpc.insecure_channel(running.tcp) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            msg = request_from_json(notify_request())
            for _ in range(3):
                assert stub.Authorize(msg, timeout=5).decision == pb.DECISION_ALLOW
        events = [e for e in running.audit_events() if e.get("kind") == "decision"]
        assert [e["cached"] for e in events] == [False, False, False]
        # context.now is still rounded: the cache never changes what a policy sees.
        assert events[0]["context"]["now"]["__extn"]["arg"] == "2026-11-25T10:00:00.000Z"


def test_batch_items_hit_the_cache(served: Any) -> None:
    running, _clock, stub = served
    item = request_from_json(grant_request())
    resp = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(items=[item] * 5), timeout=5)
    assert [r.response.decision for r in resp.results] == [pb.DECISION_ALLOW] * 5
    events = {e["id"]: e for e in running.audit_events() if e.get("kind") == "decision"}
    assert [events[r.response.decision_id]["cached"] for r in resp.results] == [
        False,
        True,
        True,
        True,
        True,
    ]
