"""benchmarks/outcome_profile.py on a short run (not timed): the RecordOutcomes handler
of the asyncio server is fed batches for ALLOW decisions the sidecar made, every outcome
is recorded without a violation, the trail verifies, and the cProfile breakdown names
the outcome path's modules."""

from __future__ import annotations

from benchmarks.outcome_profile import measure


def test_a_short_run_records_every_outcome_and_profiles_the_path() -> None:
    record = measure(batches=2, batch=16, repeat=2, profile="cprofile", top=40)
    # warm-up (3 batches), 2 runs of 2, and the profiled 2: every outcome recorded
    assert record["outcomes"] == (3 + 2 * 2 + 2) * 16
    assert record["trail_verified"]
    assert record["us_per_outcome"] > 0 and len(record["us_per_outcome_runs"]) == 2
    assert "sidecar/decision/outcomes.py" in record["breakdown"]
    assert "record_many" in record["breakdown"]


def test_the_instructions_mode_handles_its_batches_inside_reduce() -> None:
    """`--profile instructions` (for callgrind's --toggle-collect=functools_reduce):
    its batches are made first, then every one handled and checked."""
    record = measure(batches=2, batch=8, repeat=1, profile="instructions", top=10)
    assert record["outcomes"] == (3 + 2 + 2) * 8  # warm-up, one timed run, the reduce
    assert record["trail_verified"]
