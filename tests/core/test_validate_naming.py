"""`stepguard validate`: policies named by their @id, problems in one order (issue 22.2)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sidecar.cli.main import main
from tests.conftest import POLICIES

EXTRA = """\
@id("t2")
permit (principal, action == Action::"nope", resource);
@id("t3")
permit (principal, action, resource)
when { context.workflow_id + 1 == 2 };
permit (principal, action, resource)
when { resource.sensitivty == "low" };
"""


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    (copy / "zz.cedar").write_text(EXTRA)
    return copy


def _validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["validate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_policy_is_named_by_its_id(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _validate(capsys, str(broken))
    assert code == 4
    assert 'for policy "t2", unrecognized action `Action::"nope"`' in err
    assert 'for policy "t3", unexpected type' in err
    # Without an @id: its place in the file, counted from 1 (Cedar says `policy2`).
    assert "for the policy without an @id (number 3 in its file), attribute `sensitivty`" in err
    assert not re.search(r"policy\d", err)
    assert "zz.cedar:7:17" in err  # at `sensitivty`


def test_text_and_json_list_the_problems_in_the_same_order(
    broken: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, err = _validate(capsys, str(broken))
    shown = [tuple(m.groups()) for m in re.finditer(r"--> (\S+):(\d+):(\d+)", err)]
    _, out, _ = _validate(capsys, str(broken), "--json")
    listed = [(p["file"], str(p["line"]), str(p["column"])) for p in json.loads(out)["problems"]]
    assert shown == listed and len(listed) >= 4
    # Reading order: by file, line and column (Cedar reports them in its own order).
    as_numbers = [(f, int(line), int(col)) for f, line, col in listed]
    assert as_numbers == sorted(as_numbers)
