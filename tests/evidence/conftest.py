"""The joiner-and-leaver story on real trails (tests/evidence/scenario.py), once per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evidence.scenario import joiner_leaver_story


@pytest.fixture
def story_trails(tmp_path: Path) -> list[Path]:
    """Two sidecars' trails: one rotated chain, and two workers' chains with a manifest."""
    return joiner_leaver_story().write(tmp_path / "trails")
