"""Loading the evidence store (ingest.py): one pass per chain, chains in parallel processes.

Real trails on disk (the joiner-and-leaver story's two sidecars, and a generated
trail of several workers' rotated chains). Whether its chains load in this process
or each in a process of its own, the store holds the same rows and the same
verdicts; a chain broken in the middle still has every readable record loaded,
and its verdict says where it broke, as `audit verify` says it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from benchmarks.evidence_trail import Shape, generate
from sidecar.core.bundle import load_bundle
from sidecar.evidence import offboarding
from sidecar.evidence.answers import grant_rows
from sidecar.evidence.options import Options
from sidecar.evidence.store import open_store
from tests.helpers import POLICIES, ROOT

NOW = datetime(2027, 1, 1, tzinfo=UTC)
LIFECYCLE = load_bundle(POLICIES).lifecycle


def _tables(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
        for t in ("decisions", "outcomes", "grants", "leavers", "chains")
    }


def _loaded(paths: list[Path], processes: int) -> tuple[dict[str, Any], Any]:
    store = open_store(paths, Options(now=NOW, lifecycle=LIFECYCLE), processes=processes)
    try:
        return _tables(store.db), store.verification
    finally:
        store.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "trail"
    generate(root, Shape(3_000, workers=3, rotate_bytes=256 << 10, population=40), processes=1)
    return root


def test_chains_in_processes_load_exactly_what_one_process_loads(
    fleet: Path, story_trails: list[Path]
) -> None:
    for paths in ([fleet], story_trails):
        alone, verified_alone = _loaded(paths, 1)
        apart, verified_apart = _loaded(paths, 2)
        assert apart == alone
        assert verified_apart == verified_alone and verified_alone.ok
        assert len(alone["decisions"]) > 10 and len(alone["grants"]) > 3


@pytest.mark.parametrize("processes", [1, 2])
def test_the_load_says_each_stage_as_it_starts(fleet: Path, processes: int) -> None:
    """What a terminal's progress line shows (cli/evidence.py): every chain counted in,
    in one process or in several, then each later stage once, in the order they run."""
    said: list[str] = []
    store = open_store(
        [fleet], Options(now=NOW, lifecycle=LIFECYCLE), processes=processes, progress=said.append
    )
    try:
        chains = len(store.verification.chains)
    finally:
        store.close()
    assert chains == 3
    counted = [f"verifying and loading chains ({n}/3 done)" for n in range(4)]
    assert said == [
        *counted,
        "indexing ids",
        "building indexes",
        "replaying access",
        "finding the leaver runs' accesses",
        "keeping the possible findings",
    ]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_chain_broken_in_the_middle_is_loaded_whole_and_said_broken(
    fleet: Path, tmp_path: Path, processes: int
) -> None:
    broken = tmp_path / "trail"
    broken.mkdir()
    for f in fleet.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    segment = sorted(broken.glob("audit.w1.jsonl.0*"))[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    at = len(lines) // 2
    record = json.loads(lines[at])
    record["time"] = "2026-01-05T00:00:00.000000Z"  # valid JSON, wrong hash
    lines[at] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    segment.write_bytes(b"".join(lines))
    whole, _ = _loaded([fleet], 1)
    tables, verification = _loaded([broken], processes)
    assert not verification.ok
    (bad,) = [c for c in verification.chains if not c.ok]
    verified = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "audit", "verify", str(broken)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert verified.returncode == bad.exit_code == 3
    assert f"{segment}:{at + 1}" in bad.problem or str(at + 1) in verified.stdout
    # Every record is still there (the changed one with its changed time).
    for name in ("decisions", "outcomes"):
        assert len(tables[name]) == len(whole[name])


def test_time_to_revoke_is_every_revocations_summary_per_target(fleet: Path) -> None:
    """Per target: the count, nearest-rank p50 and p95, and the slowest revocation with
    its evidence (the first of equals), from every revoked grant; read one grant at a
    time, so a large trail's millions of revocations are not all held at once."""
    store = open_store([fleet], Options(now=NOW, lifecycle=LIFECYCLE))
    try:
        got = offboarding.time_to_revoke(store)
        revoked = [
            g
            for g in grant_rows(store, "g.closed_how = 'revoked'")
            if g["time_to_revoke_s"] is not None
        ]
    finally:
        store.close()
    targets = sorted({g["target"] for g in revoked})
    assert [r["target"] for r in got] == targets and len(targets) >= 2
    for row in got:
        mine = [g for g in revoked if g["target"] == row["target"]]
        took = sorted(g["time_to_revoke_s"] for g in mine)
        slowest = next(g for g in mine if g["time_to_revoke_s"] == took[-1])
        assert row["revocations"] == len(mine)
        assert row["p50_s"] == took[math.ceil(len(took) / 2) - 1]
        assert row["p95_s"] == took[math.ceil(0.95 * len(took)) - 1]
        assert (row["max_s"], row["evidence"]) == (took[-1], slowest["evidence"])
