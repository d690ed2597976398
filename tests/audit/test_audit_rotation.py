"""Rotation (sidecar/audit/rotation.py): by size and by age, nothing lost, one chain."""

from __future__ import annotations

import time
from pathlib import Path

from sidecar.audit.chain import parse_line
from sidecar.audit.filesink import FileSink
from sidecar.audit.segments import collect
from sidecar.audit.verify import verify
from tests.audit.trails import event, ids_in, lines_of, make_trail


def test_rotation_by_size_loses_nothing_and_chains_across_files(tmp_path: Path) -> None:
    path = make_trail(tmp_path, 120, rotate_bytes=2000)
    trail = collect([path])[0]
    assert len(trail.segments) > 4
    assert sorted(ids_in(tmp_path)) == [f"ev-{i:05d}" for i in range(120)]
    headers = [parse_line(lines_of(seg)[0].rstrip(b"\n")) for seg in trail.segments]
    assert [h.body["segment"] for h in headers] == list(range(1, len(headers) + 1))
    for prev_seg, header in zip(trail.segments, headers[1:], strict=False):
        last = parse_line(lines_of(prev_seg)[-1].rstrip(b"\n"))
        assert header.body["follows"] == last.hash == header.prev
        assert header.body["previous_file"] == prev_seg.name
    assert verify(trail).ok


def test_rotation_by_age_also_when_idle(tmp_path: Path) -> None:
    offset = [0.0]
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, rotate_age_s=10, clock=lambda: time.time() + offset[0])
    sink.write(event(1))
    offset[0] = 11  # the segment is now older than 10 s: the next commit rotates it
    sink.write(event(2))
    assert (tmp_path / "audit.jsonl.000001").exists()
    sink.write(event(3))
    offset[0] = 30  # idle: the ticker rotates on its own
    deadline = time.monotonic() + 10
    while not (tmp_path / "audit.jsonl.000002").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "audit.jsonl.000002").exists()
    sink.write(event(4))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok and report.decisions == 4
    assert ids_in(tmp_path) == [f"ev-{i:05d}" for i in (1, 2, 3, 4)]
