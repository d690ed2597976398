"""The evidence store: verified trail records in SQLite, and the access they imply.

Why SQLite: it is in the standard library (nothing to install, pin or
start), runs in process on a file or in memory, and its B-tree indexes answer
the questions asked here (one identity's access, one target's, the open
grants, one run's steps) by lookup rather than by scan. DuckDB scans faster
but is a 40 MB wheel to pin for every user of the CLI, and no answer here
scans the events: they read the derived `grants` table (one row per access,
not per event), small tables made while loading (the inventory's counts,
facts.py; the leaver runs' accesses that may be findings, `leaver_findings`)
and indexed slices of the events, so a row store is the better fit. Loading
streams: each chain is read once, verified and turned into rows in the same
pass (ingest.py, walk.py: a large trail's chains in parallel processes),
inserted in batches; nothing holds the trail in memory, and the indexes (the
ids' too) are built once the rows are in. The replay that pairs removals with
grants reads the outcomes back in time order through an index and keeps only
the accesses open at the moment in memory.

Every row keeps where it came from (segment file, line, seq), so every answer
links back to the chained records it rests on. Verification is the same as
`audit verify` (the same checks, verification.py, walk.py) and its status is
part of every answer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sidecar.audit.workers import collect_sets
from sidecar.core.errors import StepguardError
from sidecar.core.event import timestamp
from sidecar.core.lifecycle import Lifecycle
from sidecar.evidence.facts import TABLES as FACT_TABLES
from sidecar.evidence.facts import exact
from sidecar.evidence.ingest import DECISION_COLUMNS, OUTCOME_COLUMNS, load_all, parse_time
from sidecar.evidence.options import Options
from sidecar.evidence.verification import Verification

BATCH = 5000
RAN = ("succeeded", "failed", "timed_out")

SCHEMA = (
    f"""
CREATE TABLE decisions ({DECISION_COLUMNS});
CREATE TABLE outcomes ({OUTCOME_COLUMNS});
CREATE TABLE grants (
    n INTEGER PRIMARY KEY, kind TEXT, identity TEXT, target TEXT, item TEXT,
    opened_at TEXT, opened_by TEXT, decision_id TEXT, expires_at TEXT,
    closed_at TEXT, closed_how TEXT, closed_by TEXT, refs TEXT);
CREATE TABLE leavers (
    run TEXT, workflow TEXT, identity TEXT, leaver_at TEXT, grant_n INTEGER,
    PRIMARY KEY (run, identity, grant_n));
CREATE TABLE chains (trail TEXT, chain TEXT, ok INTEGER, records INTEGER, problem TEXT,
    exit INTEGER);
"""
    + FACT_TABLES
)
# Built once the rows are in: an index built from all its rows at once is a sort, far
# cheaper than keeping it ordered through millions of inserts.
INDEXES = """
CREATE INDEX decisions_run ON decisions(workflow, run, time);
CREATE INDEX decisions_break_glass ON decisions(time) WHERE break_glass = 1;
CREATE INDEX decisions_denied ON decisions(workflow, run) WHERE decision = 'DENY';
CREATE INDEX outcomes_replay ON outcomes(time, recorded, file, line)
    WHERE status = 'succeeded';
CREATE INDEX outcomes_run ON outcomes(run, identity);
CREATE INDEX outcomes_failed ON outcomes(run, identity) WHERE status IN ('failed', 'timed_out');
CREATE INDEX outcomes_exceptional ON outcomes(time, recorded, file, line)
    WHERE violation != '' OR attempt > 1 OR status IN ('failed', 'timed_out');
