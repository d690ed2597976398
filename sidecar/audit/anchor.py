"""The head anchor `NAME.head`: seq and hash of the last committed record.

The file trail rewrites it in place after commits (filesink.py); at the next
start (recovery.py) and in `audit verify` it shows records cut off the end
of the trail at a line boundary, which the chain alone cannot show. Only the
format lives here, so the reader (verify.py) needs nothing of the writer.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from sidecar.audit.chain import Hasher, canonical
from sidecar.audit.files import open_read

HEAD_SIZE = 512


def anchor_bytes(hasher: Hasher, file: str, segment: int, seq: int, digest: str) -> bytes:
    """The head anchor: fixed size, so rewriting it in place never leaves stale bytes.

    Built from a template (it is written once per batch); the bytes equal
    canonical() of the same fields, which read_anchor checks.
    """
    name = _json_string(file)
    body = b'{"file":%s,"hash":"%s","segment":%d,"seq":%d}' % (
        name,
        digest.encode(),
        segment,
        seq,
    )
    mac = hasher.mac(body).encode()
    data = b'{"file":%s,"hash":"%s","mac":"%s","segment":%d,"seq":%d}' % (
        name,
        digest.encode(),
        mac,
        segment,
        seq,
    )
    return data + b" " * (HEAD_SIZE - 1 - len(data)) + b"\n"


@functools.lru_cache(maxsize=16)
def _json_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def read_anchor(path: Path, hasher: Hasher) -> dict[str, Any] | str | None:
    """The anchor's fields; a string saying what is wrong with it; None when absent or empty."""
    try:
        with open_read(path) as f:  # NotRegularFile for a FIFO: never a hang
            data = f.read(HEAD_SIZE * 2).strip()
    except FileNotFoundError:
        return None
    if not data:
        return None
    try:
        body = json.loads(data)
        mac = body.pop("mac")
        if not isinstance(body["seq"], int) or not isinstance(body["hash"], str):
            raise TypeError("seq/hash")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"unreadable head anchor: {exc}"
    if mac != hasher.mac(canonical(body)):
        return "head anchor does not verify (changed, or another key)"
    result: dict[str, Any] = body
    return result
