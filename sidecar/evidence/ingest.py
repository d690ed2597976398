"""Loading trails into the evidence store: one pass per chain, verified and parsed at once.

Each chain is walked once: an intact chain by walk.py's fast walk (`audit
verify`'s checks in one loop over the raw lines), which hands every record to
the row builders here, so the trail is read, parsed, checked and hashed once,
not once to verify and again to load. At its first doubt the rows it gave are
taken out and the chain is walked by `audit verify`'s own walk (audit/chains.py),
whose `on_record` does the same and which names the break. Where it stops,
the rest of the chain is read as `audit query` reads it (a damaged line
skipped), so evidence from a broken chain is still loaded, and its answers say
the chain is broken. Chains the walk does not visit
(one the manifest does not list) are read that way too.

Chains are independent, so a large trail's chains are loaded in parallel, one
process per chain up to the cores there are (a fresh `python -m
sidecar.evidence.ingest`: a forked copy of a process holding threads may hang,
and multiprocessing's spawn would re-run the caller's main module), each into
a SQLite file of its own that the store then copies in with one `INSERT ...
SELECT` per table (C speed, no row crosses a pipe). A small trail is loaded in
this process: starting processes would cost more than it saves. Rows are the
same either way.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from sidecar.audit.chain import Record
from sidecar.audit.chains import chains_to_verify, set_findings, verify_chain
from sidecar.audit.files import open_read
from sidecar.audit.segments import Trail
from sidecar.audit.verify import EXIT_ERROR, Report
from sidecar.audit.workers import TrailSet
from sidecar.core.errors import StepguardError
from sidecar.evidence.facts import TABLES as FACT_TABLES
from sidecar.evidence.facts import Facts
from sidecar.evidence.rows import (
    DECISION_COLUMNS,
    DECISION_WIDTH,
    OUTCOME_COLUMNS,
    OUTCOME_WIDTH,
    Rows,
    parse_time,
)
from sidecar.evidence.verification import ChainStatus, Verification, status_of
from sidecar.evidence.walk import walk_intact

BATCH = 5000
# Below this many bytes of segments in all, chains are loaded in this process.
PARALLEL_BYTES = 64 << 20

# Plain inserts: the tables have no constraint (a record read twice is dropped once all
# rows are in: store.py's `_first_of_each`), so `OR IGNORE` would have nothing to ignore.
_INSERT_DECISION = f"INSERT INTO decisions VALUES ({','.join('?' * DECISION_WIDTH)})"  # noqa: S608
_INSERT_OUTCOME = f"INSERT INTO outcomes VALUES ({','.join('?' * OUTCOME_WIDTH)})"  # noqa: S608


@dataclass(frozen=True, slots=True)
class Job:
    """One chain to load: the trail it belongs to, and whether to walk it (verify)."""

    trails: TrailSet
    chain: Trail
    verify: bool
    key: bytes | None
    accept_missing_anchor: bool
    checkpoints: Path | None


# --- one chain ----------------------------------------------------------------------------


class Sink:
    """Rows into a SQLite connection's `decisions` and `outcomes`, in batches, and the
    inventory's counts (facts.py), one chain after another."""

    def __init__(self, db: sqlite3.Connection, chain: int = 0) -> None:
        self.db = db
        self.rows = Rows()
        self.facts = Facts()
        self.chain = chain  # the number of the chain being loaded (its facts say it)
        self.decisions: list[tuple[Any, ...]] = []
        self.outcomes: list[tuple[Any, ...]] = []
        self.last: tuple[str, int] | None = None  # the last record the walk handed over

    def add(self, body: Mapping[str, Any], file: str, line: int, seq: Any) -> None:
        kind = body.get("kind")
        if kind == "decision":
            row = self.rows.decision(body, file, line, seq)
            self.decisions.append(row)
            self.facts.add(row)
        elif kind == "outcome":
            row = self.rows.outcome(body, file, line, seq)
            self.outcomes.append(row)
            self.facts.outcome(row)
        else:
            return
        if len(self.decisions) + len(self.outcomes) >= BATCH:
            self.flush()

    def walked(self, record: Record, file: str, line: int) -> None:
        """`verify`'s on_record."""
        self.last = (file, line)
        self.add(record.body, file, line, record.seq)

    def discard(self, chain: Trail) -> None:
        """Take out every row loaded from `chain` (the fast walk gave up on it)."""
        self.decisions.clear()
        self.outcomes.clear()
        files = [str(p) for p in chain.segments]
        marks = ",".join("?" * len(files))
        for table in ("decisions", "outcomes"):
            self.db.execute(f"DELETE FROM {table} WHERE file IN ({marks})", files)  # noqa: S608
        self.last = None
        self.facts = Facts()

    def end_chain(self) -> None:
        """The chain is loaded: its rows and facts are written; the next chain follows."""
        self.flush()
        self.facts.write(self.db, self.chain)
        self.chain += 1
        self.last = None

    def flush(self) -> None:
        self.db.executemany(_INSERT_DECISION, self.decisions)
        self.db.executemany(_INSERT_OUTCOME, self.outcomes)
        self.decisions.clear()
        self.outcomes.clear()


