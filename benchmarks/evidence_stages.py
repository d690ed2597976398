"""What one record costs a chain loader, stage by stage (benchmarks/evidence_bench.py).

The load of a large trail is CPU work per record, in the chain loaders
(sidecar/evidence/walk.py and ingest.py). This measures each stage on its own,
in this process, over the first records of a trail's first chain, one record
at a time through all stages, as a loader takes it:

- *parse*: the line as JSON (orjson), the chain fields taken out;
- *canonical*: the body re-encoded with sorted keys and the line compared with
  the canonical record line of what it parses to (`audit verify`'s check that
  no byte was changed);
- *hash*: SHA-256 over the domain, seq, prev and body (the chain link);
- *rows*: the store's row made from the body (sidecar/evidence/rows.py);
- *insert*: the rows into an SQLite table of the store's columns.

Stages are timed by a wall clock read between them (on a quiet machine, the
CPU's time): a CPU clock read is a system call, longer than some stages.

The first three are what verifying costs, whatever is then done with a record:
with the per-record interpreter cost of the loop around them, they bound how
fast any loader of this design (Python over orjson, hashlib and sqlite3) can
verify a trail on this machine.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from sidecar.audit.chain import DOMAIN
from sidecar.audit.files import open_read
from sidecar.audit.workers import collect_sets
from sidecar.evidence.rows import (
    DECISION_COLUMNS,
    DECISION_WIDTH,
    OUTCOME_COLUMNS,
    OUTCOME_WIDTH,
    Rows,
)

STAGES = ("parse", "canonical", "hash", "rows", "insert")
CHUNK = 5000


def _lines(trail: Path, limit: int) -> Iterator[bytes]:
    chain = collect_sets([trail])[0].chains[0]
    count = 0
    for path in chain.segments:
        with open_read(path) as f:
            for raw in f:
                yield raw[:-1]
                count += 1
                if count >= limit:
                    return


def stage_costs(trail: Path, records: int = 200_000) -> dict[str, Any]:
    """CPU microseconds per record of each stage, over the first `records` of the trail.

    One record at a time, as a loader goes: a clock read between stages (its own
    cost, measured first, taken off each stage), rows inserted in batches."""
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE decisions ({DECISION_COLUMNS})")
    db.execute(f"CREATE TABLE outcomes ({OUTCOME_COLUMNS})")
    # As many marks as the tables have columns (a column added to rows.py is counted).
    insert_d = "INSERT INTO decisions VALUES (" + ",".join("?" * DECISION_WIDTH) + ")"
    insert_o = "INSERT INTO outcomes VALUES (" + ",".join("?" * OUTCOME_WIDTH) + ")"
    loads, dumps, sha256, clock = orjson.loads, orjson.dumps, hashlib.sha256, time.perf_counter
    sort = orjson.OPT_SORT_KEYS
    builder = Rows()
    decisions: list[tuple[Any, ...]] = []
    outcomes: list[tuple[Any, ...]] = []
    spent = dict.fromkeys(STAGES, 0.0)
    lines = list(_lines(trail, records))
    tick = min(_clock_cost(clock) for _ in range(5))
    for n, line in enumerate(lines):
        t0 = clock()
        obj = loads(line)
        seq, prev, digest = obj.pop("seq"), obj.pop("prev"), obj.pop("hash")
        t1 = clock()
        body = dumps(obj, option=sort)
        head = b'{"seq":%d,"prev":"%b","hash":"%b"' % (seq, prev.encode(), digest.encode())
        canonical = line == (head + b"," + body[1:] if body != b"{}" else head + b"}")
        t2 = clock()
        hashed = sha256(b"%b%d\n%b\n%b" % (DOMAIN, seq, prev.encode(), body)).hexdigest()
        t3 = clock()
        kind = obj.get("kind")
        if kind == "decision":
            decisions.append(builder.decision(obj, "segment", n, seq))
        elif kind == "outcome":
            outcomes.append(builder.outcome(obj, "segment", n, seq))
        t4 = clock()
        if len(decisions) + len(outcomes) >= CHUNK:
            db.executemany(insert_d, decisions)
            db.executemany(insert_o, outcomes)
            decisions.clear()
            outcomes.clear()
        t5 = clock()
        if not canonical or hashed != digest:
            raise SystemExit(f"record {n} of the generated trail does not verify")
        spent["parse"] += t1 - t0 - tick
        spent["canonical"] += t2 - t1 - tick
        spent["hash"] += t3 - t2 - tick
        spent["rows"] += t4 - t3 - tick
        spent["insert"] += t5 - t4 - tick
    db.close()
    count = len(lines)
    return {
        "records": count,
        "us_per_record": {name: round(spent[name] / count * 1e6, 2) for name in STAGES},
    }


def _clock_cost(clock: Any, reads: int = 100_000) -> float:
    """Seconds one clock read adds between two stages."""
    start = clock()
    for _ in range(reads):
        clock()
    seconds: float = (clock() - start) / reads
    return seconds


__all__ = ["STAGES", "stage_costs"]
