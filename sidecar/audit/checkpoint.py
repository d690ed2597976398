"""Checkpoints: what the trail held, pinned where whoever writes the trail cannot roll it back.

A local trail cannot prove its own length: someone who can write its
directory can cut records off the end and put back an older head anchor, and
with or without the HMAC key the result is a valid, shorter chain. So the
file trail can also append, every N events or T seconds, at rotation and at
close, one line to a separate checkpoint file (`--audit-checkpoints`):

    {"algorithm":"hmac-sha256","hash":"<hex>","key_id":"…","kind":"checkpoint",
     "mac":"<hex>","segment":3,"seq":41207,"size":1048211,"time":"…","trail":"audit.jsonl"}

It names the record with sequence number `seq` and hash `hash`, the last in
segment `segment`'s first `size` bytes. The segment is fsynced before the line
is written (and the line is fsynced), so a checkpoint never names a record
that was not on disk. `mac` is an HMAC-SHA-256 under a key derived from the
trail key (plain SHA-256 when unkeyed: then it only catches accidents).

`stepguard audit verify --checkpoints FILE` checks that the trail holds every
checkpointed record with its hash; the sidecar refuses to write a trail that
is behind the last checkpoint (sidecar/audit/pinning.py). Keep the file where
the trail's writer cannot rewrite it: docs/audit.md says how.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sidecar.audit.chain import Hasher, canonical
from sidecar.audit.files import make_dirs, open_read, open_regular

DOMAIN = b"stepguard-audit-checkpoint-v1\n"
_TAIL = 64 * 1024  # a checkpoint line is well under this


class BadCheckpoint(ValueError):
    """A checkpoint line that is unreadable, or does not verify."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    line: int  # 1-based line in the checkpoint file (0 when read from the tail)
    trail: str
    segment: int
    size: int
    seq: int
    hash: str
    time: str


def _mac(hasher: Hasher, body: bytes) -> str:
    key = hasher.subkey("checkpoint")
    if key:
        return hmac.new(key, DOMAIN + body, hashlib.sha256).hexdigest()
    return hashlib.sha256(DOMAIN + body).hexdigest()


def checkpoint_line(
    hasher: Hasher, *, trail: str, segment: int, size: int, seq: int, digest: str, time: str
) -> bytes:
    body: dict[str, Any] = {
        "algorithm": hasher.algorithm,
        "hash": digest,
        "key_id": hasher.key_id,
        "kind": "checkpoint",
        "segment": segment,
        "seq": seq,
        "size": size,
        "time": time,
        "trail": trail,
    }
    body["mac"] = _mac(hasher, canonical(body))
    return canonical(body) + b"\n"


def parse_checkpoint(raw: bytes, hasher: Hasher, line: int = 0) -> Checkpoint:
    """One line (without its newline); BadCheckpoint unless it is a checkpoint that verifies.

    With a key, a checkpoint that claims to be unsigned or signed with another
    key is refused: that is what a forged one looks like.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadCheckpoint(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("kind") != "checkpoint":
        raise BadCheckpoint("not a checkpoint")
    mac = obj.pop("mac", None)
    fields = ("segment", "size", "seq")
    if any(not isinstance(obj.get(k), int) or isinstance(obj.get(k), bool) for k in fields):
        raise BadCheckpoint("segment, size or seq is not an integer")
    if not all(isinstance(obj.get(k), str) for k in ("hash", "time", "trail", "algorithm")):
        raise BadCheckpoint("hash, time, trail or algorithm is not a string")
    algorithm = obj["algorithm"]
    if algorithm != hasher.algorithm:
        if hasher.key:
            raise BadCheckpoint(
                f"it claims to be signed with {algorithm}, not with the key given "
                "(rewritten, or not this trail's checkpoint)"
            )
        raise BadCheckpoint(f"it is signed ({algorithm}): pass the trail's key with --key-file")
    if hasher.key and not hmac.compare_digest(str(obj.get("key_id", "")), hasher.key_id):
        raise BadCheckpoint(
            f"it names key id {obj.get('key_id')!r}, not the key given ({hasher.key_id}): "
            "rewritten, or not this trail's checkpoint"
        )
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(hasher, canonical(obj))):
        raise BadCheckpoint("its mac does not verify (changed, or another key)")
    return Checkpoint(
        line, obj["trail"], obj["segment"], obj["size"], obj["seq"], obj["hash"], obj["time"]
    )


def read_checkpoints(path: Path, hasher: Hasher) -> Iterator[Checkpoint]:
    """Every checkpoint in the file, in order; BadCheckpoint names the first bad line.

    Streams (the file grows by one line per checkpoint for the trail's life).
    """
    with open_read(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                raise BadCheckpoint(f"{path}:{lineno}: the last line is torn (no newline)")
            try:
                yield parse_checkpoint(raw[:-1], hasher, lineno)
            except BadCheckpoint as exc:
                raise BadCheckpoint(f"{path}:{lineno}: {exc}") from exc


class CheckpointFile:
    """The sidecar's side: append signed checkpoints; read back the last one at open."""

    def __init__(self, path: Path, hasher: Hasher) -> None:
        self.path = path
        self.hasher = hasher
        self._fd: int | None = None

    def last(self) -> Checkpoint | None:
        """The last checkpoint written, None when there is none; BadCheckpoint if it is bad.

        A torn last line (a crash while appending) never held a whole
        checkpoint: it is cut off here (the line before it is the last one).
        """
        fd = self._open()
        size = os.fstat(fd).st_size
        start = max(0, size - _TAIL)
        tail = os.pread(fd, size - start, start)
        end = tail.rfind(b"\n") + 1
        if start + end < size:
            os.ftruncate(fd, start + end)
            os.fsync(fd)
        if end == 0:
            if start > 0:
                raise BadCheckpoint(f"{self.path}: the last line is not a checkpoint")
            return None
        lines = tail[:end].splitlines()
        try:
            return parse_checkpoint(lines[-1], self.hasher)
        except BadCheckpoint as exc:
            raise BadCheckpoint(f"{self.path}: last line: {exc}") from exc

    def append(self, checkpoint_bytes: bytes) -> None:
        """One line, written and fsynced (a single O_APPEND write: lines never interleave)."""
        fd = self._open()
        written = os.write(fd, checkpoint_bytes)
        if written != len(checkpoint_bytes):
            raise OSError(f"short write to {self.path} ({written} of {len(checkpoint_bytes)})")
        os.fsync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            make_dirs(self.path.parent)
            self._fd = open_regular(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        return self._fd
