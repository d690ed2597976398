"""The central store: every sidecar's trail in PostgreSQL, each record's line kept verbatim.

Tables (created by `ensure_schema`, idempotent; `stepguard_` prefix):

    stepguard_events      one row per record: (sidecar, chain, seq) unique, the line's
                          bytes as the sidecar hashed them (so `audit verify --store`
                          re-verifies every hash), its segment, kind, time, hash, prev
    stepguard_findings    integrity findings (gap, fork, bad_hash, revision_drift...):
                          rows are added and resolved, never deleted
    stepguard_watermarks  per chain, the last record checked in an unbroken run from
                          the chain's start: the collectors' committed watermark
    stepguard_manifests   each sidecar's workers manifest, as shipped
    stepguard_sidecars    the shippers' last reports (lag, bundle, when)

Inserts are idempotent (`ON CONFLICT DO NOTHING`): a record delivered twice is
stored once; a different line under a stored (sidecar, chain, seq) is a fork,
which the caller records as a finding (continuity.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sidecar.core.errors import StepguardError

SCHEMA = """
CREATE TABLE IF NOT EXISTS stepguard_events (
    sidecar text NOT NULL,
    chain text NOT NULL,
    seq bigint NOT NULL,
    segment integer NOT NULL,
    kind text NOT NULL,
    time text NOT NULL DEFAULT '',
    hash text NOT NULL,
    prev text NOT NULL,
    line bytea NOT NULL,
    -- the row's own insert time (not the transaction's): what the lag is measured to
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (sidecar, chain, seq)
);
CREATE INDEX IF NOT EXISTS stepguard_events_received ON stepguard_events (received_at);
CREATE TABLE IF NOT EXISTS stepguard_findings (
    id bigserial PRIMARY KEY,
    sidecar text NOT NULL,
    chain text NOT NULL DEFAULT '',
    seq bigint NOT NULL DEFAULT -1,
    kind text NOT NULL,
    message text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    found_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    UNIQUE (sidecar, chain, kind, seq)
);
CREATE TABLE IF NOT EXISTS stepguard_watermarks (
    sidecar text NOT NULL,
    chain text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    segment integer NOT NULL DEFAULT 0,
    algorithm text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sidecar, chain)
);
CREATE TABLE IF NOT EXISTS stepguard_manifests (
    sidecar text NOT NULL,
    trail text NOT NULL,
    content bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sidecar, trail)
);
CREATE TABLE IF NOT EXISTS stepguard_sidecars (
    sidecar text PRIMARY KEY,
    report jsonb NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now()
);
"""
# Serializes schema creation between collectors starting together.
_SCHEMA_LOCK = 0x5374_6570_6775


@dataclass(frozen=True, slots=True)
class Row:
    """One record as it travels and is stored."""

    sidecar: str
    chain: str
    seq: int
    segment: int
    kind: str
    time: str
    hash: str
    prev: str
    line: bytes


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection to the store; StepguardError saying what to check when it fails."""
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise StepguardError(f"--store {_redact(dsn)}: expected postgresql://host/db")
    try:
        return psycopg.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        raise StepguardError(f"cannot connect to the store {_redact(dsn)}: {exc}") from exc


def _redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        who, where = rest.rsplit("@", 1)
        return f"{scheme}://{who.split(':', 1)[0]}@{where}"
    return dsn


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(SCHEMA)


