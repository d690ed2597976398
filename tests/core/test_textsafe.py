"""Human-readable output escapes control and invisible characters in data (issue 25 point 3).

The trail escapes ids correctly, but a table that prints them raw lets a
caller forge rows (`\\n`), rewrite a row on screen (`\\r`, ANSI escapes, C1
CSI) or reverse what a reader sees (bidi overrides). Each output of each
command gets data holding every kind, from real files: a trail written by the
real server, suites and policies on disk, and the real CLI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.client import StepguardClient
from sidecar.core.textsafe import escape, escape_lines, is_safe, json_text
from tests.helpers import NOTIFIER, POLICIES, PROVISIONER, notify_request, running_sidecar

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]
# One of each kind the guarantee names, with the visible form the output must show.
KINDS = {
    "\n": "\\n",
    "\r": "\\r",
    "\x1b": "\\x1b",  # ESC, as in \x1b[2K (erase line) or \x1b[31m
    "\x9b": "\\x9b",  # C1 CSI: an escape sequence in one byte
    "\x85": "\\x85",  # C1 NEL: a newline to some terminals
    "\x7f": "\\x7f",
    "\u202e": "\\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2067": "\\u2067",  # RIGHT-TO-LEFT ISOLATE
    "\u2028": "\\u2028",  # LINE SEPARATOR
    "\u200b": "\\u200b",  # ZERO WIDTH SPACE
    "\x00": "\\x00",
}
EVIL = "EVIL[" + "".join(KINDS) + "]"
EVIL_SHOWN = "EVIL[" + "".join(KINDS.values()) + "]"
UNSAFE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}
# Unassigned in Unicode 14, format characters in the blocks they sit in (U+2065; the
# Egyptian hieroglyph format controls Unicode 15 adds): escaped ahead of time.
RESERVED_FORMAT = {0x2065, *range(0x13439, 0x13440)}


def stepguard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPGUARD, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        encoding="utf-8",
        errors="surrogateescape",
    )


# The same inside an entity reference, which is shown as Cedar writes it (`EntityUid`'s
# text: Cedar's string escapes, so it can be pasted back as a reference).
EVIL_CEDAR = (
    "EVIL["
    + "".join(
        {"\n": "\\n", "\r": "\\r", "\x00": "\\0"}.get(c) or f"\\u{{{ord(c):x}}}" for c in KINDS
    )
    + "]"
)


def assert_no_raw_controls(text: str, shown: str = EVIL_SHOWN) -> None:
    """Nothing but newlines of the formatter's own, and the data shown escaped."""
    for raw in KINDS:
        if raw != "\n":
            assert raw not in text, f"raw {raw!r} in output"
    assert shown in text


# --------------------------------------------------------------------------- the helper


def test_every_control_and_format_character_is_escaped() -> None:
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        unsafe = unicodedata.category(ch) in UNSAFE_CATEGORIES or cp in RESERVED_FORMAT
        if unsafe:
            assert escape(ch) != ch and is_safe(escape(ch)), hex(cp)
            assert escape(ch).startswith("\\")
        elif ch != "\\":
            assert escape(ch) == ch, hex(cp)


@given(st.text())
def test_escaped_text_is_one_safe_line(text: str) -> None:
    shown = escape(text)
    assert is_safe(shown)
    assert "\n" not in shown and "\r" not in shown
    if is_safe(text):
        assert shown == text


@given(st.text())
def test_escape_lines_keeps_only_newlines(text: str) -> None:
    shown = escape_lines(text)
    assert shown.count("\n") == text.count("\n")
    assert all(is_safe(line) for line in shown.split("\n"))


