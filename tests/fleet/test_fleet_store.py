"""The PostgreSQL store and the trail's tail, on their own: idempotent inserts (a fork is
told apart from a redelivery), records read back in trail order and laid out as the
segments they came from; a cursor that follows a rotation between two reads."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import psycopg

from sidecar.audit.filesink import FileSink
from sidecar.fleet import export, store, tail
from tests.audit.trails import event, make_trail
from tests.fleet.fleet import trail_lines


def rows_of(trail: Path, sidecar: str) -> list[store.Row]:
    out = []
    for chain in tail.chains_of(trail):
        for line in tail.read_lines(chain, None, tail.SegmentIndex(), 10**6):
            out.append(
                store.Row(
                    sidecar,
                    line.chain,
                    line.seq,
                    line.segment,
                    line.kind,
                    line.time,
                    line.hash,
                    line.prev,
                    line.data,
                )
            )
    return out


def test_inserts_are_idempotent_and_read_back_in_trail_order(tmp_path: Path, pg_dsn: str) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    make_trail(trail, 200, rotate_bytes=4096)
    rows = rows_of(trail, "pod-s")
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        store.ensure_schema(conn)
        store.ensure_schema(conn)  # idempotent
        assert store.insert(conn, shuffled[:120]) == (120, [])
        assert store.insert(conn, shuffled) == (len(rows) - 120, [])  # the rest, once
        assert store.insert(conn, shuffled) == (0, [])  # redelivered: nothing
        other = rows[5]
        forged = dataclasses.replace(other, line=other.line.replace(b"ALLOW", b"DENY!"))
        assert store.insert(conn, [forged]) == (0, [forged])  # a fork, not a repeat
        assert store.count(conn) == len(rows)
        back = [line for _, line in store.lines(conn, "pod-s", "audit.jsonl")]
        assert back == [r.line for r in rows]  # trail order, byte for byte
        out = tmp_path / "out"
        [laid] = export.materialize(conn, out)
    assert laid == out / "pod-s"
    # the same files, segment by segment: rotated ones by number, the last one active
    assert sorted(p.name for p in laid.iterdir()) == sorted(
        p.name for p in trail.iterdir() if not p.name.endswith(".head")
    )
    assert trail_lines(laid) == trail_lines(trail)


def test_the_cursor_follows_a_rotation_between_two_reads(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, rotate_bytes=1500)
    for i in range(3):
        sink.write(event(i))
    [chain] = tail.chains_of(tmp_path)
    index = tail.SegmentIndex()
    first = list(tail.read_lines(chain, None, index, 1000))
    pos = tail.Position(first[-1].segment, first[-1].end, first[-1].seq, first[-1].hash)
    for i in range(3, 40):  # rotates several times; the segment read from is renamed
        sink.write(event(i))
    sink.close()
    [chain] = tail.chains_of(tmp_path)
    rest = list(tail.read_lines(chain, pos, index, 1000))
    seqs = [line.seq for line in first + rest]
    assert seqs == list(range(len(seqs))) and len({line.segment for line in rest}) > 2
    # a cursor saved and loaded again resumes where it was
    cursor_file = tmp_path / "state" / "cursor.json"
    tail.save_cursor(cursor_file, {"audit.jsonl": pos}, {"sidecar": "x"})
    assert tail.load_cursor(cursor_file) == {"audit.jsonl": pos}


def test_a_trail_started_over_is_read_again_from_its_start(tmp_path: Path) -> None:
    """The cursor is past the end of a trail whose files were replaced: its records are read
    again (the store then reports the reused seqs as forks), never skipped."""
    make_trail(tmp_path, 30, rotate_bytes=1500)
    [chain] = tail.chains_of(tmp_path)
    lines = list(tail.read_lines(chain, None, tail.SegmentIndex(), 1000))
    pos = tail.Position(lines[-1].segment, lines[-1].end, lines[-1].seq, lines[-1].hash)
    for p in list(tmp_path.iterdir()):
        p.unlink()
    make_trail(tmp_path, 3)  # a new trail, one segment
    [chain] = tail.chains_of(tmp_path)
    again = list(tail.read_lines(chain, pos, tail.SegmentIndex(), 1000))
    assert [line.seq for line in again] == list(range(len(again))) and len(again) >= 4
    # a segment cut back under the cursor is read again from its start too
    last = again[-1]
    cut = tail.Position(last.segment, last.end + 500, last.seq, last.hash)
    assert [line.seq for line in tail.read_lines(chain, cut, tail.SegmentIndex(), 1000)] == [
        line.seq for line in again
    ]
