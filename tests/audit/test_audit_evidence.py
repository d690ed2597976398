"""Evidence that cannot be forged or rolled back, and trail files that misbehave.

Issue 16 (4, 5), issue 25 (4, 5), issue 27 (7, 8): real trails written by the
real sink or a real `stepguard serve`, attacked on disk, then checked with the
real `stepguard audit verify` / `query` and a restarted sidecar.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.audit.anchor import anchor_bytes
from sidecar.audit.chain import GENESIS, Hasher, canonical, parse_line, record_line
from sidecar.audit.checkpoint import read_checkpoints
from sidecar.audit.filesink import FileSink
from sidecar.audit.verify import EXIT_CODES
from sidecar.cli.main import main
from sidecar.core.errors import AuditError, ConfigError
from sidecar.serving.config import Settings
from sidecar.serving.trail import open_trail
from tests.audit.test_audit_server import (
    ask,
    audit_gauge,
    health_of,
    serve,
    wait_for,
    write_policies,
)
from tests.conftest import missing

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]
KEY = b"0123456789abcdef0123456789abcdef"
HANG_GUARD_S = 60  # only a guard against a hang, never a timing assertion


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies")


def key_file(directory: Path, key: bytes = KEY, mode: int = 0o600) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "audit.key"
    path.write_bytes(key + b"\n")
    path.chmod(mode)
    return path


def make_trail(directory: Path, count: int, **kw: Any) -> Path:
    path = directory / "audit.jsonl"
    sink = FileSink(path, **kw)
    for i in range(count):
        sink.write({"schema": 1, "kind": "decision", "id": f"ev-{i:05d}", "decision": "ALLOW"})
    sink.close()
    return path


def cli(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process of its own: a hang shows as a timeout, not a stuck suite."""
    return subprocess.run(
        [*STEPGUARD, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


# -- issue 16.4: nothing to verify -----------------------------------------------------


def test_nothing_to_verify_exits_1_in_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "not-a-trail").mkdir()
    code, out, err = cli("audit", "verify", empty, capsys=capsys)
    assert code == 1 and "nothing to verify" in err and str(empty) in err, (out, err)
    code, out, _ = cli("audit", "verify", "--json", empty, capsys=capsys)
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and "nothing to verify" in report["error"]

    # A trail file with no records (0 bytes) is nothing to verify either.
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "audit.jsonl").write_bytes(b"")
    code, out, err = cli("audit", "verify", tmp_path / "t" / "audit.jsonl", capsys=capsys)
    assert code == 1 and "nothing to verify" in err
    code, out, _ = cli("audit", "verify", "--json", tmp_path / "t", capsys=capsys)
    report = json.loads(out)
    assert code == 1 and report["exit"] == 1 and "no records" in report["error"]


# -- issue 16.5: a missing head anchor fails unless accepted ------------------------------


def test_missing_head_anchor_fails_unless_accepted_and_says_what_was_not_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_trail(tmp_path, 8)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-3]))  # a cut at a line boundary...
    path.with_name("audit.jsonl.head").unlink()  # ...and the anchor that would show it, gone
    code, out, err = cli("audit", "verify", path, capsys=capsys)
    assert code == 1, out
    assert "head anchor" in out and "--accept-missing-anchor" in out, out
    code, out, _ = cli("audit", "verify", "--json", path, capsys=capsys)
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert report["problem"]["kind"] == "cannot verify"

    code, out, _ = cli("audit", "verify", "--accept-missing-anchor", path, capsys=capsys)
    assert code == 0 and "not checked: the end of the trail" in out, out
    code, out, _ = cli("audit", "verify", "--json", "--accept-missing-anchor", path, capsys=capsys)
    report = json.loads(out)
    assert code == 0 and any("head anchor" in u for u in report["unchecked"])
    # query --verify refuses the same trail, and takes the same flag.
    code, _, err = cli("audit", "query", "--verify", path, capsys=capsys)
    assert code == 1 and "--accept-missing-anchor" in err
    code, _, _ = cli("audit", "query", "--verify", "--accept-missing-anchor", path, capsys=capsys)
    assert code == 0