@given(
    st.recursive(
        st.none() | st.text() | st.integers(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_json_text_is_safe_and_means_the_same(value: object) -> None:
    for indent in (None, 2):
        out = json_text(json.dumps(value, ensure_ascii=False, indent=indent))
        assert all(is_safe(line) for line in out.split("\n"))
        assert json.loads(out) == value


# --------------------------------------------------------------------------- audit query / verify


def _trail_with_forged_row(tmp: Path) -> Path:
    """The issue's example, through the real server: a real ALLOW whose run_id holds a row."""
    forged_row = (
        'r-1\n2026-12-06T02:11:09.120331Z  ALLOW  Workload::"'
        + PROVISIONER["id"]
        + '"  grant_access  TargetSystem::"okta"'
    )
    with running_sidecar(tmp) as running, StepguardClient(running.tcp) as client:
        request = notify_request()
        request["resource"] = {"type": "TargetSystem", "id": "okta"}
        request["context"] = {"workflow_id": EVIL, "run_id": forged_row, "step_id": "notify"}
        decision = client.authorize(request)
        assert decision.allowed, decision.reason
        trail = running.audit
    return trail


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trail_with_forged_row(tmp_path_factory.mktemp("trail"))


def test_audit_query_prints_one_line_per_record(trail: Path) -> None:
    out = stepguard(
        "audit", "query", str(trail), "--resource", 'TargetSystem::"okta"', "--decision", "ALLOW"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout  # the header and the one real decision
    assert lines[1].split()[1:3] == ["ALLOW", f'Workload::"{NOTIFIER["id"]}"']
    assert not any(line.startswith("2026-12-06") for line in lines)
    assert "r-1\\n2026-12-06T02:11:09.120331Z  ALLOW" in lines[1]
    assert_no_raw_controls(out.stdout)


def test_audit_query_json_is_exact_and_safe(trail: Path) -> None:
    out = stepguard("audit", "query", str(trail), "--format", "json")
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    assert is_safe(line)
    assert json.loads(line)["workflow_id"] == EVIL


def test_audit_verify_escapes_the_trail_name(tmp_path: Path) -> None:
    directory = tmp_path / "d\x1b[2K\u202e\r"
    directory.mkdir()
    trail = _trail_with_forged_row(directory)
    out = stepguard("audit", "verify", str(trail))
    assert out.returncode == 0, out.stderr
    assert "d\\x1b[2K\\u202e\\r" in out.stdout
    assert all(is_safe(line) for line in out.stdout.splitlines())
    refused = stepguard("audit", "query", "--verify", str(trail), "--key-file", "/no/such/key")
    assert refused.returncode == 1
    assert all(is_safe(line) for line in refused.stderr.splitlines())


# --------------------------------------------------------------------------- replay


def test_replay_escapes_recorded_values(trail: Path, tmp_path: Path) -> None:
    events = [json.loads(line) for line in trail.read_text().split("\n") if line]
    [event] = [e for e in events if e.get("kind") == "decision"]
    event["principal"]["id"] = NOTIFIER["id"] + EVIL  # as a forged or unknown principal
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text(json.dumps(event) + "\n")
    deny_all = tmp_path / "deny-all"
    shutil.copytree(POLICIES, deny_all)
    (deny_all / "zz_deny_all.cedar").write_text(
        '@id("deny-all")\nforbid (principal, action, resource);\n'
    )
    out = stepguard("replay", str(recorded), "--policies", str(deny_all))
    assert out.returncode == 0, out.stderr
    assert "ALLOW -> DENY" in out.stdout
    assert_no_raw_controls(out.stdout, EVIL_CEDAR)  # the principal: an entity reference
    assert not any(line.startswith("EVIL") for line in out.stdout.splitlines())


# --------------------------------------------------------------------------- test, check, validate


def _evil_policies(tmp: Path) -> Path:
    """The example bundle plus a permit whose @id holds every kind (Cedar escapes)."""
    directory = tmp / "policies"
    shutil.copytree(POLICIES, directory)
    cedar_id = "EVIL[" + "".join(f"\\u{{{ord(c):x}}}" for c in KINDS) + "]"
    (directory / "zz_evil.cedar").write_text(
        f'@id("{cedar_id}")\n'
        f'permit (principal == Workload::"{NOTIFIER["id"]}", action, resource);\n'
    )
    return directory


def test_check_and_explain_escape_policy_ids(tmp_path: Path) -> None:
    policies = _evil_policies(tmp_path)
    args = ["check", "--policies", str(policies), "--now", "2026-11-25T10:00:00Z"]
    out = stepguard(
        *args,
        "--principal",
        f'Workload::"{NOTIFIER["id"]}"',
        "--action",
        'Action::"notify"',
        "--resource",
        'TargetSystem::"slack"',
        "--explain",
    )
    assert out.returncode == 0, out.stderr
    assert_no_raw_controls(out.stdout)
    assert not any(line.startswith(("EVIL", "]")) for line in out.stdout.splitlines())


def test_test_report_escapes_case_names(tmp_path: Path) -> None:
    suite = tmp_path / "evil.test.yaml"
    case = {
        "name": EVIL + "\nPASS  everything is fine",
        "principal": {"type": "Workload", "id": NOTIFIER["id"] + EVIL},
        "action": "notify",
        "resource": {"type": "TargetSystem", "id": "slack"},
        "context": {"workflow_id": "w", "run_id": "r", "step_id": "s"},
        "now": "2026-11-25T10:00:00Z",
        "expect": {"decision": "ALLOW"},
    }
    suite.write_text(json.dumps({"policies": str(POLICIES), "cases": [case]}))
    out = stepguard("test", str(suite))
    assert out.returncode == 3, out.stdout + out.stderr  # the case fails: printed in full
    assert_no_raw_controls(out.stdout)
    assert not any(line.startswith("PASS  everything") for line in out.stdout.splitlines())


def test_junit_report_stays_well_formed_xml(tmp_path: Path) -> None:
    """XML 1.0 cannot carry ESC, NUL or most C0 characters: escaped, the report parses."""
    import xml.etree.ElementTree as ET

    suite = tmp_path / "evil.test.yaml"
    case = {
        "name": EVIL,
        "principal": {"type": "Workload", "id": NOTIFIER["id"]},
        "action": "notify",
        "resource": {"type": "TargetSystem", "id": "slack"},
        "context": {"workflow_id": "w", "run_id": "r", "step_id": "s"},
        "now": "2026-11-25T10:00:00Z",
        "expect": {"decision": "DENY"},
    }
    suite.write_text(json.dumps({"policies": str(POLICIES), "cases": [case]}))
    out = stepguard("test", str(suite), "--format", "junit")
    assert out.returncode == 3, out.stderr
    root = ET.fromstring(out.stdout.split("\n", 1)[1])  # after the XML declaration
    [testcase] = root.iter("testcase")
    # Newlines and CRs XML carries exactly (as &#10; and &#13;); the rest, escaped.
    shown = {c: c if c in "\n\r" else v for c, v in KINDS.items()}
    assert testcase.get("name") == "EVIL[" + "".join(shown.values()) + "]"


def test_validate_escapes_the_snippet_and_keeps_the_caret_on_the_fault(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    # One line of a file: no newline, and no CR (Cedar counts it as a line break).
    hidden = "".join(c for c in KINDS if c not in "\n\r\x00")
    (directory / "zz_bad.cedar").write_text(
        f'permit (principal, action, resource) when {{ "{hidden}" == "x" && ! }};\n'
    )
    out = stepguard("validate", str(directory))
    assert out.returncode == 4
    lines = out.stderr.split("\n")
    assert all(is_safe(line) for line in lines)
    [snippet] = [line for line in lines if line.startswith("1 | ")]
    assert '"' + "".join(v for c, v in KINDS.items() if c not in "\n\r\x00") + '"' in snippet
    caret = next(line for line in lines if line.rstrip().endswith("^"))
    assert snippet[len(caret.rstrip()) - 1] in "!}"


def test_fmt_escapes_file_names(tmp_path: Path) -> None:
    name = "EVIL[" + "".join(c for c in KINDS if c not in "\x00") + "].cedar"
    (tmp_path / name).write_text(
        'permit(principal,action,resource) when { "\u202e\x1b[2K" == "x" };\n'
    )
    out = stepguard("fmt", "--check", str(tmp_path))
    assert out.returncode == 3, out.stderr
    assert out.stdout.count("\n") == 1  # one file, one line
    assert all(is_safe(line) for line in out.stdout.splitlines())
    assert "\\u202e" in out.stdout
    diff = stepguard("fmt", "--check", "--diff", str(tmp_path))
    assert all(is_safe(line) for line in diff.stdout.split("\n"))
    assert '"\\u202e\\x1b[2K"' in diff.stdout