"""
GRANT_INDEXES = """
CREATE INDEX grants_identity ON grants(identity, target);
CREATE INDEX grants_target ON grants(target, identity) WHERE closed_at IS NULL;
CREATE INDEX grants_open ON grants(n) WHERE closed_at IS NULL;
CREATE INDEX grants_expired ON grants(n) WHERE closed_how = 'expired';
"""
LEAVER_INDEXES = """
CREATE INDEX leavers_identity ON leavers(identity, leaver_at);
CREATE INDEX leavers_grant ON leavers(grant_n);
"""
# The leaver runs' accesses that may be a finding (`_findings`): a large trail's leavers
# held hundreds of thousands of accesses, most of them revoked in time.
FINDINGS = "CREATE TABLE leaver_findings (n INTEGER PRIMARY KEY)"


# --- loading ----------------------------------------------------------------------------


@dataclass(slots=True)
class Store:
    """The loaded evidence: an open SQLite connection, the verification, the options."""

    db: sqlite3.Connection
    verification: Verification
    options: Options
    now: str = ""
    # Whether the inventory's counts (facts.py) cover exactly the decisions stored.
    facts_exact: bool = False
    # Seconds each phase of the load took, in order (benchmarks/evidence_bench.py shows
    # where a large trail's load goes).
    phases: dict[str, float] = field(default_factory=dict)

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
    processes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Store:
    """Verify the trails at `paths`, load them, replay access: the store answers read.

    Verified and loaded in one pass per chain, chains in parallel when the trail is
    large (ingest.py; `processes` overrides how many). `progress` is told what the
    load is doing as each stage starts (a large trail's load takes minutes: the CLI
    shows it on a terminal). StepguardError when a path names no trail.
    """
    sets = collect_sets(paths)
    if not sets:
        where = ", ".join(str(p) for p in paths)
        raise StepguardError(f"no trail in {where}")
    db = sqlite3.connect(database)
    db.execute("PRAGMA page_size = 65536")  # before the first table: fewer, fuller pages
    db.execute("PRAGMA journal_mode = OFF")  # a store rebuilt from the trail on every run
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA temp_store = MEMORY")
    db.executescript(SCHEMA)
    lap = _Laps(progress)
    verification = load_all(
        db,
        sets,
        key,
        accept_missing_anchor=accept_missing_anchor,
        checkpoints=checkpoints,
        processes=processes,
        on_chain=lambda done, total: lap.say(f"verifying and loading chains ({done}/{total} done)"),
    )
    db.executemany(
        "INSERT INTO chains VALUES (?,?,?,?,?,?)",
        [(c.trail, c.chain, c.ok, c.records, c.problem, c.exit_code) for c in verification.chains],
    )
    lap("chains: read, verified, rows made and copied in", then="indexing ids")
    for table in ("decisions", "outcomes"):
        _first_of_each(db, table)
    lap("ids indexed, duplicates checked", then="building indexes")
    db.executescript(INDEXES)
    db.commit()
    lap("indexes built", then="replaying access")
    store = Store(
        db,
        verification,
        options,
        timestamp(options.now),
        facts_exact=exact(db),
        phases=lap.phases,  # the replay's phases are added as it goes
    )
    replay_access(store, lap)
    return store


class _Laps:
    """Seconds since the last lap, by name (`Store.phases`); and what starts next, said
    to `open_store`'s `progress`."""

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()
        self.say: Callable[[str], None] = progress or (lambda _: None)

    def __call__(self, name: str, *, then: str = "") -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now
        if then:
            self.say(then)


def _first_of_each(db: sqlite3.Connection, table: str) -> None:
    """Keep the first record loaded of each id (a record read twice, from two copies of
    a trail, is stored once) and index the ids. Done once all rows are in: an index
    built from them all is a sort, where keeping one through millions of inserts of
    ids from several chains costs a B-tree search each. (Not a UNIQUE index that
    fails on the first duplicate: the store runs without a journal, so a failed
    statement is not rolled back.)"""
    db.execute(f"CREATE INDEX {table}_id ON {table}(id)")
    twice = f"SELECT 1 FROM {table} GROUP BY id HAVING COUNT(*) > 1 LIMIT 1"  # noqa: S608
    if db.execute(twice).fetchone() is not None:
        db.execute(
            f"DELETE FROM {table} WHERE rowid NOT IN (SELECT MIN(rowid) FROM {table} GROUP BY id)"  # noqa: S608
        )


# --- the replay: which access each step opened and closed -------------------------------

Key = tuple[str, str, str, str]  # kind, identity, target, item


def closers(lifecycle: Lifecycle | None) -> dict[str, frozenset[str]] | None:
    """For each declared remover (`Type::"id"`), the declared creators it may close;
    None without a declaration. Computed once per replay, not per event."""
    if lifecycle is None:
        return None
    return {str(r): frozenset(str(c) for c in lifecycle.closes(r)) for r in lifecycle.removes}


# The succeeded outcomes that change some identity's access (the others change nothing
# the replay pairs), in the order the replay pairs them, each with the reference an
# access it opens or closes cites (`ref_of`'s, made here rather than per row in Python).
CHANGING = """
SELECT id, time, decision_id, action, identity, target, added, removed, cred_id, cred_change,
    expires_at, account, file || ':' || line || '#seq=' || seq
FROM outcomes WHERE status = 'succeeded' AND identity != '' AND (added != '[]'
    OR removed != '[]' OR (cred_id != '' AND cred_change IN ('issued', 'revoked'))
    OR account IN ('created', 'disabled', 'deleted'))
ORDER BY time, recorded, file, line
"""


