"""Loading trails into the evidence store: one pass per chain, verified and parsed at once.

Each chain is walked once by `audit verify`'s own walk (audit/chains.py), whose
`on_record` hands every record it accepted to the row builders here: the trail
is read, parsed, checked and hashed once, not once to verify and again to load.
Where the walk stops at a break, the rest of the chain is read as `audit query`
reads it (a damaged line skipped), so evidence from a broken chain is still
loaded, and its answers say the chain is broken. Chains the walk does not visit
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from sidecar.audit.chain import Record
from sidecar.audit.chains import chains_to_verify, set_findings, verify_chain
from sidecar.audit.event import timestamp
from sidecar.audit.files import open_read
from sidecar.audit.segments import Trail
from sidecar.audit.verify import EXIT_ERROR, Report
from sidecar.audit.workers import TrailSet
from sidecar.core.errors import StepguardError
from sidecar.core.model import EntityUid
from sidecar.evidence.facts import TABLES as FACT_TABLES
from sidecar.evidence.facts import Facts
from sidecar.evidence.verification import ChainStatus, Verification, status_of
from sidecar.evidence.walk import walk_intact

BATCH = 5000
# Below this many bytes of segments in all, chains are loaded in this process.
PARALLEL_BYTES = 64 << 20

DECISION_COLUMNS = (
    "id TEXT, time TEXT, decision TEXT, principal TEXT, action TEXT, target TEXT, workflow TEXT, "
    "run TEXT, step TEXT, requester TEXT, approver TEXT, ticket TEXT, sensitivity TEXT, "
    "not_after TEXT, revoke_within_s REAL, break_glass INTEGER, file TEXT, line INTEGER, "
    "seq INTEGER"
)
OUTCOME_COLUMNS = (
    "id TEXT, time TEXT, recorded TEXT, decision_id TEXT, decided TEXT, status TEXT, "
    "error_class TEXT, attempt INTEGER, workflow TEXT, run TEXT, step TEXT, action TEXT, "
    "identity TEXT, target TEXT, added TEXT, removed TEXT, cred_id TEXT, cred_change TEXT, "
    "expires_at TEXT, account TEXT, violation TEXT, file TEXT, line INTEGER, seq INTEGER, "
    "reporter TEXT"
)
_INSERT_DECISION = "INSERT OR IGNORE INTO decisions VALUES (" + ",".join("?" * 19) + ")"  # noqa: S608
_INSERT_OUTCOME = "INSERT OR IGNORE INTO outcomes VALUES (" + ",".join("?" * 25) + ")"  # noqa: S608
BREAK_GLASS_PREFIX = "BG-"
_NO_LIST = b"[]"


@dataclass(frozen=True, slots=True)
class Job:
    """One chain to load: the trail it belongs to, and whether to walk it (verify)."""

    trails: TrailSet
    chain: Trail
    verify: bool
    key: bytes | None
    accept_missing_anchor: bool
    checkpoints: Path | None


# --- rows ---------------------------------------------------------------------------------


class Rows:
    """Row builders with a memo of entity texts (principals, actions and identities
    repeat: `Type::"id"` is built once each).

    Every record of the trail passes through `decision` or `outcome`, so they read
    each field once, inline (a call per field would be most of their cost); what
    they make of a field is what `uid`, `_obj` and `_text` say."""

    def __init__(self) -> None:
        self._uids: dict[tuple[str, str], str] = {}

    def uid(self, value: Any) -> str:
        """`Type::"id"` of a recorded entity reference, "" when there is none.

        A decision's context records references as Cedar JSON does,
        `{"__entity": {"type": ..., "id": ...}}` (the requester, the approver); the
        event's own principal, action and resource, and an outcome's identity, as
        `{"type": ..., "id": ...}`. Both are read."""
        if not isinstance(value, dict):
            return ""
        inner = value.get("__entity")
        if inner is not None:
            if not isinstance(inner, dict):
                return ""
            value = inner
        kind = value.get("type")
        if type(kind) is not str:
            return ""
        ident = value.get("id")
        if type(ident) is not str:
            ident = str(ident)
        key = (kind, ident)
        text = self._uids.get(key)
        if text is None:
            text = str(EntityUid(kind, ident))
            if len(self._uids) >= 200_000:
                self._uids.clear()
            self._uids[key] = text
        return text

    def decision(self, e: Mapping[str, Any], file: str, line: int, seq: Any) -> tuple[Any, ...]:
        get, uid = e.get, self.uid
        ctx = get("context")
        if not isinstance(ctx, dict):
            ctx = _EMPTY
        approval = ctx.get("approval")
        if not isinstance(approval, dict):
            approval = _EMPTY
        bound = ctx.get("time_bound")
        obligations = get("obligations")
        revoke = obligations.get("revoke_within_s") if isinstance(obligations, dict) else None
        ticket = approval.get("ticket")
        if not isinstance(ticket, str):
            ticket = ""
        target = ctx.get("target_system")
        if not isinstance(target, str) or not target:
            resource = get("resource")
            target = resource.get("id") if isinstance(resource, dict) else None
            if not isinstance(target, str):
                target = ""
        return (
            _t(get("id")),
            _t(get("time")),
            _t(get("decision")),
            uid(get("principal")),
            uid(get("action")),
            target,
            _t(get("workflow_id")),
            _t(get("run_id")),
            _t(get("step_id")),
            uid(ctx.get("requester")),
            uid(approval.get("approver")),
            ticket,
            _t(ctx.get("sensitivity")),
            _instant(bound.get("not_after")) if isinstance(bound, dict) else "",
            float(revoke)
            if isinstance(revoke, int | float) and not isinstance(revoke, bool)
            else None,
            int(ticket.startswith(BREAK_GLASS_PREFIX)),
            file,
            line,
            seq if type(seq) is int else -1,
        )

    def outcome(self, e: Mapping[str, Any], file: str, line: int, seq: Any) -> tuple[Any, ...]:
        get = e.get
        effect = get("effect")
        if not isinstance(effect, dict):
            effect = _EMPTY
        cred = effect.get("credential")
        if not isinstance(cred, dict):
            cred = _EMPTY
        attempt = get("attempt")
        recorded = _t(get("time"))
        target = effect.get("target_system")
        if not isinstance(target, str) or not target:
            resource = get("resource")
            target = resource.get("id") if isinstance(resource, dict) else None
            if not isinstance(target, str):
                target = ""
        caller = get("caller")
        return (
            _t(get("id")),
            _t(get("finished_at")) or recorded,  # when the step did it, else when reported
            recorded,
            _t(get("decision_id")),
            _t(get("decided")),
            _t(get("status")),
            _t(get("error_class")),
            attempt if isinstance(attempt, int) else 0,
            _t(get("workflow_id")),
            _t(get("run_id")),
            _t(get("step_id")),
            self.uid(get("action")),
            self.uid(effect.get("identity")),
            target,
            _names(effect.get("entitlements_added")),
            _names(effect.get("entitlements_removed")),
            _t(cred.get("id")),
            _t(cred.get("change")),
            _t(cred.get("expires_at")),
            _t(effect.get("account")),
            _t(get("violation")),
            file,
            line,
            seq if type(seq) is int else -1,
            _t(caller.get("identity")) if isinstance(caller, dict) else "",  # who reported it
        )


def _t(value: Any) -> str:
    """Text, "" when the value is none (`_text` for the row builders' hot path)."""
    return value if isinstance(value, str) else ""


_EMPTY: dict[str, Any] = {}


def _obj(value: Any) -> dict[str, Any]:
    return value if type(value) is dict or isinstance(value, dict) else _EMPTY


def _text(value: Any) -> str:
    return value if type(value) is str or isinstance(value, str) else ""


def parse_time(text: str) -> datetime:
    """An instant of the trail (RFC 3339, `Z` or an offset; naive means UTC)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _instant(value: Any) -> str:
    """A recorded instant in the trail's time format, "" when there is none or it is
    malformed. A decision's context records instants as Cedar JSON does,
    `{"__extn": {"fn": "datetime", "arg": "2026-11-03T00:00:00.000Z"}}`; plain RFC 3339
    text is read too."""
    if isinstance(value, dict) and isinstance(value.get("__extn"), dict):
        value = value["__extn"].get("arg")
    if not isinstance(value, str) or not value:
        return ""
    try:
        return timestamp(parse_time(value))
    except ValueError:
        return ""


def _names(value: Any) -> str:
    """A list of entitlement names as JSON text (`[]` when none)."""
    if type(value) is not list or not value:
        return "[]"
    return orjson.dumps([v for v in value if isinstance(v, str)]).decode()


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
) -> Verification:
    """Verify and load every chain of `sets` into `db` (tables made by the caller);
    the verification, chain by chain in trail order as `audit verify` lists them.

    `processes`: how many chains load at once in processes of their own (None: as
    many as there are cores when the trail is large, else none; 0 or 1: none)."""
    findings, todo = jobs(
        sets, key, accept_missing_anchor=accept_missing_anchor, checkpoints=checkpoints
    )
    if processes is None:
        size = sum(_size(p) for job in todo for p in job.chain.segments)
        processes = (os.cpu_count() or 1) if size >= PARALLEL_BYTES else 1
    processes = min(processes, len(todo))
    verdicts: list[list[ChainStatus]]
    if processes <= 1:
        sink = Sink(db)
        verdicts = []
        for job in todo:
            verdicts.append(load_chain(job, sink))
    else:
        verdicts = _parallel(db, todo, processes)
    statuses = list(findings)
    for found in verdicts:
        statuses.extend(found)
    return Verification(tuple(statuses))


def _parallel(db: sqlite3.Connection, todo: list[Job], processes: int) -> list[list[ChainStatus]]:
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
    db.execute("ATTACH DATABASE ? AS chain", (path,))
    try:
        db.execute("INSERT OR IGNORE INTO main.decisions SELECT * FROM chain.decisions")
        db.execute("INSERT OR IGNORE INTO main.outcomes SELECT * FROM chain.outcomes")
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


__all__ = ["Job", "Rows", "load_all"]


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
