"""The evidence store: verified trail records in SQLite, and the access they imply.

Why SQLite: it is in the standard library (nothing to install, pin or
start), runs in process on a file or in memory, and its B-tree indexes answer
the questions asked here (one identity's access, one target's, the open
grants, one run's steps) by lookup rather than by scan. DuckDB scans faster
but is a 40 MB wheel to pin for every user of the CLI; the answers below read
the derived `grants` table (one row per access, not per event) and indexed
slices of the events, so a row store is the better fit. Loading streams: the
trail is read once, record by record (audit/query.py's reader, which orders
many workers' chains by time), and inserted in batches; nothing holds the
trail in memory. The replay that pairs removals with grants reads the
outcomes back in time order through an index and keeps only the accesses
open at the moment in memory.

Every row keeps where it came from (segment file, line, seq), so every answer
links back to the chained records it rests on. Verification is the same as
`audit verify` (verification.py) and its status is part of every answer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sidecar.audit.event import timestamp
from sidecar.audit.query import set_events
from sidecar.audit.workers import collect_sets
from sidecar.core.bundle import parse_iso_duration
from sidecar.core.errors import StepguardError
from sidecar.core.lifecycle import Kind, Lifecycle
from sidecar.core.model import EntityUid
from sidecar.evidence.verification import Verification, verify_trails

BATCH = 5000
RAN = ("succeeded", "failed", "timed_out")
DEFAULT_LEAVER_WORKFLOWS = frozenset({"leaver"})
# The example bundle's convention: a break-glass approval carries a BG- ticket.
BREAK_GLASS_PREFIX = "BG-"

SCHEMA = """
CREATE TABLE decisions (
    id TEXT PRIMARY KEY, time TEXT, decision TEXT, principal TEXT, action TEXT,
    target TEXT, workflow TEXT, run TEXT, step TEXT, requester TEXT, approver TEXT,
    ticket TEXT, sensitivity TEXT, not_after TEXT, revoke_within_s REAL,
    break_glass INTEGER, file TEXT, line INTEGER, seq INTEGER);
CREATE INDEX decisions_run ON decisions(workflow, run, time);
CREATE INDEX decisions_break_glass ON decisions(time) WHERE break_glass = 1;
CREATE TABLE outcomes (
    id TEXT PRIMARY KEY, time TEXT, recorded TEXT, decision_id TEXT, decided TEXT,
    status TEXT, error_class TEXT, attempt INTEGER, workflow TEXT, run TEXT, step TEXT,
    action TEXT, identity TEXT, target TEXT, added TEXT, removed TEXT, cred_id TEXT,
    cred_change TEXT, expires_at TEXT, account TEXT, violation TEXT,
    file TEXT, line INTEGER, seq INTEGER, reporter TEXT);
CREATE INDEX outcomes_replay ON outcomes(time, recorded, file, line)
    WHERE status = 'succeeded';
CREATE INDEX outcomes_run ON outcomes(run, identity);
CREATE INDEX outcomes_decision ON outcomes(decision_id);
CREATE INDEX outcomes_exceptional ON outcomes(time, recorded, file, line)
    WHERE violation != '' OR attempt > 1 OR status IN ('failed', 'timed_out');
CREATE TABLE grants (
    n INTEGER PRIMARY KEY, kind TEXT, identity TEXT, target TEXT, item TEXT,
    opened_at TEXT, opened_by TEXT, decision_id TEXT, expires_at TEXT,
    closed_at TEXT, closed_how TEXT, closed_by TEXT, refs TEXT);
CREATE INDEX grants_identity ON grants(identity, target);
CREATE INDEX grants_target ON grants(target, identity);
CREATE INDEX grants_open ON grants(closed_at);
CREATE TABLE leavers (
    run TEXT, workflow TEXT, identity TEXT, leaver_at TEXT, grant_n INTEGER,
    PRIMARY KEY (run, identity, grant_n));
CREATE INDEX leavers_identity ON leavers(identity, leaver_at);
CREATE TABLE chains (trail TEXT, chain TEXT, ok INTEGER, records INTEGER, problem TEXT,
    exit INTEGER);