def replay_access(store: Store, lap: _Laps | None = None) -> None:
    """Pair removals with grants in time order (docs/evidence.md, "How a removal closes a
    grant"); fill `grants` (one row per access, open or closed) and `leavers`.

    Streams: only the accesses open at the moment are held in memory; a closed one
    is written out in the next batch. Every succeeded change of a large trail passes
    through this loop (3.8 million at 10 million events), so each row's effect is read
    inline, once: what it closed, then what it opened. An open access is one tuple
    (its grants row's columns up to its expiry, then its reference and its creator),
    a closed one its grants row. A change that names no identity changes nothing the
    evidence can attribute: `CHANGING` leaves it out."""
    db, now, lifecycle = store.db, store.now, store.options.lifecycle
    closing = closers(lifecycle)
    creators = frozenset(str(u) for u in lifecycle.creates) if lifecycle else frozenset()
    # key -> (n, kind, identity, target, item, opened_at, opened_by, decision_id,
    #         expires_at, ref, creator)
    open_: dict[Key, tuple[Any, ...]] = {}
    done: list[tuple[Any, ...]] = []
    count = 0
    loads, dumps, get = orjson.loads, orjson.dumps, open_.get

    def close(
        key: Key, held: tuple[Any, ...], at: str, how: str, *, by: str = "", ref: str = ""
    ) -> None:
        del open_[key]
        refs = dumps([held[9], ref] if ref else [held[9]]).decode()
        done.append((*held[:9], at, how, by, refs))
        if len(done) >= BATCH:
            _write_grants(db, done)

    for (
        oid,
        at,
        decision_id,
        action,
        identity,
        target,
        added,
        removed,
        cred_id,
        cred_change,
        expires_at,
        account,
        ref,
    ) in db.execute(CHANGING):
        # What it closed: entitlements removed, a credential revoked, an account ended.
        if removed != "[]" or cred_change == "revoked" or account in ("disabled", "deleted"):
            closed: list[Key] = (
                [("entitlement", identity, target, name) for name in loads(removed)]
                if removed != "[]"
                else []
            )
            if cred_id and cred_change == "revoked":
                closed.append(("credential", identity, target, cred_id))
            if account in ("disabled", "deleted"):
                closed.append(("account", identity, target, ""))
            for key in closed:
                held = get(key)
                if held is None:
                    continue
                if held[8] and held[8] <= at:  # it expired before this removal
                    close(key, held, held[8], "expired")
                # Whether the bundle lets this remover close what the creator created.
                # Without a declaration, or when either action is undeclared, the
                # effect alone decides: the access was reported removed, and an
                # auditor should not see it as still held.
                elif (
                    closing is None
                    or action not in closing
                    or held[10] not in creators
                    or held[10] in closing[action]
                ):
                    close(key, held, at, "revoked", by=oid, ref=ref)
        # What it opened: entitlements added, a credential issued (with its expiry), an
        # account created.
        if added != "[]" or cred_change == "issued" or account == "created":
            opened: list[tuple[Key, str]] = (
                [(("entitlement", identity, target, name), "") for name in loads(added)]
                if added != "[]"
                else []
            )
            if cred_id and cred_change == "issued":
                opened.append((("credential", identity, target, cred_id), expires_at))
            if account == "created":
                opened.append((("account", identity, target, ""), ""))
            for key, expiry in opened:
                held = get(key)
                if held is not None:
                    if not (held[8] and held[8] <= at):
                        continue  # already held: the earliest grant says since when
                    close(key, held, held[8], "expired")
                count += 1
                open_[key] = (count, *key, at, oid, decision_id, expiry, ref, action)
    for key, held in list(open_.items()):
        if held[8] and held[8] <= now:
            close(key, held, held[8], "expired")
    done.extend((*held[:9], None, "", "", dumps([held[9]]).decode()) for held in open_.values())
    _write_grants(db, done)
    mark = lap or _Laps()
    mark("access replayed, grants written", then="finding the leaver runs' accesses")
    db.executescript(GRANT_INDEXES)
    _leavers(store)
    db.executescript(LEAVER_INDEXES)
    mark("leaver runs' accesses found", then="keeping the possible findings")
    db.execute(FINDINGS)
    db.execute(f"INSERT OR IGNORE INTO leaver_findings {_findings(store)}")
    db.commit()
    mark("possible findings kept")


