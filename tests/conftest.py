"""Shared fixtures: paths, the bundled policies, real servers on loopback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings

# No test asserts wall-clock time, Hypothesis's per-example deadline included:
# on a loaded 2-core CI machine a slow example is not a failing one.
settings.register_profile("stepguard", deadline=None)
settings.load_profile("stepguard")

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
SHARED = ROOT.parent / "shared"


def in_ci() -> bool:
    """Whether this run is CI's (CI=true), where everything the suite exercises must run."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """Something a test needs is absent: a skip that says how to get it, a failure in CI.

    Locally a developer may lack a piece (the shared corpus, a registry that
    refused a package); in CI a skip would hide exactly what CI is for.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a test CI is meant to run may not skip)", pytrace=False)
    pytest.skip(reason)


def shared_dir(*parts: str) -> Path:
    """A directory under ../shared; absent, a skip locally and a failure in CI."""
    path = SHARED.joinpath(*parts)
    if not path.is_dir():
        missing(f"{path} is absent: the shared conformance material is needed for this test")
    return path