def read_rest(
    chain: Trail, after: tuple[str, int] | None
) -> Iterator[tuple[dict[str, Any], str, int]]:
    """Records of `chain` after (file, line), as `audit query` reads them: every line that
    is a JSON object, a damaged one skipped. StepguardError when a file cannot be read."""
    started = after is None
    for path in chain.segments:
        name = str(path)
        if not started and name != after[0]:  # type: ignore[index]
            continue
        skip = 0 if started else after[1]  # type: ignore[index]
        started = True
        try:
            with open_read(path) as f:
                for lineno, raw in enumerate(f, 1):
                    if lineno <= skip:
                        continue
                    try:
                        record = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(record, dict):
                        yield record, name, lineno
        except OSError as exc:
            raise StepguardError(f"cannot read {path}: {exc}") from exc


def load_chain(job: Job, sink: Sink) -> list[ChainStatus]:
    """Walk (verify) and load one chain; its verdict (none for a chain not walked).

    An intact chain is walked by walk.py's fast walk; at its first doubt, what it
    loaded is taken out again and the chain is walked by `audit verify`'s own walk,
    which names the break."""
    found: list[ChainStatus] = []
    if job.verify:
        records = walk_intact(
            job.chain,
            job.key,
            sink.add,
            accept_missing_anchor=job.accept_missing_anchor,
            checkpoints=job.checkpoints,
        )
        if records is not None:
            sink.end_chain()
            name = job.trails.name if job.trails.multi else job.chain.name
            found.append(ChainStatus(name, job.chain.name, True, records, "", 0))
            return found
        sink.discard(job.chain)
        try:
            report: Report = verify_chain(
                job.trails,
                job.chain,
                job.key,
                accept_missing_anchor=job.accept_missing_anchor,
                checkpoints=job.checkpoints,
                on_record=sink.walked,
            )
        except StepguardError as exc:
            found.append(
                ChainStatus(job.trails.name, job.chain.name, False, 0, str(exc), EXIT_ERROR)
            )
        else:
            found.append(status_of(report))
            if report.problem is None:
                sink.end_chain()
                return found
    for body, file, line in read_rest(job.chain, sink.last):  # past the break, if any
        sink.add(body, file, line, body.get("seq"))
    sink.end_chain()
    return found


def create_tables(db: sqlite3.Connection) -> None:
    db.execute(f"CREATE TABLE decisions ({DECISION_COLUMNS})")
    db.execute(f"CREATE TABLE outcomes ({OUTCOME_COLUMNS})")
    db.executescript(FACT_TABLES)


def _fast(db: sqlite3.Connection) -> None:
    """A scratch database: no journal, no syncing (a crash loses only what is rebuilt)."""
    db.execute("PRAGMA page_size = 65536")  # before the first table: fewer, fuller pages
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA temp_store = MEMORY")
    db.execute("PRAGMA cache_size = -262144")


def _in_process(job: Job, path: str) -> list[ChainStatus]:
    """A pool worker: one chain into the SQLite file at `path`."""
    db = sqlite3.connect(path)
    try:
        _fast(db)
        create_tables(db)
        found = load_chain(job, Sink(db))
        db.commit()
        return found
    finally:
        db.close()


# --- all chains ---------------------------------------------------------------------------


def jobs(
    sets: list[TrailSet],
    key: bytes | None,
    *,
    accept_missing_anchor: bool,
    checkpoints: Path | None,
) -> tuple[list[ChainStatus], list[Job]]:
    """The trails' whole-trail findings, and one job per chain (walked or only read)."""
    findings: list[ChainStatus] = []
    out: list[Job] = []
    for trails in sets:
        findings.extend(status_of(r) for r in set_findings(trails))
        walked = {c.name for c in chains_to_verify(trails)}
        for chain in trails.chains:
            out.append(
                Job(trails, chain, chain.name in walked, key, accept_missing_anchor, checkpoints)
            )
    return findings, out


def load_all(
    db: sqlite3.Connection,
    sets: list[TrailSet],
    key: bytes | None = None,
    *,
    accept_missing_anchor: bool = False,
    checkpoints: Path | None = None,
    processes: int | None = None,
    on_chain: Callable[[int, int], None] | None = None,
) -> Verification:
    """Verify and load every chain of `sets` into `db` (tables made by the caller);
    the verification, chain by chain in trail order as `audit verify` lists them.
    A report found twice is kept once (`first_of_each_report`).

    `processes`: how many chains load at once in processes of their own (None: as
    many as there are cores when the trail is large, else none; 0 or 1: none).
    `on_chain(done, total)`: told as each chain is in (a long load's progress line)."""
    findings, todo = jobs(
        sets, key, accept_missing_anchor=accept_missing_anchor, checkpoints=checkpoints
    )
    if processes is None:
        size = sum(_size(p) for job in todo for p in job.chain.segments)
        processes = (os.cpu_count() or 1) if size >= PARALLEL_BYTES else 1
    processes = min(processes, len(todo))
    told = on_chain or (lambda done, total: None)
    told(0, len(todo))
    verdicts: list[list[ChainStatus]]
    if processes <= 1:
        sink = Sink(db)
        verdicts = []
        for job in todo:
            verdicts.append(load_chain(job, sink))
            told(len(verdicts), len(todo))
    else:
        verdicts = _parallel(db, todo, processes, told)
    first_of_each_report(db)
    statuses = list(findings)
    for found in verdicts:
        statuses.extend(found)
    return Verification(tuple(statuses))


