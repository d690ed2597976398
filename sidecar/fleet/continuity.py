"""Each chain checked as it arrives: the collectors' committed watermark, and the findings.

A chain's watermark is its last record checked in an unbroken run from the
chain's start (seq 0, following 64 zeros). After each batch a collector
advances the watermarks of the chains it wrote, under the watermark row's lock
(`FOR UPDATE SKIP LOCKED`: a chain another collector is advancing is left to
it), walking the stored records after the watermark in seq order:

    bad_hash  the line is not canonical or its hash does not verify (with the
              key, for a keyed chain; a keyed chain without `--key-file` has its
              links checked but not its hashes, and the finding says so once)
    fork      a record whose `prev` is not the hash of the record before it, or
              a second, different line for a stored (sidecar, chain, seq)
              (found when it is inserted: store.insert)
    gap       records after the watermark are stored but one before them has not
              arrived within `gap_grace_s` (redeliveries and several collectors
              reorder a chain by seconds; a gap is only called after the grace)

Every finding is a row of `stepguard_findings`, shown by `stepguard fleet status`
and never deleted. The watermark moves past a finding (so one damaged record
does not stop the chain's check), and the watermark is what the shippers'
retention hold reads (broker.py, ship.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from sidecar.audit.chain import GENESIS, BadRecord, Hasher, check_hash, parse_line
from sidecar.fleet import store

GAP_GRACE_S = 60.0
WALK = 5000


@dataclass(frozen=True, slots=True)
class Watermark:
    sidecar: str
    chain: str
    seq: int
    hash: str
    segment: int


def advance(
    conn: psycopg.Connection[Any],
    sidecar: str,
    chain: str,
    key: bytes | None,
    *,
    gap_grace_s: float = GAP_GRACE_S,
) -> tuple[Watermark | None, list[str]]:
    """Move one chain's watermark as far as its stored records allow.

    Returns (the watermark, or None when another collector holds the chain) and
    the kinds of the findings recorded on the way.
    """
    walk = _Walk(conn, sidecar, chain)
    found = walk.found
    with conn.transaction():
        conn.execute(
            "INSERT INTO stepguard_watermarks (sidecar, chain, seq, hash) VALUES "
            "(%s, %s, -1, %s) ON CONFLICT DO NOTHING",
            (sidecar, chain, GENESIS),
        )
        row = conn.execute(
            "SELECT seq, hash, segment, algorithm FROM stepguard_watermarks WHERE sidecar = %s "
            "AND chain = %s FOR UPDATE SKIP LOCKED",
            (sidecar, chain),
        ).fetchone()
        if row is None:
            return None, found
        seq, digest, segment, algorithm = int(row[0]), str(row[1]), int(row[2]), str(row[3])
        start = seq
        while True:
            records = conn.execute(
                "SELECT seq, segment, prev, hash, line, "
                "extract(epoch FROM now() - received_at) FROM stepguard_events "
                "WHERE sidecar = %s AND chain = %s AND seq > %s ORDER BY seq LIMIT %s",
                (sidecar, chain, seq, WALK),
            ).fetchall()
            moved = False
            for r_seq, r_segment, r_prev, r_hash, r_line, age in records:
                if r_seq != seq + 1:
                    if float(age) < gap_grace_s:
                        break
                    first = "the chain's start" if seq < 0 else f"seq {seq}"
                    message = (
                        f"records {seq + 1}..{r_seq - 1} after {first} never arrived "
                        f"(waited {gap_grace_s:g} s): lost before shipping (segments deleted "
                        "on the sidecar) or shipping started after them"
                    )
                    walk.finding(seq + 1, "gap", message)
                    seq, digest = r_seq - 1, str(r_prev)  # check on from the next record
                algorithm = walk.check(int(r_seq), bytes(r_line), str(r_hash), key, algorithm)
                if str(r_prev) != digest and not (seq < 0 and r_seq != 0):
                    walk.finding(
                        int(r_seq),
                        "fork",
                        f"record {r_seq} does not follow record {seq}: its prev "
                        f"{str(r_prev)[:16]}... is not that record's hash {digest[:16]}... "
                        "(a record changed, or the chain was restarted)",
                    )
                seq, digest, segment = int(r_seq), str(r_hash), int(r_segment)
                moved = True
            if not moved or len(records) < WALK:
                break
        if seq != start:
            conn.execute(
                "UPDATE stepguard_watermarks SET seq = %s, hash = %s, segment = %s, "
                "algorithm = %s, updated_at = now() WHERE sidecar = %s AND chain = %s",
                (seq, digest, segment, algorithm, sidecar, chain),
            )
    return Watermark(sidecar, chain, seq, digest, segment), found


class _Walk:
    """One chain's walk: where findings go."""

    def __init__(self, conn: psycopg.Connection[Any], sidecar: str, chain: str) -> None:
        self.conn, self.sidecar, self.chain = conn, sidecar, chain
        self.found: list[str] = []

    def finding(self, seq: int, kind: str, message: str) -> None:
        if store.add_finding(self.conn, self.sidecar, self.chain, seq, kind=kind, message=message):
            self.found.append(kind)

    def check(
        self, seq: int, line: bytes, stored_hash: str, key: bytes | None, algorithm: str
    ) -> str:
        """Check one record's bytes and hash; the chain's algorithm after it."""
        try:
            record = parse_line(line)
        except BadRecord as exc:
            self.finding(seq, "bad_hash", f"record {seq}: {exc}")
            return algorithm
        if record.kind == "segment" and isinstance(record.body.get("algorithm"), str):
            algorithm = str(record.body["algorithm"])
        keyed = algorithm == "hmac-sha256" or (not algorithm and key is not None)
        if keyed and key is None:
            self.finding(
                -1,
                "unchecked",
                "the chain is keyed (hmac-sha256) and the collector has no --key-file: its "
                "links are checked, its hashes are not",
            )
            return algorithm
        hasher = Hasher(key if keyed else None)
        if record.hash != stored_hash or not check_hash(hasher, record):
            self.finding(
                seq,
                "bad_hash",
                f"record {seq}: its hash does not verify ({hasher.algorithm}): the line was "
                "changed, or it was written under another key",
            )
        return algorithm


def behind(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Chains with stored records after their watermark (one index probe per chain: every
    chain written has a watermark row, made by its first `advance`)."""
    rows = conn.execute(
        "SELECT w.sidecar, w.chain FROM stepguard_watermarks w WHERE EXISTS (SELECT 1 FROM "
        "stepguard_events e WHERE e.sidecar = w.sidecar AND e.chain = w.chain AND e.seq > w.seq)"
    ).fetchall()
    return [(str(s), str(c)) for s, c in rows]