# -- issue 25.5: a downgrade is a modification, and never advised -------------------------


def rewrite(path: Path, hasher: Hasher, *, drop_seq: int) -> None:
    """Rewrite a trail with `sidecar.audit.chain` under `hasher`, one record removed, new anchor."""
    records = [parse_line(raw) for raw in path.read_bytes().splitlines()]
    out, prev, seq = [], GENESIS, 0
    for rec in records:
        if rec.seq == drop_seq:
            continue
        body = dict(rec.body)
        if body["kind"] == "segment":
            body["algorithm"], body["key_id"] = hasher.algorithm, hasher.key_id
        line, prev = record_line(hasher, seq, prev, canonical(body))
        out.append(line)
        seq += 1
    path.write_bytes(b"".join(out))
    head = path.with_name(path.name + ".head")
    head.write_bytes(anchor_bytes(hasher, path.name, 1, seq - 1, prev))


@pytest.mark.parametrize("forger", ["unkeyed", "another key"])
def test_a_keyed_trail_rewritten_without_its_key_is_modified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forger: str
) -> None:
    key = key_file(tmp_path / "secret")
    path = make_trail(tmp_path / "trail", 6, hasher=Hasher(KEY))
    assert cli("audit", "verify", "--key-file", key, path, capsys=capsys)[0] == 0
    hasher = Hasher() if forger == "unkeyed" else Hasher(b"the forger's own key, 32 bytes!!")
    rewrite(path, hasher, drop_seq=3)
    # The forgery is a perfectly good chain on its own terms...
    if forger == "unkeyed":
        assert cli("audit", "verify", path, capsys=capsys)[0] == 0
    # ...but with the key it is modified, and nothing suggests dropping the key.
    code, out, err = cli("audit", "verify", "--key-file", key, path, capsys=capsys)
    assert code == EXIT_CODES["modified"], out + err
    assert f"{path}:1: modified" in out
    assert "drop" not in (out + err).lower()
    code, out, _ = cli("audit", "verify", "--json", "--key-file", key, path, capsys=capsys)
    report = json.loads(out)
    assert code == EXIT_CODES["modified"] and report["problem"]["kind"] == "modified"
    assert "drop" not in out.lower()


# -- issue 25.4: rolling back the trail with its head anchor ------------------------------


def test_rollback_of_trail_and_head_is_caught_by_checkpoints_and_by_the_restarted_sidecar(
    tmp_path: Path, policies: Path
) -> None:
    """Exactly the reported attack, on a real `stepguard serve` with an HMAC key."""
    key = key_file(tmp_path / "secret")
    audit = tmp_path / "trail" / "audit.jsonl"
    head = audit.with_name("audit.jsonl.head")
    pins = tmp_path / "pinned" / "checkpoints.jsonl"  # where the trail's writer cannot go
    flags = ["--audit-hmac-key-file", str(key), "--audit-checkpoints", str(pins)]
    flags += ["--metrics-listen", "127.0.0.1:0"]
    with serve(tmp_path, policies, audit, *flags, name="first") as server:
        with grpc.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            for i in range(3):
                assert stub.Authorize(ask("alice", step=f"a{i}"), timeout=10).decision == (
                    pb.DECISION_ALLOW
                )
            old_head = head.read_bytes()  # the attacker copies the head anchor...
            noted = audit.stat().st_size  # ...and notes the trail's size
            for i in range(5):
                assert stub.Authorize(ask("alice", step=f"b{i}"), timeout=10).decision == (
                    pb.DECISION_ALLOW
                )
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=HANG_GUARD_S) == 0
    intact = run("audit", "verify", "--key-file", key, "--checkpoints", pins, "--json", audit)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert json.loads(intact.stdout)["checkpoints_checked"] >= 1
    pinned = list(read_checkpoints(pins, Hasher(KEY)))

    os.truncate(audit, noted)  # the rollback
    head.write_bytes(old_head)

    # The local trail alone cannot see it (docs/audit.md says so), and the report says that.
    alone = run("audit", "verify", "--key-file", key, audit)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "not checked: no --checkpoints given" in alone.stdout
    # With the checkpoints it is caught: the trail ends before a pinned record.
    caught = run("audit", "verify", "--key-file", key, "--checkpoints", pins, audit)
    assert caught.returncode == EXIT_CODES["truncated"], caught.stdout + caught.stderr
    assert f"pins seq {pinned[-1].seq}" in caught.stdout and "rolled back" in caught.stdout

    # A restarted sidecar notices: it refuses to write that trail, so every decision is DENY.
    with serve(tmp_path, policies, audit, *flags, name="restart") as server:
        with grpc.insecure_channel(server.grpc) as channel:
            resp = pb_grpc.AuthorizerStub(channel).Authorize(ask("alice"), timeout=10)
        assert resp.decision == pb.DECISION_DENY
        assert "rolled back" in resp.reason and str(pins) in resp.reason, resp.reason
        assert health_of(server.grpc) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.metrics is not None and audit_gauge(server.metrics) == 0
        assert "rolled back" in server.log.read_text()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=HANG_GUARD_S) == 0
    # Nothing was written on top of the rolled-back trail, and nothing pinned it.
    assert audit.stat().st_size == noted
    assert list(read_checkpoints(pins, Hasher(KEY))) == pinned