"""


# --- options ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long after an access's end its removal may take: per target, per sensitivity,
    else the grant's `@revoke_within` obligation, else `*` (the fallback). Explicit
    targets and sensitivities are the auditor's control, so they win over the bundle's."""

    by_name: Mapping[str, timedelta] = field(default_factory=dict)

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Deadlines:
        """`high=PT24H`, `github=PT1H`, `*=P1D`; StepguardError naming the bad one."""
        out: dict[str, timedelta] = {}
        for spec in specs:
            name, sep, value = spec.partition("=")
            if not sep or not name.strip():
                raise StepguardError(
                    f"--deadline {spec!r}: expected NAME=DURATION (a target, a sensitivity "
                    "or *, and an ISO-8601 duration such as PT24H)"
                )
            try:
                out[name.strip()] = parse_iso_duration(value.strip())
            except ValueError as exc:
                raise StepguardError(f"--deadline {spec!r}: {exc}") from exc
        return cls(out)

    def resolve(self, target: str, sensitivity: str, obligation_s: float | None) -> float | None:
        """The deadline in seconds after the end, None when none applies."""
        for name in (target, sensitivity):
            if name and name in self.by_name:
                return self.by_name[name].total_seconds()
        if obligation_s is not None:
            return obligation_s
        fallback = self.by_name.get("*")
        return fallback.total_seconds() if fallback is not None else None


@dataclass(frozen=True, slots=True)
class Options:
    now: datetime
    lifecycle: Lifecycle | None = None
    deadlines: Deadlines = field(default_factory=Deadlines)
    leaver_workflows: frozenset[str] = frozenset()

    @property
    def leavers(self) -> frozenset[str]:
        """Explicit leaver workflows, else the bundle's, else `leaver`."""
        if self.leaver_workflows:
            return self.leaver_workflows
        if self.lifecycle is not None and self.lifecycle.leaver_workflows:
            return self.lifecycle.leaver_workflows
        return DEFAULT_LEAVER_WORKFLOWS


# --- loading ----------------------------------------------------------------------------


@dataclass(slots=True)
class Store:
    """The loaded evidence: an open SQLite connection, the verification, the options."""

    db: sqlite3.Connection
    verification: Verification
    options: Options
    now: str = ""

    def close(self) -> None:
        self.db.close()


def open_store(
    paths: Sequence[Path],
    options: Options,
    *,
    key: bytes | None = None,
    accept_missing_anchor: bool = False,
    checkpoints: Path | None = None,
    database: str = ":memory:",
) -> Store:
    """Verify the trails at `paths`, load them, replay access: the store answers read.

    StepguardError when a path names no trail.
    """
    sets = collect_sets(paths)
    if not sets:
        where = ", ".join(str(p) for p in paths)
        raise StepguardError(f"no trail in {where}")
    verification = verify_trails(
        sets, key, accept_missing_anchor=accept_missing_anchor, checkpoints=checkpoints
    )
    db = sqlite3.connect(database)
    db.executescript(SCHEMA)
    db.executemany(
        "INSERT INTO chains VALUES (?,?,?,?,?,?)",
        [(c.trail, c.chain, c.ok, c.records, c.problem, c.exit_code) for c in verification.chains],
    )
    load_records(db, set_events(sets))
    store = Store(db, verification, options, timestamp(options.now))
    replay_access(store)
    return store


def load_records(db: sqlite3.Connection, records: Iterable[dict[str, Any]]) -> None:
    """Insert decision and outcome records, streaming, in batches."""
    decisions: list[tuple[Any, ...]] = []
    outcomes: list[tuple[Any, ...]] = []
    for record in records:
        kind = record.get("kind")
        if kind == "decision":
            decisions.append(_decision_row(record))
        elif kind == "outcome":
            outcomes.append(_outcome_row(record))
        else:
            continue
        if len(decisions) + len(outcomes) >= BATCH:
            _flush(db, decisions, outcomes)
    _flush(db, decisions, outcomes)
    db.commit()


_INSERT_DECISION = "INSERT OR IGNORE INTO decisions VALUES (" + ",".join("?" * 19) + ")"  # noqa: S608
_INSERT_OUTCOME = "INSERT OR IGNORE INTO outcomes VALUES (" + ",".join("?" * 25) + ")"  # noqa: S608


def _flush(db: sqlite3.Connection, decisions: list[Any], outcomes: list[Any]) -> None:
    db.executemany(_INSERT_DECISION, decisions)
    db.executemany(_INSERT_OUTCOME, outcomes)
    decisions.clear()
    outcomes.clear()


