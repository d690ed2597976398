"""Shared fixtures: paths, the bundled policies, real servers on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
SHARED = ROOT.parent / "shared"


def shared_dir(*parts: str) -> Path:
    """A directory under ../shared, or a skip that says it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the shared conformance material is needed for this test")
    return path
