"""`stepguard fmt` and `fmt --check`: Cedar's canonical format, comments kept, atomic rewrites."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import cedarpy
import pytest

from sidecar.cli.exitcodes import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.cli.main import main
from tests.conftest import POLICIES

MESSY = """// who may read
permit(principal,action==Action::"lookup_identity",resource) // trailing
when{ // inside
  principal has shared&&!principal.shared
};
"""


def fmt(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["fmt", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_example_policies_are_formatted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = fmt(capsys, "--check", str(POLICIES))
    assert code == EXIT_OK and out == ""
    assert "7 file(s): 0 unformatted, 7 would be left unchanged, 0 not parsed" in err


def test_check_reports_and_changes_nothing_then_fmt_rewrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    messy = policies / "extra" / "messy.cedar"
    messy.parent.mkdir()
    messy.write_text(MESSY)
    messy.chmod(0o640)
    code, out, _ = fmt(capsys, "--check", "--diff", str(policies))
    assert code == EXIT_FAILED
    assert f"would reformat {messy}" in out
    assert f"+++ {messy} (formatted)" in out and "+permit (" in out
    assert messy.read_text() == MESSY  # --check changes nothing

    code, out, _ = fmt(capsys, str(policies))
    assert code == EXIT_OK and out.strip() == f"reformatted {messy}"
    text = messy.read_text()
    assert text == cedarpy.format_policies(MESSY)
    for comment in ("// who may read", "// trailing", "// inside"):
        assert comment in text
    assert stat.S_IMODE(messy.stat().st_mode) == 0o640
    assert not list(messy.parent.glob(".*.tmp"))  # the temporary file was renamed away
    assert fmt(capsys, "--check", str(policies))[0] == EXIT_OK


def test_a_file_that_does_not_parse_is_located_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.cedar"
    source = (
        "permit (principal, action, resource);\n\n"
        "forbid (principal, action, resource)\nwhen { 1 + };\n"
    )
    bad.write_text(source)
    good = tmp_path / "good.cedar"
    good.write_text(MESSY)
    code, out, err = fmt(capsys, str(tmp_path))
    assert code == EXIT_INVALID
    assert f"{bad}:4:12: syntax error: unexpected token `}}`" in err
    assert bad.read_text() == source
    assert f"reformatted {good}" in out  # the other files are still formatted
    code, _, err = fmt(capsys, str(tmp_path / "missing"))
    assert code == 1 and "no such file or directory" in err
