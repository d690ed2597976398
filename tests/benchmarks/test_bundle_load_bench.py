"""benchmarks/bundle_load.py generates valid bundles and measures each in a child."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bundle_load import generate, measure, table
from sidecar.core.bundle import load_bundle


def test_generated_bundle_loads_with_every_policy(tmp_path: Path) -> None:
    policies, written = generate(tmp_path / "b", 300 * 1024)
    bundle = load_bundle(tmp_path / "b")
    assert bundle.policy_count == policies > 0
    assert written >= 300 * 1024
    assert len(list((tmp_path / "b").glob("*.cedar"))) >= 2  # split into files


def test_measure_runs_the_load_in_a_child_and_reports_it() -> None:
    run = measure(0.02, timeout=300)
    assert run.seconds is not None and run.error == ""
    assert run.rss_peak >= run.rss_before > 0
    assert f"| {run.policies:,} |" in table([run])