def uid_text(value: Any) -> str:
    """`Type::"id"` of a recorded entity reference, "" when there is none."""
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        ident = value.get("id")
        return str(EntityUid(value["type"], ident if isinstance(ident, str) else str(ident)))
    return ""


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _where(record: Mapping[str, Any]) -> tuple[str, int, int]:
    at = _text(record.get("_at"))
    file, _, line = at.rpartition(":")
    seq = record.get("seq")
    return file, int(line) if line.isdigit() else 0, seq if isinstance(seq, int) else -1


def _decision_row(e: Mapping[str, Any]) -> tuple[Any, ...]:
    ctx = _obj(e.get("context"))
    approval = _obj(ctx.get("approval"))
    bound = _obj(ctx.get("time_bound"))
    obligations = _obj(e.get("obligations"))
    revoke = obligations.get("revoke_within_s")
    ticket = _text(approval.get("ticket"))
    resource = _obj(e.get("resource"))
    target = _text(ctx.get("target_system")) or _text(resource.get("id"))
    return (
        _text(e.get("id")),
        _text(e.get("time")),
        _text(e.get("decision")),
        uid_text(e.get("principal")),
        uid_text(e.get("action")),
        target,
        _text(e.get("workflow_id")),
        _text(e.get("run_id")),
        _text(e.get("step_id")),
        uid_text(ctx.get("requester")),
        uid_text(approval.get("approver")),
        ticket,
        _text(ctx.get("sensitivity")),
        _text(bound.get("not_after")),
        float(revoke) if isinstance(revoke, int | float) and not isinstance(revoke, bool) else None,
        int(ticket.startswith(BREAK_GLASS_PREFIX)),
        *_where(e),
    )


def _outcome_row(e: Mapping[str, Any]) -> tuple[Any, ...]:
    effect = _obj(e.get("effect"))
    cred = _obj(effect.get("credential"))
    resource = _obj(e.get("resource"))
    attempt = e.get("attempt")
    recorded = _text(e.get("time"))
    return (
        _text(e.get("id")),
        _text(e.get("finished_at")) or recorded,  # when the step did it, else when reported
        recorded,
        _text(e.get("decision_id")),
        _text(e.get("decided")),
        _text(e.get("status")),
        _text(e.get("error_class")),
        attempt if isinstance(attempt, int) else 0,
        _text(e.get("workflow_id")),
        _text(e.get("run_id")),
        _text(e.get("step_id")),
        uid_text(e.get("action")),
        uid_text(effect.get("identity")),
        _text(effect.get("target_system")) or _text(resource.get("id")),
        json.dumps(_names(effect.get("entitlements_added"))),
        json.dumps(_names(effect.get("entitlements_removed"))),
        _text(cred.get("id")),
        _text(cred.get("change")),
        _text(cred.get("expires_at")),
        _text(effect.get("account")),
        _text(e.get("violation")),
        *_where(e),
        _text(_obj(e.get("caller")).get("identity")),  # who reported it
    )


