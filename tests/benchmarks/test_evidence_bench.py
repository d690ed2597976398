"""The evidence benchmark's trail generator and its child, on a small trail (not timed).

The generated trail must be what a fleet of sidecars writes: `stepguard audit
verify` (the real CLI) accepts it, every record validates against the event
schema, and decision and outcome records have exactly the fields the sidecar's
own builders give them. The benchmark's child then loads it and answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from benchmarks.evidence_bench import ANSWERS, _shown, _trail_end, child, run_size
from benchmarks.evidence_stages import CHUNK, stage_costs
from benchmarks.evidence_trail import Shape, generate, iter_lines
from sidecar.core.event import CallMeta, build_outcome_event
from sidecar.core.outcome import Effect, Outcome
from sidecar.decision.outcomes import facts_of
from tests.evidence.scenario import decision_event
from tests.helpers import ROOT


def test_generated_trail_verifies_and_has_the_sidecars_shape(tmp_path: Path) -> None:
    trail = tmp_path / "trail"
    written = generate(trail, Shape(6_000, workers=3, rotate_bytes=1 << 20, population=60))
    assert written["records"] >= 6_000 and written["chains"] == 3
    assert written["segments"] > 3  # rotated
    verified = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "audit", "verify", str(trail)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "sidecar/audit/event.schema.json").read_text())
    )
    records = [json.loads(line) for line in iter_lines(trail)]
    kinds = Counter(r["kind"] for r in records)
    assert kinds["decision"] > 2_000 and kinds["outcome"] > 2_000 and kinds["segment"] > 3
    for record in records:
        validator.validate(record)
    chain = ("seq", "prev", "hash")
    decision = next(r for r in records if r["kind"] == "decision" and r["decision"] == "ALLOW")
    outcome = next(r for r in records if r["kind"] == "outcome" and "effect" in r)
    real = decision_event(datetime.now(UTC), "grant_access", "jira", "onboarding", "r", "s")
    assert set(decision) - set(chain) == set(real)
    real_outcome = build_outcome_event(
        outcome["id"],
        datetime.now(UTC),
        Outcome(
            decision["id"],
            "succeeded",
            effect=Effect(target_system="jira"),
            started_at=datetime.now(UTC),
            finished_at=datetime.now(UTC),
        ),
        CallMeta(),
        facts=facts_of(decision),
        violation="",
    )
    assert set(outcome) - set(chain) == set(real_outcome)
    runs = Counter(r["workflow_id"] for r in records if r["kind"] == "decision")
    assert set(runs) == {"onboarding", "mover", "jit-credential", "leaver"}
    statuses = Counter(r["status"] for r in records if r["kind"] == "outcome")
    assert {"succeeded", "failed", "timed_out"} <= set(statuses)


def test_the_child_loads_and_answers(tmp_path: Path) -> None:
    trail = tmp_path / "trail"
    generate(trail, Shape(4_000, workers=2, population=80), processes=1)
    figures = child(trail, _trail_end(trail))
    assert figures["verified"], figures["verification"]
    assert figures["tables"]["decisions"] + figures["tables"]["outcomes"] >= 3_990
    assert set(figures["answers"]) == set(ANSWERS)
    assert figures["answers"]["leavers"]["rows"] > 0
    assert figures["answers"]["exceptions"]["rows"] > 0
    assert figures["answers"]["access-identity"]["rows"] > 0
    assert next(iter(figures["phases"])).startswith("chains")  # Store.phases, in order
    assert len(figures["phases"]) == 6
    stages = figures["stages"]
    assert stages["records"] >= 1_900  # the first of two chains
    assert set(stages["us_per_record"]) == {"parse", "canonical", "hash", "rows", "insert"}
    assert all(cost > 0 for cost in stages["us_per_record"].values())


def test_the_stage_timing_refuses_a_trail_whose_records_do_not_verify(tmp_path: Path) -> None:
    """The stages are timed on the real checks: a changed byte stops them."""
    trail = tmp_path / "trail"
    generate(trail, Shape(500, workers=2, population=20), processes=1)
    segment = trail / "audit.w0.jsonl"  # the first chain, not rotated at this size
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b'"kind":"', b'"kind": "')  # the same JSON, other bytes
    segment.write_bytes(b"".join(lines))
    with pytest.raises(SystemExit, match="record 5 "):
        stage_costs(trail)


def test_the_recorded_command_names_a_work_directory_any_clone_can_use(tmp_path: Path) -> None:
    """RESULTS.md records the command that made the figures: a work directory inside the
    project is named relative to it (the same command on another clone), one outside as
    given."""
    inside = ROOT / "benchmarks" / ".work" / "evidence-elsewhere"
    assert _shown(inside) == "benchmarks/.work/evidence-elsewhere"
    assert (ROOT / _shown(inside)).resolve() == inside.resolve()
    assert _shown(tmp_path) == str(tmp_path)


def test_a_reused_trail_is_kept(tmp_path: Path) -> None:
    """`--reuse` loads a trail an earlier `--keep` run left; without `--keep` it must not
    delete it (the kept 10M trail takes minutes to generate again)."""
    first = run_size(3_000, tmp_path, workers=2, keep=True)
    trail = tmp_path / "trail-3000"
    before = sorted(p.name for p in trail.iterdir())
    again = run_size(3_000, tmp_path, workers=2, keep=False, reuse=True)
    assert sorted(p.name for p in trail.iterdir()) == before
    assert (tmp_path / "trail-3000.json").exists()
    assert again["generated"] == first["generated"]  # reused, not generated again
    run_size(3_000, tmp_path, workers=2, keep=False)  # not reused: generated, then deleted
    assert not trail.exists()


def test_the_stage_timing_inserts_rows_as_wide_as_the_stores(tmp_path: Path) -> None:
    """Past the first CHUNK rows the stages insert into tables made from rows.py's
    columns: a row wider or narrower than the table would fail there."""
    trail = tmp_path / "trail"
    generate(trail, Shape(2 * CHUNK + 2_000, workers=1, population=80), processes=1)
    stages = stage_costs(trail)
    assert stages["records"] > CHUNK  # an insert was timed, not only row building
    assert stages["us_per_record"]["insert"] > 0


def test_the_same_seed_and_shape_write_the_same_trail_in_any_process(tmp_path: Path) -> None:
    """`--reuse` trusts that a kept trail is the one the seed and shape write: two
    processes with different string hashing write the same records (all but what
    the real chain writer draws itself: each segment header's id, a UUIDv7 of the
    wall clock, and so the hashes that chain over it)."""
    script = (
        "import sys; from pathlib import Path; "
        "from benchmarks.evidence_trail import Shape, generate; "
        "generate(Path(sys.argv[1]), Shape(4_000, workers=2, rotate_bytes=1 << 20, "
        "population=40), processes=1)"
    )
    digests = []
    for seed in ("1", "2"):
        out = tmp_path / f"hash-{seed}"
        subprocess.run(
            [sys.executable, "-c", script, str(out)],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
            timeout=300,
        )
        files = sorted(p for p in out.rglob("*.jsonl*") if not p.name.endswith(".head"))
        digests.append({p.relative_to(out).as_posix(): _records(p) for p in files})
    assert digests[0].keys() == digests[1].keys() and digests[0]
    changed = [name for name in digests[0] if digests[0][name] != digests[1][name]]
    assert not changed, changed


def _records(path: Path) -> list[dict[str, Any]]:
    """A segment's records without what the chain writer draws (see above)."""
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for drawn in ("seq", "prev", "hash"):
            record.pop(drawn)
        if record["kind"] == "segment":
            record.pop("id")
            record.pop("follows")
        out.append(record)
    return out
