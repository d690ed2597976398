"""diagnose() returns what `stepguard validate` reports, as data, and prints nothing (issue 17).

sidecar/cli/validate.py prints a `Diagnosis` and picks the exit code; the
authoring module only finds the problems, the warnings and the JSON files the
loader does not read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sidecar.authoring.diagnose import diagnose
from tests.authoring.test_failopen import THE_ISSUES_FORBID, _dir
from tests.conftest import POLICIES


def test_a_valid_directory_has_its_bundle_and_the_json_it_does_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    (directory / "entites.json").write_text("[]")  # misnamed: the loader skips it
    found = diagnose(directory)
    assert found.bundle is not None and found.problems == [] and found.warnings == []
    assert found.not_read == ["entites.json"]
    assert found.ok(strict=True)
    assert capsys.readouterr() == ("", "")


def test_a_refused_directory_has_every_problem_and_no_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    (directory / "read_only.cedar").write_text("permit (principal, action, resource) when { ;\n")
    found = diagnose(directory)
    assert found.bundle is None and not found.ok(strict=False)
    assert [(p.file, p.line, p.level) for p in found.problems] == [("read_only.cedar", 1, "error")]
    assert found.warnings == [] and found.not_read == []
    assert capsys.readouterr() == ("", "")


def test_warnings_refuse_the_directory_only_when_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    found = diagnose(_dir(tmp_path, THE_ISSUES_FORBID))
    assert found.bundle is not None and found.problems == []
    assert [(w.file, w.line, w.column, w.level) for w in found.warnings] == [
        ("release.cedar", 7, 17, "warning")
    ]
    assert found.ok(strict=False) and not found.ok(strict=True)
    assert capsys.readouterr() == ("", "")