def test_checkpoints_are_signed_periodic_and_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = key_file(tmp_path / "secret")
    pins = tmp_path / "pinned" / "cp.jsonl"
    path = make_trail(
        tmp_path / "trail",
        40,
        hasher=Hasher(KEY),
        checkpoints=pins,
        checkpoint_every=5,
        checkpoint_interval_s=0.05,
        rotate_bytes=1500,
    )
    pinned = list(read_checkpoints(pins, Hasher(KEY)))
    assert pinned and pinned[-1].seq == max(p.seq for p in pinned)  # the close pinned the end
    assert [p.seq for p in pinned] == sorted({p.seq for p in pinned})
    code, out, _ = cli(
        "audit", "verify", "--json", "--key-file", key, "--checkpoints", pins, path, capsys=capsys
    )
    report = json.loads(out)
    assert code == 0 and report["checkpoints_checked"] == len(pinned), out
    # A checkpoint forged without the key does not verify.
    lines = pins.read_bytes().splitlines(keepends=True)
    forged = json.loads(lines[-1])
    forged["seq"] -= 1
    pins.write_bytes(b"".join([*lines[:-1], json.dumps(forged).encode() + b"\n"]))
    code, out, _ = cli(
        "audit", "verify", "--key-file", key, "--checkpoints", pins, path, capsys=capsys
    )
    assert code == EXIT_CODES["modified"] and "mac does not verify" in out, out


# -- issue 27.7: FIFOs in the trail directory ---------------------------------------------


@pytest.mark.parametrize("name", ["audit.jsonl.head", "audit.jsonl.000007", "audit.jsonl"])
def test_a_fifo_in_the_trail_directory_is_refused_by_verify_and_query(
    tmp_path: Path, name: str
) -> None:
    path = make_trail(tmp_path, 3)
    target = tmp_path / name
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    for command in (["audit", "verify"], ["audit", "query"]):
        done = run(*command, tmp_path)
        if command[1] == "query" and name.endswith(".head"):
            assert done.returncode == 0  # query does not read the anchor
            continue
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert f"{target} is a FIFO (named pipe), not a regular file" in done.stderr, done.stderr
    assert path.exists()


