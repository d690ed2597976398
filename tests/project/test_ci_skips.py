"""Under CI=true nothing the suite exercises may skip; locally a skip says what is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import conftest

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["true", "True", "1", "yes"])
def test_missing_piece_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"the widget is absent.*CI=true"):
        conftest.missing("the widget is absent")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_missing_piece_skips_locally(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="the widget is absent"):
        conftest.missing("the widget is absent")


def test_absent_shared_material_fails_in_ci_and_skips_locally(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "no-shared")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="conformance material"):
        conftest.shared_dir("conformance", "cedar")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="conformance material"):
        conftest.shared_dir("conformance", "cedar")
    (tmp_path / "no-shared" / "conformance" / "cedar").mkdir(parents=True)
    assert conftest.shared_dir("conformance", "cedar").is_dir()


def test_every_skip_goes_through_missing() -> None:
    """A bare pytest.skip or importorskip would skip in CI too; only `missing` decides."""
    bare = re.compile(r"pytest\.(skip\(|importorskip\(|xfail\()|@pytest\.mark\.(skip|skipif)\b")
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name not in ("conftest.py", Path(__file__).name)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert offenders == []
