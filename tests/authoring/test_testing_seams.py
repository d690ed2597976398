"""The seams of sidecar/authoring/testing/: readers, runner and report, without the command.

The `stepguard test` command (sidecar/cli/test.py) prints, draws progress and
picks the exit code; everything below it returns data. These tests use each
part on its own: the runner on real suites with nothing printed, the report
on a Report built by hand, the Cedar JSON reader on a test file written here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path

import pytest

from sidecar.authoring.testing import (
    ERROR,
    FAIL,
    PASS,
    CaseResult,
    Expect,
    Report,
    Runner,
    SuiteResult,
    cedarjson,
    discover,
    render_json,
    render_junit,
    render_text,
    summary_line,
)
from sidecar.authoring.testing.suites import SuiteError
from sidecar.core.bundlefiles import fingerprint
from sidecar.core.model import (
    Decision,
    EvalError,
    Obligations,
    PolicyErrors,
    PolicyRef,
    Result,
    result_json,
)
from tests.conftest import POLICIES, ROOT

TESTING = ROOT / "sidecar" / "authoring" / "testing"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# --- no circle: the runner knows nothing of the command line ---------------------


@pytest.mark.parametrize("module", sorted(p.name for p in TESTING.glob("*.py")))
def test_the_test_runner_imports_neither_the_command_line_nor_the_server(module: str) -> None:
    bad = sorted(
        name
        for name in _imported(TESTING / module)
        if name.startswith(("sidecar.cli", "sidecar.serving"))
    )
    assert not bad, f"sidecar/authoring/testing/{module} imports {bad}"


def test_running_and_reporting_loads_no_command_line_or_server_module() -> None:
    """At run time too (lazy imports included), seen in a fresh interpreter: a run with
    coverage, rendered in every format (the JSON report once imported the CLI for
    `result_json`)."""
    code = f"""
import json, sys
from pathlib import Path
from sidecar.authoring import testing
report = testing.Runner(coverage=True).run([Path({str(POLICIES / "tests")!r})])
assert report.cases and report.passed == report.cases
for text in (testing.render_text(report, coverage=True), testing.render_json(report),
             testing.render_junit(report)):
    assert text
