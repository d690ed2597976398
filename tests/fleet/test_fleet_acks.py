"""The shipper's acknowledgements, record by record, with a real nats-server: a record the
broker refuses, or whose acknowledgement never comes, in the middle of a pipelined batch
holds the cursor just before it (the records after it were stored, and are resent with the
same ids, which the broker drops); the headers arrive as the collectors read them. And the
reader of a trail listed before a rotation reads the rotated segments' unread ends."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError

from sidecar.audit.filesink import FileSink
from sidecar.fleet import broker, settings, ship, tail, wire
from tests.audit.trails import event
from tests.fleet.fleet import stream_messages, trail_lines
from tests.fleet.servers import Nats


def write_trail(directory: Path, count: int, big: int | None = None) -> Path:
    path = directory / "audit.jsonl"
    sink = FileSink(path)
    for i in range(count):
        sink.write(event(i, pad="x" * (6000 if i == big else 40)))
    sink.close()
    return path


def shipper(nats: Nats, trail: Path, state: Path, name: str) -> ship.Shipper:
    fleet = settings.load(
        environ={
            "STEPGUARD_NATS_SERVERS": ",".join(nats.urls),
            "STEPGUARD_REPLICAS": "1",
            "STEPGUARD_REQUEST_TIMEOUT_S": "1",
        }
    )
    return ship.Shipper(fleet, trail, state, name)


def seq_of(line: bytes) -> int:
    return int(line.split(b",", 1)[0].removeprefix(b'{"seq":'))


def test_a_record_refused_in_the_middle_of_a_batch_keeps_the_cursor_before_it(
    tmp_path: Path, nats: Nats
) -> None:
    trail_dir = tmp_path / "trail"
    trail_dir.mkdir()
    write_trail(trail_dir, 30, big=12)
    lines = trail_lines(trail_dir)
    big = next(seq for (_, seq), line in lines.items() if len(line) > 5000)
    sh = shipper(nats, trail_dir, tmp_path / "state", "pod-n")

    async def go() -> None:
        await sh._connect()
        js = sh._js
        assert js is not None
        # the operator's stream refuses messages over 2,000 bytes: the broker's own "no"
        config = dataclasses.replace(broker.stream_config(sh.settings), max_msg_size=2000)
        await js.update_stream(config)
        for _ in range(2):  # retried: still held before the refused record, never past it
            with pytest.raises(APIError):
                await sh.round(js)
            assert sh.cursor["audit.jsonl"].seq == big - 1
        sh._save_cursor(force=True)
        assert tail.load_cursor(sh.cursor_path)["audit.jsonl"].seq == big - 1
        # every other record of the batch was stored, the ones after it too
        assert (await js.stream_info(sh.settings.stream)).state.messages == len(lines) - 1
        # the operator lifts the limit: shipping resumes at the refused record; the records
        # after it are resent with their ids and dropped as duplicates
        await js.update_stream(dataclasses.replace(config, max_msg_size=-1))
        assert await sh.round(js) == len(lines) - big
        assert sh.cursor["audit.jsonl"].seq == max(seq for _, seq in lines)
        assert sh.state.duplicates == len(lines) - big - 1
        assert sh._nc is not None
        await sh._nc.close()

    asyncio.run(go())
    assert stream_messages(nats.urls) == len(lines)


def test_an_acknowledgement_that_never_comes_keeps_the_cursor_before_its_record(
    tmp_path: Path, nats: Nats, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the batch handed over in buffers of a few records: the places run on across them
    monkeypatch.setattr(ship, "SEND_BYTES", 1000)
    trail_dir = tmp_path / "trail"
    trail_dir.mkdir()
    write_trail(trail_dir, 40)
    lines = trail_lines(trail_dir)
    sh = shipper(nats, trail_dir, tmp_path / "state", "pod-m")

    async def go() -> None:
        await sh._connect()
        js, acks = sh._js, sh._acks
        assert js is not None and acks is not None
        take = acks.take

        def lose_the_eighth(where: str, result: bool | BaseException) -> None:
            if where.partition(".")[2] != "7":  # the answer to the batch's 8th record
                take(where, result)

        acks.take = lose_the_eighth  # type: ignore[method-assign]
        with pytest.raises(NatsTimeout):
            await sh.round(js)
        assert sh.cursor["audit.jsonl"].seq == 6  # the seventh record (seq 6), not past it
        acks.take = take  # type: ignore[method-assign]
        assert await sh.round(js) == len(lines) - 7
        assert sh.cursor["audit.jsonl"].seq == len(lines) - 1
        # what the collectors read: the record byte for byte, its place in the headers
        got = await js.get_msg(sh.settings.stream, 10)
        assert got.data == lines[("audit.jsonl", seq_of(got.data or b""))]
        seq = seq_of(got.data or b"")
        assert got.headers == {
            wire.MSG_ID: f"pod-m/audit.jsonl:{seq}",
            wire.H_SIDECAR: "pod-m",
            wire.H_CHAIN: "audit.jsonl",
            wire.H_SEQ: str(seq),
            wire.H_SEGMENT: "1",
        }
        assert sh._nc is not None
        await sh._nc.close()

    asyncio.run(go())
    assert stream_messages(nats.urls) == len(lines)  # each once: the resends were dropped


def test_a_trail_listed_before_its_rotations_is_read_through_them(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, rotate_bytes=1500)
    for i in range(3):
        sink.write(event(i))
    [listed] = tail.chains_of(tmp_path)  # the listing the shipper holds
    index = tail.SegmentIndex()
    first = list(tail.read_lines(listed, None, index, 1000))
    last = first[-1]
    pos = tail.Position(last.segment, last.end, last.seq, last.hash)
    for i in range(3, 40):  # rotates several times after that listing
        sink.write(event(i))
    sink.close()
    rest = list(tail.read_lines(listed, pos, index, 1000))
    seqs = [line.seq for line in first + rest]
    assert len({line.segment for line in rest}) > 2
    assert seqs == list(range(max(seq for _, seq in trail_lines(tmp_path)) + 1))
