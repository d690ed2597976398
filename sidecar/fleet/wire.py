"""What travels through NATS: subjects, message ids and headers of the trail's records.

A record travels as its line, byte for byte (without the newline), so the
collector stores exactly what the sidecar hashed. Its chain is named by the
sidecar and the chain's file name (`audit.jsonl`, or `audit.w<i>.jsonl` for
worker i); `Nats-Msg-Id` is `<sidecar>/<chain>:<seq>`, so a record sent twice
(a shipper restarted before its cursor moved, a retried publish) is dropped
by the broker within its duplicate window, and by the store's unique key
(sidecar, chain, seq) after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.core.errors import ConfigError

SIDECAR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
H_SIDECAR = "Stepguard-Sidecar"
H_CHAIN = "Stepguard-Chain"
H_SEQ = "Stepguard-Seq"
H_SEGMENT = "Stepguard-Segment"
H_KIND = "Stepguard-Kind"  # "record" (a trail line) or "manifest" (a workers manifest)
MSG_ID = "Nats-Msg-Id"


def check_sidecar(name: str) -> str:
    if not SIDECAR_NAME.match(name):
        raise ConfigError(
            f"sidecar name {name!r}: use 1-253 letters, digits, '.', '_' or '-' "
            "(the pod's name in Kubernetes)"
        )
    return name


def token(text: str) -> str:
    """A subject token for a name that may hold dots (NATS splits subjects on them)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def chain_id(sidecar: str, chain: str) -> str:
    return f"{sidecar}/{chain}"


def msg_id(sidecar: str, chain: str, seq: int) -> str:
    return f"{chain_id(sidecar, chain)}:{seq}"


def record_subject(prefix: str, sidecar: str, chain: str) -> str:
    return f"{prefix}.{token(sidecar)}.{token(chain)}"


def header_value(text: str) -> str:
    """A header value as nats-py sends one: trimmed, CR and LF (they end a header) as spaces."""
    return text.strip().replace("\r", " ").replace("\n", " ")


def hpub_records(
    subject: str,
    reply_prefix: str,
    sidecar: str,
    chain: str,
    records: Iterable[tuple[int, int, bytes]],
    *,
    first: int = 0,
) -> bytes:
    """The NATS protocol for records (seq, segment, line), each an `HPUB` with the headers
    `envelope` reads and the reply subject `<reply_prefix><i>` (i: its place in the batch,
    counted from `first`), as one buffer. nats-py's `publish` builds and checks the same
    bytes per message at several times the cost (a dict of headers, a regex per key, a
    write per call); here the constant part of the headers is built once per batch."""
    side, name = header_value(sidecar), header_value(chain)
    head = (
        f"NATS/1.0\r\n{H_SIDECAR}: {side}\r\n{H_CHAIN}: {name}\r\n{MSG_ID}: {chain_id(side, name)}:"
    ).encode()
    subj, reply = subject.encode(), reply_prefix.encode()
    out: list[bytes] = []
    for i, (seq, segment, line) in enumerate(records, first):
        hdr = b"%s%d\r\n%s: %d\r\n%s: %d\r\n\r\n" % (
            head,
            seq,
            _H_SEQ,
            seq,
            _H_SEGMENT,
            segment,
        )
        out.append(
            b"HPUB %s %s%d %d %d\r\n%s%s\r\n"
            % (subj, reply, i, len(hdr), len(hdr) + len(line), hdr, line)
        )
    return b"".join(out)


_H_SEQ, _H_SEGMENT = H_SEQ.encode(), H_SEGMENT.encode()


def manifest_subject(prefix: str, sidecar: str) -> str:
    return f"{prefix}.{token(sidecar)}._manifest"


def report_subject(prefix: str, sidecar: str) -> str:
    """Shippers' status reports: plain NATS (not the stream), read by the collectors."""
    return f"{prefix}_reports.{token(sidecar)}"


def watermark_key(sidecar: str, chain: str) -> str:
    return f"{token(sidecar)}.{token(chain)}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message's meaning, read back from its headers."""

    kind: str
    sidecar: str
    chain: str
    seq: int
    segment: int


def envelope(headers: dict[str, str] | None) -> Envelope:
    """ValueError when a header is missing or malformed (the message is not ours)."""
    h = headers or {}
    kind = h.get(H_KIND, "record")
    sidecar = check_sidecar(h.get(H_SIDECAR, ""))
    chain = h.get(H_CHAIN, "")
    if not chain or "/" in chain:
        raise ValueError(f"bad {H_CHAIN} header {chain!r}")
    return Envelope(kind, sidecar, chain, int(h.get(H_SEQ, "-1")), int(h.get(H_SEGMENT, "0")))