names = [m for m in sys.modules if m.startswith(("sidecar.cli", "sidecar.serving"))]
print(json.dumps(sorted(names)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = set(json.loads(out.stdout))
    # authoring/diagnose.py (whose located problems the runner reports) still holds the
    # `validate` command and its exit codes; the command line's own modules stay out.
    assert loaded <= {"sidecar.cli", "sidecar.cli.exitcodes"}, out.stdout + out.stderr


# --- the runner: data in, data out, nothing printed -----------------------------


def test_the_runner_returns_a_report_and_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    runner = Runner(coverage=True)
    report = runner.run([POLICIES / "tests"])
    assert capfd.readouterr() == ("", "")
    assert report.cases > 0 and report.passed == report.cases
    assert report.failed == report.errored == 0
    assert all(s.ok and s.kind == "yaml" for s in report.suites)
    (coverage,) = report.coverage
    assert coverage.label == str(POLICIES) and coverage.policy_percent == 100.0
    assert runner.directories() == [POLICIES.resolve()]


def test_run_files_calls_back_once_per_suite_found() -> None:
    found = list(discover([POLICIES / "tests"]))
    ticks: list[int] = []
    report = Runner().run_files(found, on_suite=lambda: ticks.append(1))
    assert len(ticks) == len(found) == len(report.suites)
    # fixtures.yaml holds fixtures, not cases: not a suite.
    assert all(path.name != "fixtures.yaml" for path, _ in found)


# --- Cedar's JSON tests, read and run -------------------------------------------


def _cedar_repo(tmp: Path, requests: list[object], should_validate: bool = True) -> Path:
    """A Cedar integration-test layout: paths in the test are relative to the repository root."""
    (tmp / "data").mkdir()
    (tmp / "data" / "schema.cedarschema").write_text(
        "entity User; entity Photo;\naction view appliesTo { principal: User, resource: Photo };\n"
    )
    (tmp / "data" / "entities.json").write_text("[]")
    (tmp / "data" / "policies.cedar").write_text(
        'permit (principal == User::"alice", action == Action::"view", resource);\n'
    )
    test = tmp / "tests" / "one.json"
    test.parent.mkdir()
    test.write_text(
        json.dumps(
            {
                "policies": "data/policies.cedar",
                "schema": "data/schema.cedarschema",
                "entities": "data/entities.json",
                "shouldValidate": should_validate,
                "requests": requests,
            }
        )
    )
    return test


def _request(who: str, decision: str, reason: list[str]) -> dict[str, object]:
    return {
        "description": f"{who} views",
        "principal": {"type": "User", "id": who},
        "action": {"type": "Action", "id": "view"},
        "resource": {"type": "Photo", "id": "p.jpg"},
        "context": {},
        "decision": decision,
        "reason": reason,
        "errors": [],
    }


def test_a_cedar_test_is_read_into_cases_and_run(tmp_path: Path) -> None:
    malformed = {"description": "no decision", "principal": {"type": "User", "id": "x"}}
    path = _cedar_repo(
        tmp_path,
        [_request("alice", "allow", ["policy0"]), _request("bob", "deny", []), malformed],
    )
    test = cedarjson.read(path)
    assert test.policies.name == "data/policies.cedar" and test.should_validate
    assert cedarjson.validation_check(test) == (
        "strict validation passes, as expected",
        True,
    )
    bad = cedarjson.case(malformed, 2)
    assert bad.name == "no decision" and bad.problem.startswith("malformed request: ")
    assert cedarjson.case({"decision": "allow"}, 7).name == "request 7"

    report = Runner().run([tmp_path / "tests"])
    (suite,) = report.suites
    assert suite.kind == "cedar" and suite.policies == "data/policies.cedar"
    assert [(c.name, c.status) for c in suite.cases] == [
        ("alice views", PASS),
        ("bob views", PASS),
        ("no decision", ERROR),
    ]
    assert suite.checks == [("strict validation passes, as expected", True)]


def test_an_unreadable_cedar_test_says_why(tmp_path: Path) -> None:
    path = _cedar_repo(tmp_path, [])
    data = json.loads(path.read_text())
    data["schema"] = "data/missing.cedarschema"
    path.write_text(json.dumps(data))
    with pytest.raises(SuiteError, match=r"^not a readable Cedar test: schema: data/missing"):
        cedarjson.read(path)
    (suite,) = Runner().run([path]).suites
    assert suite.error.startswith("not a readable Cedar test: schema: data/missing")


# --- the report: a Report built by hand -----------------------------------------


def _report() -> tuple[Report, Result]:
    denied = Result(
        Decision.DENY,
        (PolicyRef("no-bob", {"reason": "test"}, "p.cedar:3"),),
        (EvalError("flaky", "attribute missing"),),
        Obligations(max_credential_ttl=timedelta(seconds=900)),
        "rev-1",
    )
    allowed = Result(Decision.ALLOW, (PolicyRef("alice", {}, "p.cedar:1"),), (), Obligations(), "r")
    suite = SuiteResult(
        name="photos",
        file="tests/photos.yaml",
        kind="yaml",
        policies="policies",
        revision="rev-1",
        cases=[
            CaseResult("alice views", PASS, 4, (), Expect(Decision.ALLOW), allowed, "a"),
            CaseResult(
                "bob views\x1b[32m",
                FAIL,
                9,
                ("decision is DENY, expected ALLOW",),
                Expect(Decision.ALLOW, policies=frozenset({"bob"})),
                denied,
                'User::"bob" Action::"view" Photo::"p.jpg"',
            ),
        ],
    )
    return Report([suite], [], PolicyErrors.DENY), denied


def test_the_text_report_renders_a_report_built_by_hand() -> None:
    report, _ = _report()
    text = render_text(report)
    assert "FAIL  tests/photos.yaml  1 passed, 1 failed (photos)" in text
    assert "  FAIL  bob views\\x1b[32m  (photos.yaml:9)" in text  # escaped: no colour codes
    assert '        request:  User::"bob" Action::"view" Photo::"p.jpg"' in text
    assert "        expected: ALLOW by bob" in text
    assert "        actual:   DENY by no-bob (p.cedar:3), max_credential_ttl 900s" in text
    assert "        error:    flaky: attribute missing" in text
    assert "        - decision is DENY, expected ALLOW" in text
    assert "\x1b" not in text
    assert text.endswith(summary_line(report))
    assert summary_line(report) == (
        "FAILED: 1 suites, 2 cases: 1 passed, 1 failed (policy errors: deny)"
    )


def test_the_json_report_carries_each_actual_result_as_check_json_does() -> None:
    report, denied = _report()
    doc = json.loads(render_json(report))
    assert doc["ok"] is False
    assert doc["summary"] == {
        "suites": 1,
        "cases": 2,
        "passed": 1,
        "failed": 1,
        "errors": 0,
        "suites_not_run": 0,
    }
    failing = doc["suites"][0]["cases"][1]
    assert failing["status"] == FAIL and failing["line"] == 9
    assert failing["actual"] == result_json(denied)
    assert failing["actual"]["obligations"] == {"max_credential_ttl_s": 900.0}
    assert failing["expected"] == {"decision": "ALLOW", "policies": ["bob"], "errors": []}


def test_the_junit_report_parses_and_counts_the_failure() -> None:
    report, _ = _report()
    root = ET.fromstring(render_junit(report).encode())
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    failure = root.find("./testsuite/testcase[@line='9']/failure")
    assert failure is not None and failure.get("message") == "decision is DENY, expected ALLOW"


# --- the watch's fingerprint lives in the core ----------------------------------


def test_the_fingerprint_test_watch_uses_is_the_core_one(tmp_path: Path) -> None:
    """`test --watch` and hot reload hash a directory the same way, from sidecar/core."""
    from sidecar.cli import test as test_cli
    from sidecar.serving import watch

    assert vars(test_cli)["fingerprint"] is fingerprint is vars(watch)["fingerprint"]
    (tmp_path / "a.cedar").write_text("permit (principal, action, resource);\n")
    before = fingerprint(tmp_path)
    (tmp_path / "a.cedar").write_text("forbid (principal, action, resource);\n")
    assert fingerprint(tmp_path) != before
