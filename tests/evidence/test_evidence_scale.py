"""The evidence store's fast paths give exactly the answers of the paths they stand for.

- walk.py's fast walk of an intact chain makes `audit verify`'s checks on the raw
  line bytes; at any change (a byte of a body, of `prev`, of `seq`, a line that is
  not canonical though its hash covers its bytes, a wrong key) it gives up, and the
  store's verdict is `audit verify`'s own, naming the same line.
- inventory counted while loading (facts.py) equals inventory read from the
  decisions table; a trail given twice is stored once and answers as once.
- leavers measures only the accesses that may be findings (store.py's
  `leaver_findings`), and says what measuring them all says, deadlines on the
  second included.
"""

from __future__ import annotations

import gc
import hashlib
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.evidence_trail import Shape, generate
from sidecar.audit.chain import DOMAIN, Hasher
from sidecar.audit.chains import verify_chain
from sidecar.audit.workers import collect_sets
from sidecar.core.bundle import load_bundle
from sidecar.evidence import answers, offboarding
from sidecar.evidence.ingest import parse_time
from sidecar.evidence.options import Deadlines, Options
from sidecar.evidence.store import Store, open_store
from sidecar.evidence.walk import walk_intact
from tests.audit.trails import KEY, make_trail
from tests.helpers import POLICIES

NOW = datetime(2027, 1, 1, tzinfo=UTC)
LIFECYCLE = load_bundle(POLICIES).lifecycle


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "trail"
    generate(root, Shape(4_000, workers=2, rotate_bytes=256 << 10, population=40), processes=1)
    return root


def _store(paths: list[Path], processes: int = 1, **options: Any) -> Store:
    return open_store(paths, Options(now=NOW, lifecycle=LIFECYCLE, **options), processes=processes)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# --- the fast walk ------------------------------------------------------------------------


def test_the_fast_walk_confirms_an_intact_chain_record_by_record(fleet: Path) -> None:
    (trails,) = collect_sets([fleet])
    for chain in trails.chains:
        seen: list[tuple[dict[str, Any], str, int, int]] = []
        count = walk_intact(chain, None, lambda *a, seen=seen: seen.append(a))
        report = verify_chain(trails, chain)
        assert report.ok and count == report.records == len(seen)
        assert [s[3] for s in seen] == list(range(count))
        body, file, line, seq = seen[5]
        raw = Path(file).read_bytes().splitlines()[line - 1]
        assert orjson.loads(raw)["seq"] == seq and body["id"] == orjson.loads(raw)["id"]
        assert "hash" not in body and "prev" not in body


def _rehash(line: bytes, body: bytes) -> bytes:
    """`line` with `body` (any bytes) and a hash that covers exactly them."""
    rec = orjson.loads(line)
    data = b"%b%d\n%b\n%b" % (DOMAIN, rec["seq"], rec["prev"].encode(), body)
    head = b'{"seq":%d,"prev":"%b","hash":"%b"' % (
        rec["seq"],
        rec["prev"].encode(),
        hashlib.sha256(data).hexdigest().encode(),
    )
    return head + b"," + body[1:]


def _body(line: bytes) -> dict[str, Any]:
    rec = orjson.loads(line)
    for k in ("seq", "prev", "hash"):
        del rec[k]
    out: dict[str, Any] = rec
    return out


