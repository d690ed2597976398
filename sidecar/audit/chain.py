"""The hash chain: canonical bytes, record lines, and the optional HMAC key.

Every line of the trail is one record:

    {"seq":N,"prev":"<hex>","hash":"<hex>",<canonical body without its brace>

`body` is the event (or a segment header, recovery note...) as canonical JSON:
sorted keys, no whitespace, UTF-8 (only control characters, quote and
backslash escaped), integers as digits, floats in shortest round-trip form
(`1e-7`): orjson's output with OPT_SORT_KEYS. The hash covers the sequence
number, the previous record's hash and those body bytes:

    hash = H(b"stepguard-audit-v1\\n" + b"<seq>\\n" + b"<prev>\\n" + canonical(body))

H is SHA-256, or HMAC-SHA-256 under a key read from a file, so that whoever
can rewrite the file cannot recompute the chain. The first record of a trail
follows GENESIS. A line must be byte-for-byte the canonical form of what it
parses to, so no two readers can disagree about a record's content.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sidecar.core.errors import ConfigError

GENESIS = "0" * 64
DOMAIN = b"stepguard-audit-v1\n"
_CHAIN_KEYS = ("seq", "prev", "hash")
MIN_KEY_BYTES = 16


# canonical() without its error translation: a C call, no Python frame, for the
# trail's hot path. Raises orjson.JSONEncodeError (a TypeError).
canonical_bytes: Callable[[Mapping[str, Any]], bytes] = functools.partial(
    orjson.dumps, option=orjson.OPT_SORT_KEYS
)


def canonical(obj: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, UTF-8, no trailing newline.

    orjson (compiled) keeps this off the GIL-bound critical path: it is about
    15x faster than the standard library here. Raises TypeError for what JSON
    cannot hold (non-string keys, integers beyond 64 bits).
    """
    try:
        return canonical_bytes(obj)
    except orjson.JSONEncodeError as exc:
        raise TypeError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Hasher:
    """Computes record hashes; keyed (HMAC-SHA-256) when a key is given."""

    key: bytes | None = None

    @property
    def algorithm(self) -> str:
        return "hmac-sha256" if self.key else "sha256"

    @property
    def key_id(self) -> str:
        """Names the key without revealing it, so verify can say 'wrong key'."""
        if not self.key:
            return ""
        return hmac.new(self.key, b"stepguard-audit key id", hashlib.sha256).hexdigest()[:16]

    def record_hash(self, seq: int, prev: str, body: bytes) -> str:
        # One-shot: built in one formatting and hashed in one call. The trail
        # hashes every event before answering, so each Python step here counts.
        data = b"%b%d\n%b\n%b" % (DOMAIN, seq, prev.encode(), body)
        if self.key:
            return hmac.digest(self.key, data, "sha256").hex()
        return hashlib.sha256(data).hexdigest()

    def mac(self, data: bytes) -> str:
        """A tag over small side data (the head anchor)."""
        if self.key:
            return hmac.new(self.key, data, hashlib.sha256).hexdigest()
        return hashlib.sha256(data).hexdigest()

    def subkey(self, purpose: str) -> bytes | None:
        """A key for another purpose (redaction), derived so the chain key is never reused."""
        if not self.key:
            return None
        return hmac.new(self.key, b"stepguard-audit " + purpose.encode(), hashlib.sha256).digest()


def load_key(path: Path) -> bytes:
    """Read an HMAC key file: raw bytes, surrounding whitespace ignored, at least 16 bytes.

    Only a regular file (a FIFO would hang the reader), and only one nobody
    else can read or change: whoever reads the key can forge the whole trail.
    """
    from sidecar.audit.files import open_read

    try:
        with open_read(path) as f:
            problem = key_mode_problem(os.fstat(f.fileno()))
            if problem:
                raise ConfigError(f"audit HMAC key file {path}: {problem}")
            key = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read audit HMAC key file {path}: {exc}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"audit HMAC key file {path} holds {len(key)} bytes; use at least {MIN_KEY_BYTES} "
            "random bytes (for example: head -c 32 /dev/urandom | base64 > key)"
        )
    return key


