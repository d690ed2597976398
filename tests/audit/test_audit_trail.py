"""The file trail on real files: group commit, chain, rotation, recovery, tampering, redaction.

Servers are not needed here: the sink is driven directly, and `stepguard audit
verify` / `query` run through the real CLI entry point.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.audit.chain import Hasher, canonical, parse_line, record_line
from sidecar.audit.event import CallMeta, build_event
from sidecar.audit.filesink import FileSink
from sidecar.audit.redact import Redactor
from sidecar.audit.segments import collect
from sidecar.audit.sink import MemorySink
from sidecar.audit.verify import EXIT_CODES, verify
from sidecar.cli.main import main
from sidecar.core.errors import AuditError, ConfigError
from sidecar.core.model import AuthzRequest, Decision, EntityData, EntityUid, Obligations, Result
from sidecar.serving.config import Settings, build_settings

KEY = b"0123456789abcdef0123456789abcdef"


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {"schema": 1, "kind": "decision", "id": f"ev-{i:05d}", "decision": "ALLOW", **extra}


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def ids_in(directory: Path) -> list[str]:
    out = []
    for trail in collect([directory]):
        for seg in trail.segments:
            for raw in lines_of(seg):
                rec = json.loads(raw)
                if rec["kind"] == "decision":
                    out.append(rec["id"])
    return out


def run_cli(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def make_trail(directory: Path, count: int, *, rotate_bytes: int = 0, **kw: Any) -> Path:
    path = directory / "audit.jsonl"
    sink = FileSink(path, rotate_bytes=rotate_bytes, **kw)
    for i in range(count):
        sink.write(event(i, pad="x" * 40))
    sink.close()
    return path


# -- group commit and the write-before-answer promise ------------------------------


class GatedSink(FileSink):
    """A real file sink whose first append waits for a gate: the test sees batching happen."""

    def __init__(self, path: Path) -> None:
        self.gate = threading.Event()
        self.appends: list[int] = []
        super().__init__(path)
        self.gate.clear()

    def _append(self, data: bytes) -> None:
        self.appends.append(data.count(b"\n"))
        if len(self.appends) == 2:  # the first event batch (1 was the header at open)
            self.gate.wait(10)
        super()._append(data)


def test_concurrent_writers_share_one_write(tmp_path: Path) -> None:
    sink = GatedSink(tmp_path / "audit.jsonl")
    first = threading.Thread(target=sink.write, args=(event(0),))
    first.start()
    while len(sink.appends) < 2:
        time.sleep(0.001)
    # The leader is blocked inside its write; these 15 queue behind it.
    others = [threading.Thread(target=sink.write, args=(event(i),)) for i in range(1, 16)]
    for t in others:
        t.start()
    while len(sink._open.bodies) < 15:
        time.sleep(0.001)
    sink.gate.set()
    for t in [first, *others]:
        t.join(10)
    sink.close()
    # header, the leader's event, then all 15 followers in one write, then the shutdown record
    assert sink.appends == [1, 1, 15, 1]
    assert sorted(ids_in(tmp_path)) == [f"ev-{i:05d}" for i in range(16)]
    assert verify(collect([tmp_path])[0]).ok


def test_write_returns_only_once_the_line_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path)
    missing: list[str] = []

    def worker(base: int) -> None:
        for i in range(base, base + 40):
            sink.write(event(i))
            if f'"id":"ev-{i:05d}"'.encode() not in path.read_bytes():
                missing.append(str(i))

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert missing == []
    report = verify(collect([path])[0])
    assert report.ok and report.decisions == 320


def test_fsync_durability_and_unknown_durability(tmp_path: Path) -> None:
    make_trail(tmp_path, 5, durability="fsync")
    assert verify(collect([tmp_path])[0]).ok
    # fsync: every segment write is synchronous (O_DSYNC), new segment or reopened; flush: not.
    for durability, synchronous in (("fsync", True), ("flush", False)):
        sink = FileSink(tmp_path / durability / "audit.jsonl", durability=durability)
        for rotation in range(2):
            sink.write(event(rotation))
            assert sink._fd is not None
            assert bool(fcntl.fcntl(sink._fd, fcntl.F_GETFL) & os.O_DSYNC) is synchronous
            sink._close_medium()  # the next write opens the segment again
        sink.close()
    with pytest.raises(ConfigError, match="does not offer it"):
        FileSink(tmp_path / "x.jsonl", durability="none")
    with pytest.raises(ConfigError, match="audit_durability 'none'"):
        build_settings({"audit_durability": "none"})


def test_settings_from_env_and_file(tmp_path: Path) -> None:
    config = tmp_path / "stepguard.yaml"
    config.write_text(
        "audit-durability: fsync\naudit_redact: [context.ticket, entities.*.attrs.email]\n"
    )
    s = build_settings(
        {"audit_rotate_bytes": 1024},
        {"STEPGUARD_AUDIT_ROTATE_AGE_S": "60", "STEPGUARD_AUDIT_REDACT_MODE": "remove"},
        config,
    )
    assert s.audit_durability == "fsync"
    assert s.audit_redact == ("context.ticket", "entities.*.attrs.email")
    assert (s.audit_rotate_bytes, s.audit_rotate_age_s, s.audit_redact_mode) == (
        1024,
        60.0,
        "remove",
    )
    assert Settings().audit_durability == "flush"


# -- rotation -------------------------------------------------------------------------


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


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    path = make_trail(tmp_path, 3, rotate_bytes=600)
    sink = FileSink(path, rotate_bytes=600)
    sink.write(event(99))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok, report.problem
    assert report.notes == []
    assert ids_in(tmp_path)[-1] == "ev-00099"


# -- crash recovery ---------------------------------------------------------------------


def test_torn_last_line_is_kept_aside_and_recorded(tmp_path: Path) -> None:
    path = make_trail(tmp_path, 4)
    torn = b'{"seq":6,"prev":"abc","hash":"def","kind":"decis'
    with path.open("ab") as f:
        f.write(torn)
    code = main(["audit", "verify", str(path)])
    assert code == EXIT_CODES["truncated"]
    sink = FileSink(path)
    sink.write(event(5))
    sink.close()
    aside = list(tmp_path.glob("audit.jsonl.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn
    report = verify(collect([tmp_path])[0])
    assert report.ok, report.problem
    recoveries = [json.loads(x) for x in lines_of(path) if json.loads(x)["kind"] == "recovery"]
    assert len(recoveries) == 1
    note = recoveries[0]
    assert note["reason"] == "torn_tail" and note["bytes"] == len(torn)
    assert note["moved_to"] == aside[0].name
    assert any("torn_tail" in n for n in report.notes)


def test_a_file_holding_only_a_torn_header_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":0,"prev":"00')
    sink = FileSink(path)
    sink.write(event(1))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok, report.problem
    assert len(list(tmp_path.glob("audit.jsonl.torn-*"))) == 1


def test_records_lost_at_the_end_are_named_at_restart(tmp_path: Path) -> None:
    """The head anchor remembers the last commit; a trail that ends before it says so."""
    path = make_trail(tmp_path, 6)
    data = lines_of(path)
    path.write_bytes(b"".join(data[:-3]))  # the shutdown record and two decisions gone
    sink = FileSink(path)
    sink.write(event(7))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok
    notes = [json.loads(x) for x in lines_of(path) if b'"recovery"' in x]
    assert notes and notes[0]["reason"] == "records_missing"
    last_kept = parse_line(data[-4].rstrip(b"\n")).seq
    assert (notes[0]["from_seq"], notes[0]["to_seq"]) == (last_kept + 1, last_kept + 3)


class FlakyDisk(FileSink):
    """A real file sink whose writes fail like a full disk while `full` is set:
    half of the batch reaches the file, then ENOSPC, as a real short write does."""

    full = False

    def _append(self, data: bytes) -> None:
        if self.full:
            assert self._fd is not None
            os.write(self._fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        super()._append(data)


def test_write_failure_denies_rolls_back_and_recovers_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FlakyDisk(path, probe_interval_s=0.05)
    seen: list[tuple[bool, str]] = []
    sink.watch(lambda ok, detail: seen.append((ok, detail)))
    sink.write(event(1))
    size = path.stat().st_size
    sink.full = True
    for i in (2, 3, 4):
        with pytest.raises(AuditError, match="No space left on device"):
            sink.write(event(i))
        assert path.stat().st_size == size  # the partial batch was cut off again
    assert not sink.healthy
    assert seen[0][0] is False and "No space left" in seen[0][1]
    sink.full = False
    deadline = time.monotonic() + 10
    while not sink.healthy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.healthy, "the probe did not bring the trail back"
    assert seen[-1] == (True, "")
    sink.write(event(5))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok, report.problem
    records = [json.loads(x) for x in lines_of(path)]
    outage = [r for r in records if r["kind"] == "outage"]
    assert len(outage) == 1 and outage[0]["refused_events"] == 3
    assert "No space left" in outage[0]["first_error"]
    assert [r["id"] for r in records if r["kind"] == "decision"] == ["ev-00001", "ev-00005"]


class BuggyMedium(FileSink):
    """A real file sink whose writes raise what no medium should (a bug) while `bug` is set."""

    bug = False

    def _append(self, data: bytes) -> None:
        if self.bug:
            raise RuntimeError("a bug in the medium")
        super()._append(data)


def test_an_unexpected_failure_denies_too_and_recovers_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = BuggyMedium(path, probe_interval_s=0.05)
    sink.write(event(1))
    sink.bug = True
    with pytest.raises(AuditError, match="audit trail failed: RuntimeError: a bug in the medium"):
        sink.write(event(2))
    assert not sink.healthy
    sink.bug = False
    deadline = time.monotonic() + 10
    while not sink.healthy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.healthy, "the probe did not bring the trail back"
    sink.write(event(3))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok, report.problem
    decided = [json.loads(x)["id"] for x in lines_of(path) if b'"decision"' in x]
    assert decided == ["ev-00001", "ev-00003"]


def test_closed_sink_refuses(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "audit.jsonl")
    sink.close()
    with pytest.raises(AuditError, match="closed"):
        sink.write(event(1))


# -- tampering: each kind found at its file and line, with its exit code -----------------


@pytest.fixture
def rotated(tmp_path: Path) -> Path:
    """A trail of several segments; returns the active file's path."""
    path = make_trail(tmp_path / "trail", 60, rotate_bytes=2500)
    assert len(collect([path])[0].segments) >= 3
    return path