TAMPERS: dict[str, Callable[[bytes], bytes]] = {
    # a byte of the body: the hash no longer covers it
    "body": lambda line: line.replace(b'"decision":"ALLOW"', b'"decision":"ALLOx"'),
    # a byte of prev: the record no longer links to the one before
    "prev": lambda line: line[:20] + (b"0" if line[20:21] != b"0" else b"1") + line[21:],
    # seq changed (the hash covers it)
    "seq": lambda line: line.replace(b'{"seq":', b'{"seq":1', 1),
    # not canonical (keys unsorted), though its hash covers the bytes as they are
    "unsorted": lambda line: _rehash(line, orjson.dumps(dict(reversed(list(_body(line).items()))))),
    # not canonical (a space), its hash covering the bytes as they are
    "space": lambda line: _rehash(
        line, orjson.dumps(_body(line), option=orjson.OPT_SORT_KEYS).replace(b",", b", ", 1)
    ),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
@pytest.mark.parametrize("processes", [1, 2])
def test_a_changed_line_is_found_as_audit_verify_finds_it(
    tmp_path: Path, tamper: str, processes: int
) -> None:
    path = make_trail(tmp_path / "t", 40)
    lines = path.read_bytes().splitlines(keepends=True)
    at = 17
    changed = TAMPERS[tamper](lines[at].rstrip(b"\n"))
    assert changed != lines[at].rstrip(b"\n")
    lines[at] = changed + b"\n"
    path.write_bytes(b"".join(lines))
    (trails,) = collect_sets([path])
    (chain,) = trails.chains
    assert walk_intact(chain, None, lambda *a: None) is None
    expected = verify_chain(trails, chain)
    assert expected.problem is not None and expected.problem.line == at + 1
    store = _store([path], processes)
    try:
        (status,) = store.verification.chains
        assert not status.ok
        assert status.problem == str(expected.problem)
        assert status.exit_code == expected.problem.exit_code
        # every record is still loaded (the one past the break too)
        count = store.db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        assert count == 40
    finally:
        store.close()


def test_a_keyed_chain_is_walked_under_its_key_and_refused_under_another(tmp_path: Path) -> None:
    path = make_trail(tmp_path / "t", 30, hasher=Hasher(KEY))
    (trails,) = collect_sets([path])
    (chain,) = trails.chains
    assert walk_intact(chain, KEY, lambda *a: None) == verify_chain(trails, chain, KEY).records
    other = b"another key, 32 bytes long......"
    assert walk_intact(chain, other, lambda *a: None) is None
    assert walk_intact(chain, None, lambda *a: None) is None  # keyed: the key is needed
    expected = verify_chain(trails, chain, other)
    store = open_store([path], Options(now=NOW), key=other)
    try:
        (status,) = store.verification.chains
        assert status.problem == str(expected.problem) and not status.ok
    finally:
        store.close()


def test_a_torn_or_cut_chain_is_left_to_audit_verify(tmp_path: Path) -> None:
    path = make_trail(tmp_path / "t", 30)
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # the last line torn
    (trails,) = collect_sets([path])
    assert walk_intact(trails.chains[0], None, lambda *a: None) is None
    path.write_bytes(data[: data.rindex(b"\n", 0, -1) + 1])  # the last record cut off
    (trails,) = collect_sets([path])
    assert walk_intact(trails.chains[0], None, lambda *a: None) is None  # the anchor says more
    expected = verify_chain(trails, trails.chains[0])
    assert expected.problem is not None and expected.problem.kind == "truncated"


# --- inventory counted while loading ------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
def test_inventory_counted_while_loading_is_the_decisions_tables_answer(
    fleet: Path, story_trails: list[Path], processes: int
) -> None:
    for paths in ([fleet], story_trails):
        store = _store(paths, processes)
        try:
            assert store.facts_exact
            counted = answers.inventory(store).to_json()
            store.facts_exact = False
            assert answers.inventory(store).to_json() == counted
            assert counted["rows"] and counted["rows"][0]["evidence"]
        finally:
            store.close()


@pytest.mark.parametrize("processes", [1, 2])
def test_a_trail_given_twice_is_stored_once_and_answers_as_once(
    fleet: Path, tmp_path: Path, processes: int
) -> None:
    again = _copy(fleet, tmp_path / "again")
    once, twice = _store([fleet], processes), _store([fleet, again], processes)
    try:
        assert not twice.facts_exact  # the copies' records were counted twice
        for table in ("decisions", "outcomes", "grants", "leavers"):
            query = f"SELECT * FROM {table}"
            assert twice.db.execute(query).fetchall() == once.db.execute(query).fetchall()
        for answer in (answers.inventory, answers.open_grants, offboarding.leavers):
            assert answer(twice).rows == answer(once).rows
    finally:
        once.close()
        twice.close()


# --- leavers measures only what may be a finding ------------------------------------------


def _in_time_left_out(store: Store) -> None:
    found = offboarding.leavers(store)
    everything = offboarding.leavers(store, everything=True)
    kept = [r for r in everything.rows if r["finding"] not in ("revoked", "revoked (no deadline)")]
    assert found.rows == kept
    assert found.summary == everything.summary


def _revocation_times(store: Store) -> list[float]:
    grants = offboarding.leaver_runs(store)
    return sorted(
        {g["time_to_revoke_s"] for lr in grants for g in lr.grants if g["time_to_revoke_s"]}
    )


@pytest.mark.parametrize(
    "specs", [[], ["*=PT2M"], ["high=PT1H", "github=PT30M", "*=P1D"], ["aws=PT5S", "low=PT1M"]]
)
def test_leavers_says_what_measuring_every_access_says(fleet: Path, specs: list[str]) -> None:
    store = _store([fleet], deadlines=Deadlines.parse(specs))
    try:
        _in_time_left_out(store)
    finally:
        store.close()


def test_leavers_on_the_second_of_a_deadline(fleet: Path) -> None:
    """Deadlines set to a revocation's own time to revoke, and a millisecond either
    side: the margin keeps each for exact measuring, so nothing changes."""
    probe = _store([fleet])
    try:
        times = _revocation_times(probe)
    finally:
        probe.close()
    assert times
    for seconds in (times[len(times) // 2], times[-1]):
        for delta in (-0.001, 0.0, 0.001):
            limit = timedelta(seconds=seconds + delta)
            store = _store([fleet], deadlines=Deadlines({"*": limit}))
            try:
                _in_time_left_out(store)
            finally:
                store.close()


def test_leavers_in_the_story_say_the_same(story_trails: list[Path]) -> None:
    store = _store(story_trails, deadlines=Deadlines.parse(["*=PT24H"]))
    try:
        _in_time_left_out(store)
        assert offboarding.leavers(store).rows
        assert parse_time(store.now) == NOW
    finally:
        store.close()


# --- answers built with the cyclic collector paused ---------------------------------------


def test_an_answer_pauses_the_cyclic_collector_and_leaves_it_as_it_found_it(
    fleet: Path,
) -> None:
    """Each answer is built with the collector paused (`answers.acyclic`) and the
    collector is as it was after: on after an answer, on after one that fails, still
    off when the caller had turned it off."""

    seen: list[bool] = []

    @answers.acyclic
    def probe(fail: bool) -> None:
        seen.append(gc.isenabled())
        if fail:
            raise RuntimeError("an answer that fails")

    assert gc.isenabled()
    probe(False)
    with pytest.raises(RuntimeError):
        probe(True)
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:
        probe(False)
        assert not gc.isenabled()
    finally:
        gc.enable()
    store = _store([fleet])
    try:
        for answer in (
            answers.inventory,
            answers.open_grants,
            answers.exceptions,
            answers.access,
            offboarding.leavers,
            offboarding.time_to_revoke,
        ):
            answer(store)
            assert gc.isenabled(), answer.__name__
            assert getattr(answer, "__wrapped__", None) is not None, answer.__name__
    finally:
        store.close()