def _names(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


# --- the replay: which access each step opened and closed -------------------------------

Key = tuple[str, str, str, str]  # kind, identity, target, item


@dataclass(slots=True)
class _Open:
    n: int
    creator: str  # the creating action, Type::"id"
    expires_at: str


def changes(row: sqlite3.Row | Sequence[Any]) -> tuple[list[tuple[Key, str]], list[Key]]:
    """What one succeeded outcome opened (with each credential's expiry) and closed,
    read from its effect: entitlements added/removed, a credential issued/revoked, an
    account created/disabled/deleted. A change that names no identity changes nothing
    the evidence can attribute, and is left out."""
    identity, target = row[12], row[13]
    if not identity:
        return [], []
    opened: list[tuple[Key, str]] = []
    closed: list[Key] = []
    for name in json.loads(row[14]):
        opened.append((("entitlement", identity, target, name), ""))
    for name in json.loads(row[15]):
        closed.append(("entitlement", identity, target, name))
    if row[16] and row[17] == "issued":
        opened.append((("credential", identity, target, row[16]), row[18]))
    elif row[16] and row[17] == "revoked":
        closed.append(("credential", identity, target, row[16]))
    if row[19] == "created":
        opened.append((("account", identity, target, ""), ""))
    elif row[19] in ("disabled", "deleted"):
        closed.append(("account", identity, target, ""))
    return opened, closed


def closers(lifecycle: Lifecycle | None) -> dict[str, frozenset[str]] | None:
    """For each declared remover (`Type::"id"`), the declared creators it may close;
    None without a declaration. Computed once per replay, not per event."""
    if lifecycle is None:
        return None
    return {str(r): frozenset(str(c) for c in lifecycle.closes(r)) for r in lifecycle.removes}


def _closes(
    closing: dict[str, frozenset[str]] | None, creators: frozenset[str], remover: str, creator: str
) -> bool:
    """Whether the bundle lets `remover` close what `creator` created. Without a
    declaration, or when either action is undeclared, the effect alone decides: the
    access was reported removed, and an auditor should not see it as still held."""
    if closing is None or remover not in closing or creator not in creators:
        return True
    return creator in closing[remover]


def replay_access(store: Store) -> None:
    """Pair removals with grants in time order (docs/evidence.md, "How a removal closes a
    grant"); fill `grants` (one row per access, open or closed) and `leavers`.

    Streams: only the accesses open at the moment are held in memory; a closed one
    is written out in the next batch."""
    db, now, lifecycle = store.db, store.now, store.options.lifecycle
    closing = closers(lifecycle)
    creators = frozenset(str(u) for u in lifecycle.creates) if lifecycle else frozenset()
    open_: dict[Key, _Open] = {}
    live: dict[int, list[Any]] = {}  # the open grants' rows, by n
    done: list[list[Any]] = []
    count = 0

    def close(key: Key, at: str, how: str, by: str, ref: str) -> None:
        grant = live.pop(open_.pop(key).n)
        grant[9:12] = [at, how, by]
        if ref:
            grant[12].append(ref)
        done.append(grant)
        if len(done) >= BATCH:
            _write_grants(db, done)

    def expire_until(key: Key, at: str) -> None:
        held = open_.get(key)
        if held is not None and held.expires_at and held.expires_at <= at:
            close(key, held.expires_at, "expired", "", "")

    cursor = db.execute(
        "SELECT * FROM outcomes WHERE status = 'succeeded' ORDER BY time, recorded, file, line"
    )
    for row in cursor:
        at, ref = row[1], _ref(row[21], row[22], row[23])
        opened, closed = changes(row)
        for key in closed:
            expire_until(key, at)
            held = open_.get(key)
            if held is not None and _closes(closing, creators, row[11], held.creator):
                close(key, at, "revoked", row[0], ref)
        for key, expires_at in opened:
            expire_until(key, at)
            if key in open_:
                continue  # already held: the earliest grant says since when
            count += 1
            live[count] = [count, *key, at, row[0], row[3], expires_at, None, "", "", [ref]]
            open_[key] = _Open(count, row[11], expires_at)
    for key in list(open_):
        expire_until(key, now)
    done.extend(live.values())
    _write_grants(db, done)
    _leavers(store)
    db.commit()


def _write_grants(db: sqlite3.Connection, grants: list[list[Any]]) -> None:
    db.executemany(
        "INSERT INTO grants VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ([*g[:12], json.dumps(g[12])] for g in grants),
    )
    grants.clear()


def _leavers(store: Store) -> None:
    """Each leaver run, each identity its steps named, and every access that identity
    held when the run began (its first decision: the leaver event)."""
    db = store.db
    workflows = sorted(store.options.leavers)
    marks = ",".join("?" * len(workflows))
    db.execute(  # only placeholders are formatted in; the values are bound
        f"""
        INSERT OR IGNORE INTO leavers
        SELECT r.run, r.workflow, o.identity, r.leaver_at, g.n
        FROM (SELECT workflow, run, MIN(time) AS leaver_at FROM decisions
              WHERE workflow IN ({marks}) AND run != '' GROUP BY workflow, run) AS r
        JOIN (SELECT DISTINCT run, identity FROM outcomes WHERE identity != '') AS o
             ON o.run = r.run
        LEFT JOIN grants AS g ON g.identity = o.identity AND g.opened_at <= r.leaver_at
             AND (g.closed_at IS NULL OR g.closed_at > r.leaver_at)
        """,  # noqa: S608
        workflows,
    )


def _ref(file: str, line: int, seq: int) -> str:
    return f"{file}:{line}#seq={seq}"


def ref_of(row: Mapping[str, Any]) -> str:
    return _ref(row["file"], row["line"], row["seq"])


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def seconds_between(start: str, end: str) -> float:
    return (parse_time(end) - parse_time(start)).total_seconds()


def rows(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
    """Rows of a query as dicts (column name -> value)."""
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description]
    for values in cursor:
        yield dict(zip(names, values, strict=True))


__all__ = [
    "Deadlines",
    "Kind",
    "Options",
    "Store",
    "open_store",
]