def insert(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> tuple[int, list[Row]]:
    """Store the rows not stored yet, in one transaction: (how many were new, the rows that
    collide with a different stored line: forks). A row equal to the stored one (a
    redelivery) is nothing. `rows` must not repeat a key."""
    if not rows:
        return 0, []
    cols = list(
        zip(
            *(
                (r.sidecar, r.chain, r.seq, r.segment, r.kind, r.time, r.hash, r.prev, r.line)
                for r in rows
            ),
            strict=True,
        )
    )
    with conn.transaction():
        inserted = conn.execute(
            "INSERT INTO stepguard_events (sidecar, chain, seq, segment, kind, time, hash, "
            "prev, line) SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], "
            "%s::integer[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[]) "
            "ON CONFLICT (sidecar, chain, seq) DO NOTHING RETURNING sidecar, chain, seq",
            [list(c) for c in cols],
        ).fetchall()
        new = {(s, c, q) for s, c, q in inserted}
        old = [r for r in rows if (r.sidecar, r.chain, r.seq) not in new]
        stored: dict[tuple[str, str, int], bytes] = {}
        if old:
            found = conn.execute(
                "SELECT e.sidecar, e.chain, e.seq, e.line FROM stepguard_events e "
                "JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS k(sidecar, chain, seq) "
                "USING (sidecar, chain, seq)",
                ([r.sidecar for r in old], [r.chain for r in old], [r.seq for r in old]),
            ).fetchall()
            stored = {(s, c, q): bytes(line) for s, c, q, line in found}
    forks = [r for r in old if stored.get((r.sidecar, r.chain, r.seq), r.line) != r.line]
    return len(new), forks


def add_finding(
    conn: psycopg.Connection[Any],
    sidecar: str,
    chain: str,
    seq: int,
    *,
    kind: str,
    message: str,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Record a finding once (per sidecar, chain, kind, seq); True when it is new."""
    cur = conn.execute(
        "INSERT INTO stepguard_findings (sidecar, chain, seq, kind, message, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (sidecar, chain, kind, seq) DO NOTHING",
        (sidecar, chain, seq, kind, message, Jsonb(detail or {})),
    )
    return cur.rowcount == 1


@dataclass(frozen=True, slots=True)
class Finding:
    sidecar: str
    chain: str
    seq: int
    kind: str
    message: str
    found_at: str
    resolved_at: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "sidecar": self.sidecar,
            "chain": self.chain,
            "seq": self.seq,
            "kind": self.kind,
            "message": self.message,
            "found_at": self.found_at,
            "resolved_at": self.resolved_at,
        }


def findings(
    conn: psycopg.Connection[Any], *, open_only: bool = False, sidecar: str | None = None
) -> list[Finding]:
    sql = (
        "SELECT sidecar, chain, seq, kind, message, found_at, resolved_at "
        "FROM stepguard_findings WHERE (%s::text IS NULL OR sidecar = %s)"
    )
    if open_only:
        sql += " AND resolved_at IS NULL"
    rows = conn.execute(sql + " ORDER BY id", (sidecar, sidecar)).fetchall()
    return [
        Finding(s, c, q, k, m, f.isoformat(), r.isoformat() if r else None)
        for s, c, q, k, m, f, r in rows
    ]


def sidecars(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT sidecar FROM stepguard_events UNION "
        "SELECT sidecar FROM stepguard_manifests ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def chains(conn: psycopg.Connection[Any], sidecar: str) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT chain FROM stepguard_events WHERE sidecar = %s ORDER BY 1", (sidecar,)
    ).fetchall()
    return [r[0] for r in rows]


def lines(conn: psycopg.Connection[Any], sidecar: str, chain: str) -> Iterator[tuple[int, bytes]]:
    """(segment, line) of every stored record of one chain, in trail order (by seq);
    streamed with a server-side cursor, so memory stays bounded."""
    with conn.transaction(), conn.cursor(name="stepguard_lines") as cur:
        cur.itersize = 2000
        cur.execute(
            "SELECT segment, line FROM stepguard_events WHERE sidecar = %s AND chain = %s "
            "ORDER BY seq",
            (sidecar, chain),
        )
        for segment, line in cur:
            yield int(segment), bytes(line)


def count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM stepguard_events").fetchone()
    return int(row[0]) if row else 0


def manifest(conn: psycopg.Connection[Any], sidecar: str) -> tuple[str, bytes] | None:
    row = conn.execute(
        "SELECT trail, content FROM stepguard_manifests WHERE sidecar = %s "
        "ORDER BY received_at DESC LIMIT 1",
        (sidecar,),
    ).fetchone()
    return (str(row[0]), bytes(row[1])) if row else None


def put_manifest(conn: psycopg.Connection[Any], sidecar: str, trail: str, content: bytes) -> None:
    conn.execute(
        "INSERT INTO stepguard_manifests (sidecar, trail, content) VALUES (%s, %s, %s) "
        "ON CONFLICT (sidecar, trail) DO UPDATE SET content = EXCLUDED.content, "
        "received_at = now()",
        (sidecar, trail, content),
    )


def put_report(conn: psycopg.Connection[Any], sidecar: str, report: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO stepguard_sidecars (sidecar, report) VALUES (%s, %s) "
        "ON CONFLICT (sidecar) DO UPDATE SET report = EXCLUDED.report, reported_at = now()",
        (sidecar, Jsonb(report)),
    )