def segment(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n:06d}")


def edit(path: Path, fn: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(fn(lines_of(path))))


def expect(capsys: pytest.CaptureFixture[str], path: Path, kind: str, file: Path, line: int) -> str:
    code, out = run_cli("audit", "verify", path, capsys=capsys)
    assert code == EXIT_CODES[kind], out
    assert f"FAILED: {path}: {file}:{line}: {kind}:" in out, out
    return out


def test_intact_trail_verifies(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli("audit", "verify", rotated.parent, capsys=capsys)
    assert code == 0 and out.startswith(f"ok: {rotated}: ")
    code, out = run_cli("audit", "verify", "--json", rotated, capsys=capsys)
    report = json.loads(out)
    assert report["ok"] and report["decisions"] == 60


def test_edited_byte(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seg = segment(rotated, 2)
    edit(seg, lambda ls: [*ls[:3], ls[3].replace(b'"ALLOW"', b'"ALLOX"'), *ls[4:]])
    out = expect(capsys, rotated, "modified", seg, 4)
    assert "hash does not match" in out


def test_deleted_line(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seg = segment(rotated, 2)
    edit(seg, lambda ls: ls[:2] + ls[3:])
    expect(capsys, rotated, "deleted", seg, 3)


def test_inserted_copy(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seg = segment(rotated, 2)
    edit(seg, lambda ls: [*ls[:4], ls[1], *ls[4:]])
    expect(capsys, rotated, "inserted", seg, 5)


def test_inserted_forgery_with_a_recomputed_hash(
    rotated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a key a forger can hash a new line, but it forks the chain: found."""
    seg = segment(rotated, 2)
    lines = lines_of(seg)
    before = parse_line(lines[2].rstrip(b"\n"))
    forged, _ = record_line(Hasher(), before.seq + 1, before.hash, canonical(event(777)))
    seg.write_bytes(b"".join([*lines[:3], forged, *lines[3:]]))
    expect(capsys, rotated, "inserted", seg, 4)


def test_swapped_lines(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seg = segment(rotated, 2)
    edit(seg, lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]])
    expect(capsys, rotated, "reordered", seg, 4)


def test_torn_truncation(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = rotated.read_bytes()
    rotated.write_bytes(data[:-25])
    expect(capsys, rotated, "truncated", rotated, len(data[:-25].splitlines()))


def test_truncation_at_a_line_boundary(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(rotated)
    rotated.write_bytes(b"".join(lines[:-2]))
    out = expect(capsys, rotated, "truncated", rotated, len(lines) - 1)
    assert "head anchor" in out


def test_truncated_middle_segment(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seg = segment(rotated, 2)
    lines = lines_of(seg)
    seg.write_bytes(b"".join(lines[:-2]))
    expect(capsys, rotated, "truncated", seg, len(lines) - 1)


def test_deleted_segment_file(rotated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    segment(rotated, 2).unlink()
    expect(capsys, rotated, "deleted", segment(rotated, 3), 1)
    segment(rotated, 1).unlink()
    code, out = run_cli("audit", "verify", rotated, capsys=capsys)
    assert code == EXIT_CODES["deleted"] and "--partial" in out
    code, out = run_cli("audit", "verify", "--partial", rotated, capsys=capsys)
    assert code == 0, out


def test_exit_codes_are_distinct() -> None:
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES) == 5
    assert not {0, 1, 2} & set(EXIT_CODES.values())


def test_verify_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli("audit", "verify", tmp_path / "nothing.jsonl", capsys=capsys)
    assert code == 1 and "no such file" in out


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_changed_byte_is_found_on_its_line(tmp_path_factory: Any, data: st.DataObject) -> None:
    """Property: change any one byte of a trail to any other byte, and verify fails,
    naming the line that held the byte."""
    directory = tmp_path_factory.mktemp("prop")
    path = make_trail(directory, 5)
    original = path.read_bytes()
    pos = data.draw(st.integers(0, len(original) - 1), label="pos")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != original[pos]), label="byte")
    path.write_bytes(original[:pos] + bytes([new]) + original[pos + 1 :])
    report = verify(collect([path])[0])
    assert report.problem is not None
    assert report.problem.file == str(path)
    assert report.problem.line == original[:pos].count(b"\n") + 1
    shutil.rmtree(directory)


# -- the HMAC key -------------------------------------------------------------------


def test_keyed_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    key_file.chmod(0o600)
    path = make_trail(tmp_path / "t", 6, hasher=Hasher(KEY))
    code, out = run_cli("audit", "verify", "--key-file", key_file, path, capsys=capsys)
    assert code == 0 and "hmac-sha256" in out
    code, out = run_cli("audit", "verify", path, capsys=capsys)
    assert code == 1 and "keyed (hmac-sha256): pass the same key with --key-file" in out
    other = tmp_path / "other"
    other.write_bytes(b"another key, 16+ bytes long")
    other.chmod(0o600)
    code, out = run_cli("audit", "verify", "--key-file", other, path, capsys=capsys)
    # Another key is what a trail rewritten under another key looks like: modified.
    assert code == EXIT_CODES["modified"] and "another key" in out
    # Whoever can write the file but lacks the key: re-hashing an edited line is not enough.
    lines = lines_of(path)
    rec = parse_line(lines[3].rstrip(b"\n"))
    body = dict(rec.body, decision="DENY")
    forged, _ = record_line(Hasher(b"guessed key guessed key"), rec.seq, rec.prev, canonical(body))
    path.write_bytes(b"".join([*lines[:3], forged, *lines[4:]]))
    code, out = run_cli("audit", "verify", "--key-file", key_file, path, capsys=capsys)
    assert code == EXIT_CODES["modified"] and f"{path}:4: modified" in out


def test_short_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"short")
    key_file.chmod(0o600)
    assert main(["audit", "verify", "--key-file", str(key_file), str(tmp_path)]) == 1
    assert "at least 16" in capsys.readouterr().err
    from sidecar.serving.trail import open_trail

    settings = Settings(audit_hmac_key_file=key_file, audit_file=str(tmp_path / "a.jsonl"))
    with pytest.raises(ConfigError, match="at least 16"):
        open_trail(settings)  # the sidecar refuses to start


def test_restart_with_another_key_is_refused(tmp_path: Path) -> None:
    path = make_trail(tmp_path, 2, hasher=Hasher(KEY))
    sink = FileSink(path, hasher=Hasher(b"a different key of 32 bytes!!!!!"))
    assert not sink.healthy
    with pytest.raises(AuditError, match="HMAC key"):
        sink.write(event(3))
    sink.close()


# -- events and redaction ---------------------------------------------------------------


def request(**context: Any) -> AuthzRequest:
    return AuthzRequest(
        principal=EntityUid("User", "alice"),
        action=EntityUid("Action", "read"),
        resource=EntityUid("Doc", "d1"),
        context={"workflow_id": "wf", "run_id": "r1", "step_id": "s1", **context},
        entities=(EntityData(EntityUid("User", "alice"), {"email": "a@x.org", "apiKey": "k-123"}),),
    )


ALLOW = Result(Decision.ALLOW, (), (), Obligations(), "rev1")
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def test_event_fields() -> None:
    meta = CallMeta(peer="ipv4:127.0.0.1:5000", identity="spiffe://x", trace_id="ab" * 16)
    ev = build_event("id-1", AT, request(), ALLOW, meta, cached=True, latency_s=0.0012)
    assert ev["schema"] == 1 and ev["kind"] == "decision" and ev["id"] == "id-1"
    assert ev["time"] == "2026-11-25T10:00:00.000000Z"
    assert ev["caller"] == {"peer": "ipv4:127.0.0.1:5000", "identity": "spiffe://x"}
    assert ev["trace_id"] == "ab" * 16 and ev["cached"] is True and ev["latency_us"] == 1200
    assert (ev["workflow_id"], ev["run_id"], ev["step_id"]) == ("wf", "r1", "s1")
    assert ev["policy_revision"] == "rev1" and ev["decision"] == "ALLOW"


def test_default_redaction_hides_secrets_at_any_depth() -> None:
    secret_ctx = {"nested": {"db_password": "hunter2", "ok": 1}, "token": "t0k"}
    req = request(**secret_ctx, note="plain")
    redactor = Redactor(key=KEY)
    ev = build_event("i", AT, req, ALLOW, CallMeta(), cached=False, latency_s=0, redactor=redactor)
    text = json.dumps(ev)
    for secret in ("hunter2", "t0k", "k-123"):
        assert secret not in text
    assert ev["context"]["note"] == "plain" and ev["context"]["nested"]["ok"] == 1
    assert ev["context"]["token"].startswith("redacted:hmac-sha256:")
    assert ev["entities"][0]["attrs"]["email"] == "a@x.org"
    # Equal secrets hash equally under one key, so auditors can still correlate.
    again = Redactor(key=KEY).apply({"context": {"token": "t0k"}})
    assert again["context"]["token"] == ev["context"]["token"]
    assert Redactor(key=b"x" * 32).apply({"context": {"token": "t0k"}}) != again
    # The request itself is untouched.
    assert req.context["nested"] == {"db_password": "hunter2", "ok": 1}


def test_configured_paths_hash_or_remove() -> None:
    req = request(approval={"ticket": "CHG-9", "approver": "bob"})
    hashed = Redactor(["context.approval.ticket", "entities.*.attrs.email"], key=KEY)
    ev = build_event("i", AT, req, ALLOW, CallMeta(), cached=False, latency_s=0, redactor=hashed)
    assert ev["context"]["approval"]["ticket"].startswith("redacted:")
    assert ev["context"]["approval"]["approver"] == "bob"
    assert ev["entities"][0]["attrs"]["email"].startswith("redacted:")
    removed = Redactor(["context.approval.ticket", "context.workflow_id"], mode="remove")
    ev = build_event("i", AT, req, ALLOW, CallMeta(), cached=False, latency_s=0, redactor=removed)
    assert "ticket" not in ev["context"]["approval"]
    assert ev["workflow_id"] == ""  # derived from the redacted context
    with pytest.raises(ConfigError):
        Redactor(["decision"])
    with pytest.raises(ConfigError):
        Redactor(["context..x"])


def test_cached_decisions_are_audited_as_such(tmp_path: Path) -> None:
    from sidecar.core.bundle import load_bundle
    from sidecar.decision.cache import DecisionCache
    from sidecar.decision.decider import Decider
    from sidecar.decision.metrics import Metrics

    (tmp_path / "all.cedar").write_text("permit(principal, action, resource);\n")
    (tmp_path / "schema.cedarschema").write_text(
        "entity User { email: String, apiKey: String };\nentity Doc;\n"
        "action read appliesTo { principal: User, resource: Doc, "
        "context: { workflow_id: String, run_id: String, step_id: String } };\n"
    )
    bundle = load_bundle(tmp_path)
    sink = MemorySink()
    cache = DecisionCache(100, 1 << 20)
    decider = Decider(sink, Metrics(), lambda: AT, redactor=Redactor(), cache=cache)
    first = decider.decide(bundle, request(), CallMeta(), at=AT, started=0.0)
    second = decider.decide(bundle, request(), CallMeta(), at=AT, started=0.0)
    assert first.result.allowed and second.result.allowed
    assert (first.cached, second.cached) == (False, True)
    assert [e["cached"] for e in sink.events] == [False, True]
    assert [e["id"] for e in sink.events] == [first.decision_id, second.decision_id]
    sink.fail_with = "disk full"
    denied = decider.decide(bundle, request(), CallMeta(), at=AT, started=0.0)
    assert denied.cached and denied.result.decision is Decision.DENY
    assert "audit trail unavailable" in denied.result.summary()
    assert "disk full" in denied.result.summary()
    assert not decider.audit_healthy


def test_every_kind_of_record_matches_the_published_schema(tmp_path: Path) -> None:
    schema_path = Path(__file__).resolve().parents[2] / "sidecar/audit/event.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))
    path = tmp_path / "audit.jsonl"
    sink = FlakyDisk(path, probe_interval_s=0.05)
    meta = CallMeta(peer="ipv4:127.0.0.1:1", identity="spiffe://x/y", trace_id="cd" * 16)
    from datetime import timedelta

    with_ttl = Result(Decision.ALLOW, (), (), Obligations(timedelta(minutes=15)), "rev")
    sink.write(build_event("d1", AT, request(), with_ttl, meta, cached=False, latency_s=0.001))
    sink.full = True
    with pytest.raises(AuditError):
        sink.write(build_event("d2", AT, request(), ALLOW, CallMeta(), cached=True, latency_s=0))
    sink.full = False
    sink.write(build_event("d3", AT, request(), ALLOW, CallMeta(), cached=True, latency_s=0))
    sink.close()
    with path.open("ab") as f:
        f.write(b'{"seq":9')
    FileSink(path).close()
    records = [json.loads(x) for x in lines_of(path)]
    assert {r["kind"] for r in records} == {"segment", "decision", "outage", "recovery", "shutdown"}
    for record in records:
        errors = [e.message for e in validator.iter_errors(record)]
        assert errors == [], (record["kind"], errors)
    bad = dict(records[1], decision="MAYBE")
    assert list(validator.iter_errors(bad))
