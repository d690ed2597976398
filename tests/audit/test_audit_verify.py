"""`stepguard audit verify` (sidecar/audit/verify.py): each kind of tampering found at its file
and line with its exit code, and the HMAC key.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.audit.chain import Hasher, canonical, parse_line, record_line
from sidecar.audit.segments import collect
from sidecar.audit.verify import EXIT_CODES, verify
from sidecar.cli.main import main
from sidecar.core.errors import ConfigError
from sidecar.serving.config import Settings
from tests.audit.trails import KEY, event, lines_of, make_trail, run_cli

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