@pytest.mark.parametrize("name", ["audit.jsonl.head", "audit.jsonl"])
def test_a_fifo_in_the_trail_directory_makes_serve_deny_and_say_so(
    tmp_path: Path, policies: Path, name: str
) -> None:
    audit = tmp_path / "trail" / "audit.jsonl"
    make_trail(audit.parent, 2)
    fifo = audit.parent / name
    fifo.unlink()
    os.mkfifo(fifo)
    with serve(tmp_path, policies, audit, "--metrics-listen", "off") as server:  # no hang
        with grpc.insecure_channel(server.grpc) as channel:
            resp = pb_grpc.AuthorizerStub(channel).Authorize(ask("alice"), timeout=10)
        assert resp.decision == pb.DECISION_DENY
        assert f"{fifo} is a FIFO (named pipe)" in resp.reason, resp.reason
        assert f"{fifo} is a FIFO" in server.log.read_text()


def test_a_fifo_as_the_key_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.key"
    os.mkfifo(fifo, 0o600)
    done = run("audit", "verify", "--key-file", fifo, tmp_path)
    assert done.returncode == 1 and "FIFO" in done.stderr, done.stderr


# -- issue 27.8: permissions --------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o620, 0o666])
def test_a_key_others_or_the_group_can_read_or_change_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    key = key_file(tmp_path / "secret", mode=mode)
    path = make_trail(tmp_path / "trail", 2, hasher=Hasher(KEY))
    code, _, err = cli("audit", "verify", "--key-file", key, path, capsys=capsys)
    assert code == 1 and f"permissions {mode:04o} are too open" in err, err
    settings = Settings(audit_hmac_key_file=key, audit_file=str(path))
    with pytest.raises(ConfigError, match=f"permissions {mode:04o}"):
        open_trail(settings)  # the sidecar refuses to start


def test_group_read_is_allowed_only_for_a_key_owned_by_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kubernetes mounts a 0400 Secret as root:fsGroup 0440: that must keep working."""
    if os.geteuid() != 0:
        missing("giving a key file to another owner (chown) needs root")
    path = make_trail(tmp_path / "trail", 2, hasher=Hasher(KEY))
    key = key_file(tmp_path / "secret", mode=0o440)
    assert cli("audit", "verify", "--key-file", key, path, capsys=capsys)[0] == 0
    os.chown(key, 12345, 12345)  # the same mode on a key someone else owns: refused
    code, _, err = cli("audit", "verify", "--key-file", key, path, capsys=capsys)
    assert code == 1 and "permissions 0440 are too open" in err


def test_trail_directories_are_0750_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = make_trail(tmp_path / "a" / "b", 1, checkpoints=tmp_path / "c" / "d" / "cp.jsonl")
    finally:
        os.umask(old)
    for directory in ("a", "a/b", "c", "c/d"):
        assert (tmp_path / directory).stat().st_mode & 0o777 == 0o750, directory
    for file in (path, path.with_name("audit.jsonl.head"), tmp_path / "c" / "d" / "cp.jsonl"):
        assert file.stat().st_mode & 0o777 == 0o640, file


def test_the_sidecar_refuses_a_trail_rewritten_or_replaced_after_a_checkpoint(
    tmp_path: Path,
) -> None:
    """The monotonic sequence, in-process: no key, so the forger can re-hash everything."""
    pins = tmp_path / "pinned" / "cp.jsonl"
    path = make_trail(tmp_path / "trail", 6, checkpoints=pins)
    last = list(read_checkpoints(pins, Hasher()))[-1]
    # A rewrite that keeps the length (one decision flipped, every hash recomputed).
    records = [parse_line(raw) for raw in path.read_bytes().splitlines()]
    out, prev = [], GENESIS
    for rec in records:
        body = dict(rec.body)
        if body.get("id") == "ev-00002":
            body["decision"] = "DENY"
        line, prev = record_line(Hasher(), rec.seq, prev, canonical(body))
        out.append(line)
    path.write_bytes(b"".join(out))
    sink = FileSink(path, checkpoints=pins)
    assert not sink.healthy
    with pytest.raises(AuditError, match=f"pins another record at seq {last.seq}"):
        sink.write({"schema": 1, "kind": "decision", "id": "after", "decision": "ALLOW"})
    sink.close()
    assert b'"id":"after"' not in path.read_bytes()
    assert list(read_checkpoints(pins, Hasher()))[-1] == last  # the forgery was never pinned
    # Starting over with an empty directory is refused too: the sequence never goes back.
    for leftover in path.parent.iterdir():
        leftover.unlink()
    sink = FileSink(path, checkpoints=pins)
    assert not sink.healthy
    with pytest.raises(AuditError, match=f"the trail holds no records, .* pins seq {last.seq}"):
        sink.write({"schema": 1, "kind": "decision", "id": "fresh", "decision": "ALLOW"})
    sink.close()


def test_checkpoints_that_go_back_are_a_modification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pins = tmp_path / "pinned" / "cp.jsonl"
    path = make_trail(tmp_path / "trail", 3, checkpoints=pins)
    make_trail(tmp_path / "trail", 3, checkpoints=pins)  # a restart: pins go forward
    lines = pins.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    code, out, _ = cli("audit", "verify", "--checkpoints", pins, path, capsys=capsys)
    assert code == 0 and "not checked: no --checkpoints" not in out, out
    pins.write_bytes(b"".join(reversed(lines)))
    code, out, _ = cli("audit", "verify", "--checkpoints", pins, path, capsys=capsys)
    assert code == EXIT_CODES["modified"] and "never goes back" in out, out


def test_checkpoints_need_a_file_trail() -> None:
    with pytest.raises(ConfigError, match="file trail"):
        Settings(audit_file="-", audit_checkpoints=Path("/tmp/cp.jsonl"))


def test_a_restart_without_the_head_anchor_says_so_in_the_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Delete the anchor, cut the tail, restart: the new anchor cannot vouch for the cut,
    so the chain records that the anchor was missing, and verify lists it."""
    path = make_trail(tmp_path, 6)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))
    path.with_name("audit.jsonl.head").unlink()
    make_trail(tmp_path, 1)  # the restarted sidecar
    recoveries = [json.loads(raw) for raw in path.read_bytes().splitlines() if b'"recovery"' in raw]
    assert [r["reason"] for r in recoveries] == ["anchor_missing"]
    code, out, _ = cli("audit", "verify", path, capsys=capsys)
    assert code == 0 and "anchor_missing" in out, out


