"""`stepguard validate`: every problem with file, line, column and the offending line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli.main import main
from sidecar.core.problems import check_directory
from tests.conftest import POLICIES


def validate(
    capsys: pytest.CaptureFixture[str], directory: Path, *flags: str
) -> tuple[int, str, str]:
    code = main(["validate", str(directory), *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def caret_column(block: str) -> int:
    """The 1-based column the caret line of a rendered problem points at."""
    source, caret = block.splitlines()[-2:]
    bar = source.index("| ")
    return caret.index("^") - bar - 2 + 1


def test_valid_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, POLICIES)
    assert code == 0 and err == ""
    assert out.startswith("ok: 12 policies, ")
    code, out, _ = validate(capsys, POLICIES, "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["policies"] == 12 and data["problems"] == []


def test_every_problem_is_located_to_the_column(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (copy / "read_only.cedar").write_text(
        (copy / "read_only.cedar").read_text()
        + "\npermit (principal, action, resource)\nwhen { context.nope && principal.shared };\n"
    )
    (copy / "typo.cedar").write_text(
        '@id("typo")\nforbid (principal, action, resource)\nwhen { 1 + };\n'
    )
    (copy / "scope.cedar").write_text("permit (principa, action, resource);\n")
    code, out, err = validate(capsys, copy)
    assert code == 4 and out == ""
    text = "\n".join(_blocks(err))
    line = len((copy / "read_only.cedar").read_text().splitlines())
    # A context attribute missing for every action is one problem, not ten.
    assert text.count("attribute `nope` in context") == 1
    assert "(and for 9 more action(s))" in text
    nope = _block(err, "attribute `nope`")
    assert nope.startswith(f"read_only.cedar:{line}: validation error: ")
    assert f"--> read_only.cedar:{line}:16" in nope
    assert caret_column(nope) == 16  # under `nope`
    shared = _block(err, "attribute `shared` on entity type `ServiceAccount`")
    assert f"--> read_only.cedar:{line}:34" in shared and caret_column(shared) == 34
    typo = _block(err, "unexpected token `}`")
    assert typo.startswith("typo.cedar:3: syntax error: unexpected token `}`")
    assert "--> typo.cedar:3:12" in typo and "3 | when { 1 + };" in typo
    assert caret_column(typo) == 12
    scope = _block(err, "principa")
    assert "--> scope.cedar:1:9" in scope
    assert err.rstrip().endswith(f"{copy}: 4 problem(s); the sidecar refuses these policies")


def _blocks(err: str) -> list[str]:
    out: list[str] = []
    for line in err.splitlines():
        if line and not line.startswith((" ", "|")) and not line[0].isdigit():
            out.append(line)
        elif out:
            out[-1] += "\n" + line
    return out


def _block(err: str, needle: str) -> str:
    (found,) = [b for b in _blocks(err) if needle in b.splitlines()[0]]
    return found


def test_schema_errors_point_into_the_schema(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = copy / "schema.cedarschema"
    schema.write_text(schema.read_text().replace("kind: String,", "kind: Strin,"))
    code, _, err = validate(capsys, copy)
    assert code == 4  # invalid policies, as in every command
    line = next(
        n for n, text in enumerate(schema.read_text().splitlines(), 1) if "kind: Strin," in text
    )
    block = _block(err, "failed to resolve type: Strin")
    assert f"--> schema.cedarschema:{line}:9" in block and caret_column(block) == 9


def test_directory_level_problems_keep_the_loaders_message(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (copy / "dup.cedar").write_text(
        '@id("step-runners-read-and-notify")\npermit (principal, action, resource);\n'
    )
    code, _, err = validate(capsys, copy)
    assert code == 4  # invalid policies, as in every command
    assert (
        "read_only.cedar:3: duplicate policy id 'step-runners-read-and-notify' "
        "(also at dup.cedar:1)" in err
    )
    (copy / "dup.cedar").unlink()
    entities = copy / "entities.json"
    entities.write_text(entities.read_text().replace('"sensitivity": "low"', '"sensitivity": 1'))
    code, _, err = validate(capsys, copy)
    assert code == 4 and "entities.json: entities do not conform to the schema" in err
    (copy / "schema.cedarschema").unlink()
    code, _, err = validate(capsys, copy)
    assert code == 4 and "expected exactly one schema" in err
    code, _, err = validate(capsys, copy / "missing")
    assert code == 4 and "does not exist" in err


def test_json_output(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (copy / "typo.cedar").write_text("permit (principal, action, resource) when { ;\n")
    code, out, _ = validate(capsys, copy, "--json")
    data = json.loads(out)
    assert code == 4 and data["ok"] is False
    (problem,) = data["problems"]
    assert problem["file"] == "typo.cedar" and problem["line"] == 1 and problem["column"] == 45
    assert problem["message"].startswith("syntax error: unexpected token")
    assert problem["snippet"] == "permit (principal, action, resource) when { ;"


def test_check_directory_returns_the_bundle_when_valid() -> None:
    bundle, problems = check_directory(POLICIES)
    assert bundle is not None and problems == []


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_ok_and_broken(tmp_path: Path) -> None:
    ok = run("validate", str(POLICIES))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")
    broken = tmp_path / "policies"
    shutil.copytree(POLICIES, broken)
    target = broken / "read_only.cedar"
    target.write_text(
        target.read_text() + "\n\npermit (principal, action, resource) when { context.nope };\n"
    )
    out = run("validate", str(broken))
    assert out.returncode == 4
    line = len(target.read_text().splitlines())
    assert f"read_only.cedar:{line}: validation error" in out.stderr
    (broken / "read_only.cedar").write_text("permit (principal, action, resource) when { ;\n")
    out = run("validate", str(broken))
    assert out.returncode == 4 and "read_only.cedar:1: syntax error" in out.stderr
    (broken / "schema.cedarschema").unlink()
    out = run("validate", str(broken))
    assert out.returncode == 4 and "expected exactly one schema" in out.stderr