def _parallel(
    db: sqlite3.Connection,
    todo: list[Job],
    processes: int,
    told: Callable[[int, int], None],
) -> list[list[ChainStatus]]:
    """Each chain loaded by a child (`python -m sidecar.evidence.ingest FILE`, the job
    pickled on its stdin, its verdict pickled on its stdout), `processes` at a time;
    copied in, in trail order, as each is done."""
    with tempfile.TemporaryDirectory(prefix="stepguard-evidence-") as tmp:
        paths = [os.path.join(tmp, f"chain-{i}.db") for i in range(len(todo))]
        running: dict[int, subprocess.Popen[bytes]] = {}
        verdicts: list[list[ChainStatus]] = []
        started = 0
        try:
            for i in range(len(todo)):
                while started < len(todo) and len(running) < processes:
                    running[started] = _start(todo[started], paths[started])
                    started += 1
                verdicts.append(_finish(running.pop(i)))
                _copy_in(db, paths[i], i)
                told(len(verdicts), len(todo))
        finally:
            for child in running.values():
                child.kill()
                child.wait()
                if child.stdout is not None:
                    child.stdout.close()
        return verdicts


def _start(job: Job, path: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-m", "sidecar.evidence.ingest", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None
    child.stdin.write(pickle.dumps(job))
    child.stdin.close()
    return child


def _finish(child: subprocess.Popen[bytes]) -> list[ChainStatus]:
    assert child.stdout is not None
    with child.stdout:
        out = child.stdout.read()
    if child.wait() != 0:
        raise StepguardError(
            f"loading a chain failed in its process (exit {child.returncode}); see its errors above"
        )
    found: list[ChainStatus] = pickle.loads(out)  # noqa: S301 - our own child's answer
    return found


def _copy_in(db: sqlite3.Connection, path: str, number: int) -> None:
    """A chain's rows and facts into the store. A plain `INSERT ... SELECT *` between
    tables of one shape, with no index or constraint, copies the records as they are
    (SQLite's transfer optimization); with `OR IGNORE` (which has nothing to ignore:
    the tables have no constraint) it did so only into an empty table and decoded
    and re-encoded every row of every later chain, 2.6 times the CPU."""
    db.execute("ATTACH DATABASE ? AS chain", (path,))
    try:
        db.execute("INSERT INTO main.decisions SELECT * FROM chain.decisions")
        db.execute("INSERT INTO main.outcomes SELECT * FROM chain.outcomes")
        db.execute(
            "INSERT INTO main.inventory_actions SELECT workflow, action, n, allowed, approved, "
            "first_time, first_run, file, line, seq, ? FROM chain.inventory_actions",
            (number,),
        )
        for table in ("inventory_names", "inventory_changers", "inventory_counts"):
            db.execute(f"INSERT INTO main.{table} SELECT * FROM chain.{table}")  # noqa: S608
        db.commit()
    finally:
        db.execute("DETACH DATABASE chain")
    with contextlib.suppress(OSError):
        os.unlink(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def first_of_each_report(db: sqlite3.Connection) -> None:
    """Keep the first recorded of each report (same reporter identity and report_id),
    once all rows are in (`load_all`).

    The sidecar records a report once while it remembers it, but its memory is lost
    when it restarts: a report sent again across a restart is in the trail twice,
    under two outcome ids. It is one thing the step did, counted once: the earliest
    recorded is kept (by recorded time, then where it is in the trail)."""
    twice = (
        "SELECT 1 FROM outcomes WHERE report_id != '' "
        "GROUP BY reporter, report_id HAVING COUNT(*) > 1 LIMIT 1"
    )
    if db.execute(twice).fetchone() is not None:
        db.execute(
            "DELETE FROM outcomes WHERE rowid IN (SELECT rowid FROM (SELECT rowid, "
            "ROW_NUMBER() OVER (PARTITION BY reporter, report_id "
            "ORDER BY recorded, file, line, rowid) AS n FROM outcomes WHERE report_id != '') "
            "WHERE n > 1)"
        )


__all__ = [
    "DECISION_COLUMNS",
    "OUTCOME_COLUMNS",
    "Job",
    "Rows",
    "first_of_each_report",
    "load_all",
    "parse_time",
]


def _child(argv: list[str]) -> int:
    """A chain's process: the job on stdin, rows into the SQLite file argv[0], its
    verdict on stdout. A StepguardError (an unreadable file) ends it with exit 2."""
    job = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - from our own parent
    try:
        found = _in_process(job, argv[0])
    except StepguardError as exc:
        print(f"stepguard: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(pickle.dumps(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