def _write_grants(db: sqlite3.Connection, grants: list[tuple[Any, ...]]) -> None:
    """Write out grants rows (as `replay_access` makes them), and empty the list."""
    db.executemany("INSERT INTO grants VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", grants)
    grants.clear()


def _leavers(store: Store) -> None:
    """Each leaver run, each identity its steps named, and every access that identity
    held when the run began (its first decision: the leaver event).

    The identities are looked up run by run (`outcomes_run`), from the leaver runs
    only, not as the distinct (run, identity) of every outcome. Rows go in in the
    order that pass gave them: run, identity, workflow, target, n."""
    db = store.db
    workflows = sorted(store.options.leavers)
    marks = ",".join("?" * len(workflows))
    db.execute(  # only placeholders are formatted in; the values are bound
        f"""
        INSERT OR IGNORE INTO leavers
        SELECT l.run, l.workflow, l.identity, l.leaver_at, g.n
        FROM (SELECT DISTINCT r.run, r.workflow, o.identity, r.leaver_at
              FROM (SELECT workflow, run, MIN(time) AS leaver_at FROM decisions
                    WHERE workflow IN ({marks}) AND run != '' GROUP BY workflow, run) AS r
              JOIN outcomes AS o ON o.run = r.run AND o.identity != '') AS l
        LEFT JOIN grants AS g ON g.identity = l.identity AND g.opened_at <= l.leaver_at
             AND (g.closed_at IS NULL OR g.closed_at > l.leaver_at)
        ORDER BY l.run, l.identity, l.workflow, g.target, g.n
        """,  # noqa: S608
        workflows,
    )


def _findings(store: Store) -> str:
    """A query of the leaver runs' accesses that may be a finding of `leavers`: open,
    expired, or revoked perhaps after its deadline (answers._measure's end and
    deadline, in SQL's julianday with a second's margin, so an access left out is
    surely revoked in time; the answer measures those kept exactly). The deadlines
    are formatted in as numbers, their names as quoted SQL text."""
    deadlines = store.options.deadlines.by_name

    def case(column: str) -> str:
        whens = " ".join(
            f"WHEN {_quote(name)} THEN {limit.total_seconds()!r}"
            for name, limit in deadlines.items()
        )
        return f"CASE {column} {whens} END" if whens else "NULL"

    star = deadlines.get("*")
    fallback = repr(star.total_seconds()) if star is not None else "NULL"
    limit = f"COALESCE({case('g.target')}, {case('d.sensitivity')}, d.revoke_within_s, {fallback})"
    leaver_at = (
        "(SELECT MIN(l.leaver_at) FROM leavers AS l "
        "WHERE l.identity = g.identity AND l.leaver_at >= g.opened_at)"
    )
    return f"""
        WITH measured AS MATERIALIZED (
            SELECT g.n, g.closed_at, g.closed_how, {limit} AS limit_s,
                   COALESCE(d.not_after, '') AS not_after, {leaver_at} AS leaver_at
            FROM leavers AS x JOIN grants AS g ON g.n = x.grant_n
            LEFT JOIN decisions AS d ON d.id = g.decision_id),
        ended AS MATERIALIZED (
            SELECT n, closed_at, closed_how, limit_s, CASE
                WHEN not_after = '' THEN NULLIF(leaver_at, '')
                WHEN COALESCE(leaver_at, '') = '' THEN not_after
                ELSE MIN(not_after, leaver_at) END AS end_at
            FROM measured)
        SELECT n FROM ended
        WHERE closed_at IS NULL OR closed_how != 'revoked' OR (
            limit_s IS NOT NULL AND end_at IS NOT NULL AND COALESCE(
                julianday(closed_at) - julianday(end_at) <= limit_s / 86400.0 - 1.0 / 86400,
                0) = 0)
        """  # noqa: S608


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ref(file: str, line: int, seq: int) -> str:
    return f"{file}:{line}#seq={seq}"


def ref_of(row: Mapping[str, Any]) -> str:
    return _ref(row["file"], row["line"], row["seq"])


def seconds_between(start: str, end: str) -> float:
    return (parse_time(end) - parse_time(start)).total_seconds()


def rows(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
    """Rows of a query as dicts (column name -> value)."""
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description]
    for values in cursor:
        yield dict(zip(names, values, strict=True))


__all__ = [
    "Store",
    "open_store",
]
