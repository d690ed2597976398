"""One trail from many workers (issue 19): a chain per worker, a manifest, one trail to read.

Every trail here is written by the real sinks (`open_sink(..., worker=i, workers=N)`),
in this process, in several processes, or under real `Sidecar`s answering gRPC calls;
it is then read by the real `stepguard audit verify` / `audit query` / `replay`.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.audit import workers as workers_module
from sidecar.audit.chain import parse_line
from sidecar.audit.query import Query, run_query
from sidecar.audit.segments import collect
from sidecar.audit.sink import open_sink
from sidecar.audit.verify import EXIT_CODES, EXIT_MISSING, SET_EXIT_CODES
from sidecar.audit.workers import collect_sets, ensure_manifest, manifest_path, read_manifest
from sidecar.client import StepguardClient
from sidecar.core.errors import ConfigError
from sidecar.core.workernames import worker_path
from sidecar.serving.config import Settings
from sidecar.serving.server import Sidecar
from tests.audit.trails import KEY, event, lines_of, run_cli
from tests.helpers import BUSINESS_HOURS, POLICIES, grant_request, notify_request

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def stamp(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_chains(
    directory: Path,
    workers: int,
    plan: list[tuple[int, int]],
    **kw: Any,
) -> Path:
    """Write events through `workers` real sinks: plan[k] = (chain, microseconds after T0)."""
    trail = directory / "audit.jsonl"
    sinks = [open_sink(str(trail), worker=i, workers=workers, **kw) for i in range(workers)]
    try:
        for k, (chain, micros) in enumerate(plan):
            at = stamp(T0 + timedelta(microseconds=micros))
            sinks[chain].write(event(k, time=at, pad="x" * 40))
    finally:
        for sink in sinks:
            sink.close()
    return trail


def round_robin(workers: int, count: int) -> list[tuple[int, int]]:
    return [(k % workers, k) for k in range(count)]


@pytest.fixture
def three(tmp_path: Path) -> Path:
    """An intact trail of three workers' chains, rotated a few times each."""
    return write_chains(tmp_path / "trail", 3, round_robin(3, 90), rotate_bytes=2500)


def verify_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, list[Any]]:
    code, out = run_cli("audit", "verify", "--json", *args, capsys=capsys)
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# -- the writer's side: paths, headers, manifest ------------------------------------------


def test_each_worker_writes_a_full_trail_of_its_own(tmp_path: Path) -> None:
    trail = write_chains(tmp_path, 3, round_robin(3, 9), checkpoints=tmp_path / "cp.jsonl")
    for i in range(3):
        chain = tmp_path / f"audit.w{i}.jsonl"
        header = parse_line(lines_of(chain)[0].rstrip(b"\n"))
        assert header.kind == "segment" and header.seq == 0
        assert (header.body["worker"], header.body["workers"]) == (i, 3)
        assert (tmp_path / f"audit.w{i}.jsonl.head").exists()
        assert (tmp_path / f"cp.w{i}.jsonl").exists()  # each worker pins its own chain
    assert not trail.exists() and not (tmp_path / "cp.jsonl").exists()
    manifest = json.loads(manifest_path(trail).read_text())
    assert manifest["workers"] == 3 and manifest["trail"] == "audit.jsonl"
    assert manifest["chains"] == ["audit.w0.jsonl", "audit.w1.jsonl", "audit.w2.jsonl"]


