"""The fast walk of an intact chain: `audit verify`'s checks, in one tight loop per chain.

The evidence loader reads every record of every chain. `audit verify`'s walk
(audit/verify.py) is built to name the first break exactly; for that it keeps a
line of lookahead, hashes each record twice (once as the next line, once as
itself) and makes objects per line. On an intact chain none of that is needed.
This walk makes, per line, exactly the checks that walk makes, on the same bytes:

- the line is JSON, an object, with an integer `seq` and text `prev` and `hash`;
- it is byte for byte the canonical record line of what it parses to (the body
  re-encoded with sorted keys, as `chain.parse_line` does), so the body bytes in
  the line are the canonical bytes and the hash is taken over them;
- the hash is right (SHA-256 or HMAC-SHA-256 under the key), `seq` is the one due
  and `prev` the hash of the record before (the chain links across segments);
- each segment begins with its header: the segment numbers follow on from 1, the
  header names its predecessor and its worker; the first header's key claim
  matches the key given;
- the head anchor verifies and the chain reaches the record it names, with its hash.

At the first departure from that (or when checkpoints are given, whose walk is
verify.py's) it gives up and returns None; the caller then walks the chain with
`audit verify`'s own walk, which names the break exactly as `audit verify` does.
So a verdict is never this walk's own: it only ever confirms an intact chain.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from sidecar.audit.anchor import read_anchor
from sidecar.audit.chain import DOMAIN, GENESIS, Hasher
from sidecar.audit.files import open_read
from sidecar.audit.segments import Trail

# Called with each record's body (chain fields removed), its file, 1-based line and seq.
OnBody = Callable[[dict[str, Any], str, int, int], None]
_SORTED = orjson.OPT_SORT_KEYS


class _GiveUp(Exception):
    """The chain is not plainly intact here: verify.py's walk must say what it is."""


def walk_intact(
    chain: Trail,
    key: bytes | None,
    on_body: OnBody,
    *,
    accept_missing_anchor: bool = False,
    checkpoints: Path | None = None,
) -> int | None:
    """The number of records of an intact chain, each handed to `on_body` in chain
    order; None when the chain is not plainly intact (or cannot be read): then the
    caller must discard what `on_body` was given and walk the chain with verify.py."""
    if checkpoints is not None or not chain.segments:
        return None
    hasher = Hasher(key)
    try:
        anchor = read_anchor(chain.head, hasher) if chain.head is not None else None
        return _walk(chain, hasher, anchor, on_body, accept_missing_anchor)
    except (_GiveUp, OSError):
        return None


def _walk(
    chain: Trail,
    hasher: Hasher,
    anchor: dict[str, Any] | str | None,
    on_body: OnBody,
    accept_missing_anchor: bool,
) -> int:
    if isinstance(anchor, str) or (anchor is None and not accept_missing_anchor):
        raise _GiveUp  # verify.py names what is wrong with the anchor
    anchored = anchor["seq"] if anchor is not None else -1
    at_anchor: str | None = None
    key = hasher.key
    loads, dumps, sha256, digest_of = orjson.loads, orjson.dumps, hashlib.sha256, hmac.digest
    exp_seq, exp_prev = 0, GENESIS
    segment: Any = None
    for path in chain.segments:
        name = str(path)
        with open_read(path) as f:
            lineno = 0
            for raw in f:
                lineno += 1
                if raw[-1:] != b"\n":
                    raise _GiveUp  # a torn last line
                line = raw[:-1]
                try:
                    obj = loads(line)
                except orjson.JSONDecodeError:
                    raise _GiveUp from None
                if type(obj) is not dict:
                    raise _GiveUp
                seq = obj.pop("seq", None)
                prev = obj.pop("prev", None)
                digest = obj.pop("hash", None)
                if type(seq) is not int or seq != exp_seq or prev != exp_prev:
                    raise _GiveUp
                if type(digest) is not str:
                    raise _GiveUp
                body = dumps(obj, option=_SORTED)
                prev_b = prev.encode()
                head = b'{"seq":%d,"prev":"%b","hash":"%b"' % (seq, prev_b, digest.encode())
                if line != (head + b"," + body[1:] if body != b"{}" else head + b"}"):
                    raise _GiveUp  # not the canonical line of what it says
                data = b"%b%d\n%b\n%b" % (DOMAIN, seq, prev_b, body)
                # An offline check of a file the reader holds: no timing oracle to hide.
                if key:
                    if digest_of(key, data, "sha256").hex() != digest:
                        raise _GiveUp
                elif sha256(data).hexdigest() != digest:
                    raise _GiveUp
                if lineno == 1:
                    segment = _header(
                        obj, segment, prev, seq=seq, worker=chain.worker, hasher=hasher
                    )
                if seq == anchored:
                    at_anchor = digest
                exp_seq, exp_prev = seq + 1, digest
                on_body(obj, name, lineno, seq)
            if lineno == 0:
                raise _GiveUp  # an empty segment file
    if anchor is not None and (
        anchor["seq"] > exp_seq - 1 or (at_anchor is not None and at_anchor != anchor["hash"])
    ):
        raise _GiveUp
    return exp_seq


def _header(
    body: dict[str, Any], previous: Any, prev: str, *, seq: int, worker: int | None, hasher: Hasher
) -> Any:
    """A segment's first record: the checks of verify.py's `_check_header` (and, for the
    chain's first, `_check_key`); the segment's number."""
    if body.get("kind") != "segment":
        raise _GiveUp
    claimed = body.get("worker")
    if worker is not None and claimed is not None and claimed != worker:
        raise _GiveUp
    number = body.get("segment")
    if previous is None:
        if number != 1 or seq != 0:
            raise _GiveUp
        algorithm = body.get("algorithm", "sha256")
        if hasher.key:
            if algorithm != "hmac-sha256" or body.get("key_id", "") != hasher.key_id:
                raise _GiveUp
        elif algorithm == "hmac-sha256":
            raise _GiveUp  # verify.py says: pass the key
    elif isinstance(previous, int) and number != previous + 1:
        raise _GiveUp
    if body.get("follows") != prev:
        raise _GiveUp
    return number


__all__ = ["OnBody", "walk_intact"]
