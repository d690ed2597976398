"""`stepguard test` on policies that do not parse: the problem once, located (issue 22.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sidecar.cli.exitcodes import EXIT_INVALID
from sidecar.cli.main import main
from tests.conftest import POLICIES

BROKEN = '@id("broken")\npermit (principal, action, resource)\nwhen { 1 + };\n'


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    (copy / "broken.cedar").write_text(BROKEN)
    return copy


def test_a_syntax_error_is_reported_once_at_the_token(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["test", str(broken)])
    out = capsys.readouterr().out
    assert code == EXIT_INVALID
    suites = len(list((broken / "tests").glob("*.yaml"))) - 1  # fixtures.yaml is no suite
    assert out.count("INVALID  ") == suites > 1
    # Once, however many suites use the directory; at the `}` (line 3, column 12), as
    # `validate` reports it, with the line and a caret under the token.
    assert out.count("syntax error") == 1, out
    assert f"{broken / 'broken.cedar'}:3:12" in out
    lines = out.splitlines()
    snippet = lines.index("3 | when { 1 + };")
    assert lines[snippet + 1] == "  |            ^"


def test_the_json_report_lists_the_located_problem_once(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["test", str(broken), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == EXIT_INVALID
    [invalid] = doc["invalid_policies"]
    [problem] = invalid["problems"]
    assert (problem["line"], problem["column"]) == (3, 12)
    assert problem["file"] == str(broken / "broken.cedar")
    assert problem["snippet"] == "when { 1 + };"
    assert all("syntax error" not in (s["error"] or "") for s in doc["suites"])