@pytest.mark.parametrize("durability", ["flush", "fsync"])
def test_periodic_checkpoints_catch_a_rollback_after_sigkill(
    tmp_path: Path, policies: Path, durability: str
) -> None:
    """No clean close (SIGKILL): the checkpoints written while serving are what pin the trail."""
    audit = tmp_path / "trail" / "audit.jsonl"
    pins = tmp_path / "pinned" / "cp.jsonl"
    flags = ["--audit-checkpoints", str(pins), "--audit-checkpoint-every", "2"]
    flags += ["--audit-durability", durability, "--metrics-listen", "off"]
    with serve(tmp_path, policies, audit, *flags, name="first") as server:
        with grpc.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            stub.Authorize(ask("alice", step="a"), timeout=10)
            noted = audit.stat().st_size
            head = audit.with_name("audit.jsonl.head").read_bytes()
            for i in range(4):
                stub.Authorize(ask("alice", step=f"b{i}"), timeout=10)
        last_seq = len(audit.read_bytes().splitlines()) - 1

        def pinned_to_the_end() -> bool:
            return any(cp.seq == last_seq for cp in read_checkpoints(pins, Hasher()))

        wait_for(pinned_to_the_end, "a checkpoint of the last decision")
        server.proc.kill()
    os.truncate(audit, noted)
    audit.with_name("audit.jsonl.head").write_bytes(head)
    caught = run("audit", "verify", "--checkpoints", pins, audit)
    assert caught.returncode == EXIT_CODES["truncated"], caught.stdout + caught.stderr
    with serve(tmp_path, policies, audit, *flags, name="restart") as server:
        with grpc.insecure_channel(server.grpc) as channel:
            resp = pb_grpc.AuthorizerStub(channel).Authorize(ask("alice"), timeout=10)
        assert resp.decision == pb.DECISION_DENY and "rolled back" in resp.reason