def key_mode_problem(st: os.stat_result) -> str:
    """Why a key file's permissions are too open, or "" (ssh's rule, PostgreSQL's exception).

    Any access by group or others is refused, as ssh refuses a private key.
    One exception, PostgreSQL's for its server key: a file owned by root may
    also be readable (not writable) by its group. That is what Kubernetes makes
    of a Secret mounted 0400 in a pod with `fsGroup` (root:fsGroup 0440).
    """
    mode = stat.S_IMODE(st.st_mode)
    loose = mode & 0o077
    if st.st_uid == 0:
        loose &= ~0o040
    if not loose:
        return ""
    who = []
    if loose & 0o070:
        who.append("its group")
    if loose & 0o007:
        who.append("others")
    return (
        f"permissions {mode:04o} are too open: the key can be read or changed by "
        f"{' and '.join(who)}, and whoever holds it can forge the trail; "
        "run chmod 600 on it (a key owned by root may be 0640)"
    )


def record_line(hasher: Hasher, seq: int, prev: str, body: bytes) -> tuple[bytes, str]:
    """The line for one record (newline-terminated) and its hash."""
    digest = hasher.record_hash(seq, prev, body)
    chain = (seq, prev.encode(), digest.encode())
    if body == b"{}":
        return b'{"seq":%d,"prev":"%b","hash":"%b"}\n' % chain, digest
    return b'{"seq":%d,"prev":"%b","hash":"%b",%b\n' % (*chain, body[1:]), digest


def record_lines(hasher: Hasher, seq: int, prev: str, bodies: Sequence[bytes]) -> tuple[bytes, str]:
    """The lines for `bodies` as records `seq`, `seq + 1`, ... chained from `prev`,
    joined, and the last one's hash (`prev` when there is none): `record_line` for
    each, the same bytes (tests/audit/test_audit_chain.py, a Hypothesis property), in
    one loop with no call per line. A batch's commit chains a hundred at once.
    """
    key = hasher.key
    sha256 = hashlib.sha256
    digest_of = hmac.digest
    domain = DOMAIN
    lines = []
    last = prev.encode()
    for body in bodies:
        data = b"%b%d\n%b\n%b" % (domain, seq, last, body)
        digest = (
            digest_of(key, data, "sha256").hex() if key else sha256(data).hexdigest()
        ).encode()
        if body == b"{}":
            lines.append(b'{"seq":%d,"prev":"%b","hash":"%b"}\n' % (seq, last, digest))
        else:
            lines.append(b'{"seq":%d,"prev":"%b","hash":"%b",%b\n' % (seq, last, digest, body[1:]))
        last = digest
        seq += 1
    return b"".join(lines), last.decode()


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    prev: str
    hash: str
    body: dict[str, Any]
    # The body's canonical bytes as read (parse_line checked the line is exactly them),
    # so check_hash does not encode the body a second time; b"" when not known.
    canonical: bytes = field(default=b"", compare=False, repr=False)

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))


class BadRecord(ValueError):
    """A line that is not a well-formed, canonical record."""


def parse_line(line: bytes) -> Record:
    """Parse one line (without its newline); raise BadRecord unless it is exactly canonical."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise BadRecord("not a JSON object")
    seq, prev, digest = (obj.pop(k, None) for k in _CHAIN_KEYS)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise BadRecord("no valid seq")
    if not isinstance(prev, str) or not isinstance(digest, str):
        raise BadRecord("no prev/hash")
    body = canonical(obj)
    expected = b'{"seq":%d,"prev":"%s","hash":"%s"' % (seq, prev.encode(), digest.encode())
    rest = body[1:]
    expected += b"," + rest if rest != b"}" else rest
    if expected != line:
        raise BadRecord("not in canonical form (bytes were changed)")
    return Record(seq, prev, digest, obj, body)


def check_hash(hasher: Hasher, record: Record) -> bool:
    body = record.canonical or canonical(record.body)
    return hmac.compare_digest(hasher.record_hash(record.seq, record.prev, body), record.hash)