def test_one_worker_writes_the_trail_as_before(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    for worker, workers in ((None, None), (0, 1), (None, 1)):
        sink = open_sink(str(trail), worker=worker, workers=workers)
        sink.write(event(1))
        sink.close()
    header = parse_line(lines_of(trail)[0].rstrip(b"\n"))
    assert "worker" not in header.body and "workers" not in header.body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.head"]


@pytest.mark.parametrize(("worker", "workers"), [(3, 3), (-1, 2), (None, 2), (1, 1)])
def test_a_worker_outside_the_workers_is_refused(
    tmp_path: Path, worker: int | None, workers: int
) -> None:
    with pytest.raises(ConfigError, match="worker"):
        open_sink(str(tmp_path / "audit.jsonl"), worker=worker, workers=workers)
    assert list(tmp_path.iterdir()) == []


def test_the_manifest_is_written_once_and_keeps_earlier_chains(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    first = ensure_manifest(trail, 4)
    path = manifest_path(trail)
    before = path.stat()
    again = ensure_manifest(trail, 4, worker=3)  # every worker of the run does this
    assert again == first
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    fewer = ensure_manifest(trail, 2)  # the next run has fewer workers
    assert fewer.workers == 2
    assert fewer.chains == tuple(f"audit.w{i}.jsonl" for i in range(4))  # history kept
    assert [h["workers"] for h in fewer.history] == [4, 2]
    assert read_manifest(path) == fewer
    more = ensure_manifest(trail, 12)
    assert more.chains[-3:] == ("audit.w9.jsonl", "audit.w10.jsonl", "audit.w11.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.workers.json"]  # no tmp file


def test_a_failed_manifest_write_leaves_the_old_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = tmp_path / "audit.jsonl"
    ensure_manifest(trail, 2)
    old = manifest_path(trail).read_bytes()

    def torn(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workers_module, "write_all", torn)
    with pytest.raises(ConfigError, match="cannot write the workers manifest"):
        ensure_manifest(trail, 3)
    assert manifest_path(trail).read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.workers.json"]


def test_an_unreadable_manifest_stops_the_writer(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    manifest_path(trail).write_text('{"workers": 2, "chains": "audit.w0')
    with pytest.raises(ConfigError, match="manifest is unreadable"):
        open_sink(str(trail), worker=0, workers=2)
    assert not worker_path(trail, 0).exists()


def test_workers_in_several_processes_make_one_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real processes, started together, no lock between them: one manifest, N chains."""
    trail = tmp_path / "audit.jsonl"
    script = (
        "import sys\n"
        "from sidecar.audit.sink import open_sink\n"
        "worker = int(sys.argv[1])\n"
        "sink = open_sink(sys.argv[2], worker=worker, workers=4, rotate_bytes=3000)\n"
        "for k in range(40):\n"
        "    sink.write({'schema': 1, 'kind': 'decision', 'id': f'w{worker}-{k}',\n"
        "                'decision': 'ALLOW', 'time': f'2026-11-25T10:00:{k:02d}.000000Z'})\n"
        "sink.close()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(trail)]) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    code, out = run_cli("audit", "verify", tmp_path, capsys=capsys)
    assert code == 0, out
    assert f"ok: {trail}: one trail of 4 chain(s), " in out
    assert read_manifest(manifest_path(trail)) is not None
    code, out = run_cli("audit", "query", trail, "--format", "json", capsys=capsys)
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert sorted(ids) == sorted(f"w{w}-{k}" for w in range(4) for k in range(40))
    # By time, then chain: second k of every worker, worker 0 first.
    assert ids[:8] == ["w0-0", "w1-0", "w2-0", "w3-0", "w0-1", "w1-1", "w2-1", "w3-1"]


# -- verify: one trail, each chain intact ------------------------------------------------


def test_an_intact_trail_of_many_chains_verifies(
    three: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for where in (three, three.parent, manifest_path(three)):
        code, out = run_cli("audit", "verify", where, capsys=capsys)
        assert code == 0, out
        for i in range(3):
            assert f"ok: {three.parent}/audit.w{i}.jsonl: " in out
        assert f"ok: {three}: one trail of 3 chain(s), 108 records (90 decisions)" in out
    code, reports = verify_json(capsys, three)
    assert code == 0 and len(reports) == 3
    assert all(r["ok"] and r["part_of"] == str(three) for r in reports)
    assert sum(r["decisions"] for r in reports) == 90


def _edit_line(path: Path, index: int, fn: Any) -> None:
    lines = lines_of(path)
    path.write_bytes(b"".join(fn(lines, index)))


TAMPER = {
    "modified": lambda ls, i: [*ls[:i], ls[i].replace(b'"ALLOW"', b'"ALLOX"'), *ls[i + 1 :]],
    "deleted": lambda ls, i: ls[:i] + ls[i + 1 :],
    "inserted": lambda ls, i: [*ls[: i + 1], ls[1], *ls[i + 1 :]],
    "reordered": lambda ls, i: [*ls[:i], ls[i + 1], ls[i], *ls[i + 2 :]],
    "truncated": lambda ls, i: ls[:-2],
}


@pytest.mark.parametrize("kind", sorted(TAMPER))
def test_tampering_in_one_chain_is_named_with_its_kind(
    three: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = worker_path(three, 1)
    target = chain if kind == "truncated" else chain.with_name(chain.name + ".000002")
    _edit_line(target, 3, TAMPER[kind])
    code, out = run_cli("audit", "verify", three.parent, capsys=capsys)
    assert code == EXIT_CODES[kind], out
    assert f"FAILED: {chain}: {target}:" in out and f": {kind}: " in out
    assert f"FAILED: {three}: one trail of 3 chain(s); broken or missing: audit.w1.jsonl" in out
    for other in (0, 2):
        assert f"ok: {worker_path(three, other)}: " in out
    code, reports = verify_json(capsys, three)
    broken = [r for r in reports if not r["ok"]]
    assert code == EXIT_CODES[kind] and [r["trail"] for r in broken] == [str(chain)]
    assert broken[0]["problem"]["kind"] == kind


def test_a_missing_chain_is_a_finding(three: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for f in collect([worker_path(three, 2)])[0].segments:
        f.unlink()
    worker_path(three, 2).with_name("audit.w2.jsonl.head").unlink()
    for where in (three, three.parent):
        code, out = run_cli("audit", "verify", where, capsys=capsys)
        assert code == EXIT_MISSING == 8, out
        assert (
            f"FAILED: {three.parent}/audit.w2.jsonl: {three.parent}/audit.w2.jsonl: missing:" in out
        )
        assert "chain audit.w2.jsonl is listed in the workers manifest" in out
        assert f"ok: {worker_path(three, 0)}: " in out
    code, out = run_cli("audit", "query", "--verify", three, capsys=capsys)
    assert code == EXIT_MISSING and "refusing to query" in out and "audit.w2.jsonl" in out


def test_a_chain_whose_segments_were_deleted_is_missing(
    three: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only its head anchor is left: every record of the chain is gone."""
    for f in collect([worker_path(three, 0)])[0].segments:
        f.unlink()
    code, reports = verify_json(capsys, three.parent)
    assert code == EXIT_MISSING
    missing = [r for r in reports if not r["ok"]]
    assert [r["problem"]["kind"] for r in missing] == ["missing"]
    assert missing[0]["trail"] == str(worker_path(three, 0))


def test_all_chains_gone_but_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = write_chains(tmp_path, 2, round_robin(2, 4))
    for entry in tmp_path.iterdir():
        if entry != manifest_path(trail):
            entry.unlink()
    code, out = run_cli("audit", "verify", tmp_path, capsys=capsys)
    assert code == EXIT_MISSING, out
    assert "chain audit.w0.jsonl is listed" in out and "chain audit.w1.jsonl is listed" in out


def test_a_chain_deleted_with_the_manifest_rewritten_is_missing(
    three: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other chains' headers say three workers wrote the trail."""
    for f in [*collect([worker_path(three, 2)])[0].segments]:
        f.unlink()
    worker_path(three, 2).with_name("audit.w2.jsonl.head").unlink()
    manifest = manifest_path(three)
    body = json.loads(manifest.read_text())
    body["chains"], body["workers"] = body["chains"][:2], 2
    manifest.write_text(json.dumps(body))
    code, out = run_cli("audit", "verify", three.parent, capsys=capsys)
    assert code == EXIT_MISSING, out
    assert "chain audit.w2.jsonl is not on disk, and the workers manifest does not list it" in out
    assert "says 3 workers wrote this trail" in out


def test_a_deleted_manifest_is_a_finding(three: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest_path(three).unlink()
    code, out = run_cli("audit", "verify", three, capsys=capsys)
    assert code == EXIT_MISSING, out
    assert f"{manifest_path(three)}: missing: the trail has worker chains" in out


def test_a_chain_the_manifest_does_not_list(
    three: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = manifest_path(three)
    body = json.loads(manifest.read_text())
    body["chains"] = body["chains"][:2]
    manifest.write_text(json.dumps(body))
    code, out = run_cli("audit", "verify", three, capsys=capsys)
    assert code == EXIT_CODES["inserted"], out
    assert "chain audit.w2.jsonl is not listed in the workers manifest" in out


def test_an_unreadable_manifest_is_modified(
    three: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path(three).write_text("{not json")
    code, out = run_cli("audit", "verify", three, capsys=capsys)
    assert code == EXIT_CODES["modified"], out
    assert "the workers manifest is unreadable" in out


def test_swapped_chains_are_modified(three: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each chain is intact on its own, but its headers name the other worker."""
    a, b = worker_path(three, 0), worker_path(three, 1)
    files = [p for p in three.parent.iterdir() if p.name.startswith((a.name, b.name))]
    for p in files:
        p.rename(p.with_name(p.name.replace(".w", ".swap-w", 1)))
    for p in three.parent.iterdir():
        if ".swap-w0" in p.name:
            p.rename(p.with_name(p.name.replace(".swap-w0", ".w1")))
        elif ".swap-w1" in p.name:
            p.rename(p.with_name(p.name.replace(".swap-w1", ".w0")))
    code, out = run_cli("audit", "verify", three, capsys=capsys)
    assert code == EXIT_CODES["modified"], out
    assert "the header says worker 1 wrote this segment, but it is in the chain of worker 0" in out


def test_checkpoints_of_each_worker_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = tmp_path / "pins" / "cp.jsonl"
    trail = write_chains(
        tmp_path / "trail", 2, round_robin(2, 40), rotate_bytes=2000, checkpoints=cp, hasher=None
    )
    code, reports = verify_json(capsys, trail, "--checkpoints", cp)
    assert code == 0 and all(r["checkpoints_checked"] > 0 for r in reports), reports
    # Worker 1's chain cut at a line boundary together with its head anchor: its pin says so.
    chain = worker_path(trail, 1)
    lines = lines_of(chain)
    chain.write_bytes(b"".join(lines[:-3]))
    chain.with_name(chain.name + ".head").unlink()
    code, reports = verify_json(capsys, trail, "--checkpoints", cp, "--accept-missing-anchor")
    assert code == EXIT_CODES["truncated"]
    assert [r["trail"] for r in reports if not r["ok"]] == [str(chain)]


def test_a_keyed_trail_of_many_chains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.audit.chain import Hasher

    trail = write_chains(tmp_path, 2, round_robin(2, 10), hasher=Hasher(KEY))
    key = tmp_path / "key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    code, out = run_cli("audit", "verify", "--key-file", key, trail, capsys=capsys)
    assert code == 0, out
    code, out = run_cli("audit", "verify", trail, capsys=capsys)
    assert code == 1 and "--key-file" in out


def test_one_worker_then_many_is_one_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run with one worker wrote audit.jsonl; the next, with two, wrote their chains."""
    trail = tmp_path / "audit.jsonl"
    sink = open_sink(str(trail))
    sink.write(event(0, time=stamp(T0)))
    sink.close()
    write_chains(tmp_path, 2, [(0, 10), (1, 5)])
    code, out = run_cli("audit", "verify", trail, capsys=capsys)
    assert code == 0, out
    assert f"ok: {trail}: one trail of 3 chain(s)" in out
    code, out = run_cli("audit", "query", tmp_path, "--format", "json", capsys=capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [
        "ev-00000",
        "ev-00001",
        "ev-00000",
    ]


def test_exit_codes_stay_distinct() -> None:
    codes = [*EXIT_CODES.values(), *SET_EXIT_CODES.values()]
    assert len(set(codes)) == len(codes) and not {0, 1, 2} & set(codes)


# -- query and replay: the chains read as one trail, in time order ------------------------


def test_query_returns_every_chain_in_time_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Worker 2 answers first, worker 0 last; two events share a time.
    plan = [(2, 1), (1, 2), (0, 2), (2, 3), (0, 3), (1, 7), (0, 9), (1, 9)]
    trail = write_chains(tmp_path, 3, plan)
    code, out = run_cli("audit", "query", trail, "--format", "json", capsys=capsys)
    assert code == 0
    got = [json.loads(line)["id"] for line in out.splitlines()]
    # time, then chain, then seq
    assert got == [f"ev-{k:05d}" for k in (0, 2, 1, 4, 3, 5, 6, 7)]
    code, out = run_cli("audit", "query", tmp_path, "--format", "json", capsys=capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == got


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    workers=st.integers(min_value=2, max_value=4),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=2)),
        min_size=1,
        max_size=40,
    ),
)
def test_query_is_every_event_once_by_time_chain_seq(
    workers: int, steps: list[tuple[int, int]]
) -> None:
    """Any interleaving of writes over N chains, with a clock that ticks or stands still."""
    plan, now = [], 0
    for chain, tick in steps:
        now += tick
        plan.append((chain % workers, now))
    with tempfile.TemporaryDirectory() as tmp:
        trail = write_chains(Path(tmp), workers, plan, rotate_bytes=600)
        found = list(run_query(collect_sets([Path(tmp)]), Query()))
    ids = [e["id"] for e in found]
    assert sorted(ids) == sorted(f"ev-{k:05d}" for k in range(len(plan)))
    assert len(set(ids)) == len(ids)
    chain_of = {f"ev-{k:05d}": c for k, (c, _) in enumerate(plan)}
    keys = [(e["time"], chain_of[e["id"]], e["seq"]) for e in found]
    assert keys == sorted(keys)
    assert trail.name == "audit.jsonl"


def _sidecar(tmp: Path, worker: int, workers: int, clock: Any) -> Sidecar:
    settings_ = Settings(
        policies=POLICIES,
        listen="127.0.0.1:0",
        socket=tmp / f"w{worker}.sock",
        metrics_listen="127.0.0.1:0",
        audit_file=str(tmp / "audit.jsonl"),
        grace_s=2.0,
    )
    sink = open_sink(settings_.audit_file, worker=worker, workers=workers)
    return Sidecar(settings_, clock=clock, sink=sink)


def test_real_sidecars_one_per_worker_make_one_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two real servers, one per worker, answer real calls; verify, query and replay read
    their chains as one trail."""
    requests = [notify_request(), grant_request(), grant_request(approver=None), notify_request()]
    ids: list[str] = []
    ticks = itertools.count()

    def clock() -> datetime:  # one clock for both workers, a millisecond a reading
        return BUSINESS_HOURS + timedelta(milliseconds=next(ticks))

    sidecars = [_sidecar(tmp_path, i, 2, clock) for i in range(2)]
    try:
        endpoints = [s.start() for s in sidecars]
        clients = [StepguardClient(e.tcp or "") for e in endpoints]
        try:
            for k, request in enumerate(requests):
                ids.append(clients[k % 2].authorize(request).decision_id)
        finally:
            for c in clients:
                c.close()
    finally:
        for s in sidecars:
            s.stop(grace=1.0)
    trail = tmp_path / "audit.jsonl"
    schema = json.loads((Path(__file__).parents[2] / "sidecar/audit/event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for i in range(2):
        records = [json.loads(line) for line in lines_of(worker_path(trail, i))]
        assert records[0]["worker"] == i and records[0]["workers"] == 2
        for record in records:
            validator.validate(record)
    code, out = run_cli("audit", "verify", trail, capsys=capsys)
    assert code == 0, out
    code, out = run_cli("audit", "query", trail, "--format", "json", capsys=capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids
    code, out = run_cli(
        "replay", "--policies", POLICIES, "--format", "json", tmp_path, capsys=capsys
    )
    assert code == 0, out
    report = json.loads(out)
    assert report["decisions"] == len(requests) and report["changed"] == 0
    chains = {str(worker_path(trail, i)) for i in range(2)}
    assert set(report["files"]) == chains
    assert {r["file"]: r["decisions"] for r in report["read_from"]} == dict.fromkeys(chains, 2)


def test_a_killed_worker_restarted_continues_its_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Worker 1 is killed (SIGKILL) while writing; restarted with its index, its chain
    goes on where it ended and the trail still verifies as one."""
    trail = tmp_path / "audit.jsonl"
    script = (
        "import sys\n"
        "from sidecar.audit.sink import open_sink\n"
        "sink = open_sink(sys.argv[1], worker=1, workers=2)\n"
        "sink.write({'schema': 1, 'kind': 'decision', 'id': 'before', 'decision': 'ALLOW',\n"
        "            'time': '2026-11-25T10:00:00.000001Z'})\n"
        "print('written', flush=True)\n"
        "import time\n"
        "time.sleep(60)\n"
    )
    other = open_sink(str(trail), worker=0, workers=2)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(trail)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    manifest = manifest_path(trail).read_bytes()
    other.write(event(0, time=stamp(T0)))
    restarted = open_sink(str(trail), worker=1, workers=2)
    restarted.write(event(1, time=stamp(T0 + timedelta(seconds=1))))
    restarted.close()
    other.close()
    assert manifest_path(trail).read_bytes() == manifest  # same N: not rewritten
    chain = [parse_line(raw.rstrip(b"\n")) for raw in lines_of(worker_path(trail, 1))]
    assert [r.seq for r in chain] == list(range(len(chain)))
    assert [r.body.get("id") for r in chain if r.kind == "decision"] == ["before", "ev-00001"]
    code, out = run_cli("audit", "verify", trail, capsys=capsys)
    assert code == 0, out
    code, out = run_cli("audit", "query", trail, "--format", "json", capsys=capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [
        "ev-00000",  # 10:00:00.000000, worker 0
        "before",  # 10:00:00.000001, worker 1 before it was killed
        "ev-00001",  # 10:00:01, worker 1 restarted
    ]


def test_fewer_workers_later_still_one_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four workers, then two: the chains of workers 2 and 3 still belong to the trail."""
    write_chains(tmp_path, 4, round_robin(4, 8))
    trail = write_chains(tmp_path, 2, [(0, 100), (1, 101)])
    code, out = run_cli("audit", "verify", tmp_path, capsys=capsys)
    assert code == 0, out
    assert f"ok: {trail}: one trail of 4 chain(s)" in out
    headers = [
        json.loads(line)
        for i in range(2)
        for line in lines_of(worker_path(trail, i))
        if b'"kind":"segment"' in line
    ]
    assert {h["workers"] for h in headers} == {4}  # the active segments go on
    for f in collect([worker_path(trail, 3)])[0].segments:
        f.unlink()
    code, out = run_cli("audit", "verify", tmp_path, capsys=capsys)
    assert code == EXIT_MISSING and "chain audit.w3.jsonl is listed" in out, out


@pytest.mark.parametrize("worker", [0, 2])
def test_one_chain_named_by_its_own_file_is_verified_alone(
    three: Path, capsys: pytest.CaptureFixture[str], worker: int
) -> None:
    """`audit verify DIR/audit.w<i>.jsonl` checks that chain; its siblings are not its own.

    It used to read the chain as a trail of its own, look for `audit.w<i>.workers.json`
    and `audit.w<i>.w0.jsonl`, and fail with exit 8 on an intact trail.
    """
    chain = worker_path(three, worker)
    code, out = run_cli("audit", "verify", chain, capsys=capsys)
    assert code == 0, out
    assert f"ok: {chain}: " in out
    assert "missing" not in out and "FAILED" not in out
