"""The Temporal benchmark runs for real at a tiny size: both workers, the trail check, the block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import temporal_bench
from tests.benchmarks.test_bench_provenance import BLOCK


def test_a_tiny_run_guards_every_activity_and_writes_a_block_with_its_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    monkeypatch.setattr(temporal_bench, "RESULTS", results)
    saved: list[dict[str, object]] = []

    def save(name: str, started: str, record: dict[str, object]) -> Path:
        saved.append(record)
        return temporal_bench.ROOT / "benchmarks" / "data" / f"{name}.json"

    monkeypatch.setattr(temporal_bench, "save_data", save)
    assert temporal_bench.main(["--workflows", "2", "--rounds", "2", "--write"]) == 0
    (record,) = saved
    # 3 warm-up workflows, then 2 per measurement (sequential and all at once) per round.
    expected = (3 + 2 * 2 * 2) * 3
    assert record["trail"] == {"decision": expected, "outcome": expected}
    (block,) = BLOCK.finditer(results.read_text())
    assert block["name"] == "temporal-bench"
    assert block["command"] == "python -m benchmarks.temporal_bench --write"
    body = block["body"]
    assert "Command: `python -m benchmarks.temporal_bench --write`" in body
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", body)
    assert re.search(r"commit [0-9a-f]{7,}", body)
    assert re.search(r"\| throughput \(all at once\) \| [\d.]+ workflows/s", body)
    assert len([line for line in body.splitlines() if re.match(r"\| \d+ \|", line)]) == 2
