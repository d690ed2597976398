"""`stepguard test`: suites, output formats, exit codes and coverage, on real directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli.exitcodes import EXIT_COVERAGE, EXIT_EMPTY, EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.cli.main import main
from sidecar.core.bundle import load_bundle
from tests.conftest import POLICIES, ROOT, shared_dir

PROVISIONER = 'Workload::"spiffe://example.org/ns/identity/sa/provisioner"'
APPROVED = """
      requester: {type: User, id: maria}
      approval: {approver: {type: User, id: ines}, approved_at: "2026-11-24T16:00:00Z"}
      attributes: {workflow: {__entity: {type: Workflow, id: onboarding}}}
"""


def stepguard(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the real command line in-process: exit code, stdout, stderr."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def suite(tmp: Path, body: str, name: str = "suite.yaml", policies: Path = POLICIES) -> Path:
    path = tmp / name
    path.write_text(
        f"policies: {policies}\n"
        'now: "2026-11-25T10:00:00Z"\n'
        "fixtures:\n"
        "  principals:\n"
        f"    provisioner: '{PROVISIONER}'\n"
        "  contexts:\n"
        "    approved:" + APPROVED + body
    )
    return path


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def broken_copy(tmp: Path) -> Path:
    """The example policies and their suites, with a validation error in read_only.cedar."""
    copy = tmp / "policies"
    shutil.copytree(POLICIES, copy)
    target = copy / "read_only.cedar"
    target.write_text(
        target.read_text() + "\npermit (principal, action, resource)\nwhen { context.nope };\n"
    )
    return copy


# --- the bundled suites ---------------------------------------------------------


def test_bundled_suites_pass_and_cover_every_policy_and_clause(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = stepguard(
        capsys,
        "test",
        str(POLICIES),
        "--coverage",
        "--coverage-min",
        "100",
        "--clause-coverage-min",
        "100",
    )
    assert code == EXIT_OK, out
    assert "FAIL" not in out
    assert "policies 12/12 (100.0%), clause outcomes 20/20 (100.0%)" in out
    for pid in load_bundle(POLICIES).policies:
        lines = [line for line in out.splitlines() if f" {pid}  " in line]
        assert lines and lines[0].lstrip().startswith("ok "), (pid, lines)
    coverage = out[out.index("coverage of") :]
    assert "NEVER" not in coverage and " never " not in coverage and "\n    -- " not in coverage


def test_bundled_suites_in_json_name_every_case_and_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = stepguard(capsys, "test", str(POLICIES), "--format", "json", "--coverage")
    report = json.loads(out)
    assert code == EXIT_OK and report["ok"] is True
    assert report["summary"]["failed"] == report["summary"]["errors"] == 0
    assert report["summary"]["passed"] == report["summary"]["cases"] >= 100
    files = {Path(s["file"]).name for s in report["suites"]}
    assert "fixtures.yaml" not in files  # fixtures only: not a suite
    assert {"identity_changes.yaml", "business_hours.yaml", "workflows.yaml"} <= files
    (coverage,) = report["coverage"]
    assert coverage["policy_coverage"] == {"covered": 12, "total": 12, "percent": 100.0}
    determined = {
        p["id"] for policies in coverage["files"].values() for p in policies if p["determining"]
    }
    assert determined == set(load_bundle(POLICIES).policies)


# --- failures and their report --------------------------------------------------


def test_failing_case_shows_expected_actual_policies_and_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suite(
        tmp_path,
        """
cases:
  - name: approved grant passes
    principal: provisioner
    action: grant_access
    resource: 'TargetSystem::"jira"'
    context: approved
    expect: {decision: ALLOW, policies: [provisioning-workloads-change-identities]}
  - name: self approval, wrongly expected to pass
    principal: provisioner
    action: grant_access
    resource: 'TargetSystem::"jira"'
    context: [approved, {requester: {type: User, id: ines}}]
    expect: {decision: ALLOW, policies: [provisioning-workloads-change-identities]}
""",
    )
    code, out, _ = stepguard(capsys, "test", str(path))
    assert code == EXIT_FAILED
    assert f"FAIL  {path}  1 passed, 1 failed" in out
    line = _line_of(path, "- name: self approval")
    assert f"  FAIL  self approval, wrongly expected to pass  (suite.yaml:{line})" in out
    assert (
        f'request:  {PROVISIONER} Action::"grant_access" TargetSystem::"jira" '
        "at 2026-11-25T10:00:00Z"
    ) in out
    assert "expected: ALLOW by provisioning-workloads-change-identities" in out
    assert (
        "actual:   DENY by identity-change-requires-independent-approval "
        "(identity_changes.cedar:18)"
    ) in out
    assert "- decision is DENY, expected ALLOW" in out
    assert (
        "- determining policies differ: missing provisioning-workloads-change-identities; "
        "unexpected identity-change-requires-independent-approval"
    ) in out
    assert "approved grant passes" not in out  # passing cases only with -v
    code, verbose, _ = stepguard(capsys, "test", str(path), "-v")
    assert code == EXIT_FAILED and "  pass  approved grant passes" in verbose
    assert out.rstrip().endswith(
        "FAILED: 1 suites, 2 cases: 1 passed, 1 failed (policy errors: deny)"
    )


def test_unexpected_errors_and_obligations_fail_a_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suite(
        tmp_path,
        """
cases:
  - name: a workload as approver errors, and the suite did not say so
    principal: provisioner
    action: grant_access
    resource: 'TargetSystem::"jira"'
    context: [approved, {approval: {approver: {type: Workload, id: w}}}]
    expect: DENY
  - name: the same, expected
    principal: provisioner
    action: grant_access
    resource: 'TargetSystem::"jira"'
    context: [approved, {approval: {approver: {type: Workload, id: w}}}]
    expect: {decision: DENY, policies: [], errors: ["is not valid for"]}
  - name: an expected error that does not happen
    principal: provisioner
    action: grant_access
    resource: 'TargetSystem::"jira"'
    context: approved
    expect: {decision: ALLOW, errors: ["boom"]}
  - name: wrong ttl
    principal: provisioner
    action: issue_credential
    resource: 'TargetSystem::"slack"'
    context: approved
    expect: {decision: ALLOW, obligations: {max_credential_ttl: PT15M}}
""",
    )
    code, out, _ = stepguard(capsys, "test", str(path))
    assert code == EXIT_FAILED
    assert "2 failed" not in out and "1 passed, 3 failed" in out
    assert "- unexpected error(s): " in out and "is not valid for" in out
    assert "- expected error(s) not reported: boom" in out
    assert "- max_credential_ttl is 3600s, expected 900s" in out
    assert "actual:   ALLOW by issue-credential-standard-sensitivity" in out


def test_malformed_cases_are_errors_with_lines_and_the_rest_still_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suite(
        tmp_path,
        """
cases:
  - name: a typo in a key
    principal: provisioner
    action: grant_access
    resource: 'TargetSystem::"jira"'
    expected: ALLOW
  - name: an unknown fixture
    principal: nobody
    action: grant_access
    resource: 'TargetSystem::"jira"'
    expect: ALLOW
  - name: an action the schema does not declare
    principal: provisioner
    action: fly
    resource: 'TargetSystem::"jira"'
    expect: DENY
  - name: still runs
    principal: provisioner
    action: grant_access
    resource: 'TargetSystem::"jira"'
    context: approved
    expect: ALLOW
""",
    )
    code, out, _ = stepguard(capsys, "test", str(path))
    assert code == EXIT_FAILED
    assert "1 passed, 3 errors" in out
    assert f"ERROR  a typo in a key  (suite.yaml:{_line_of(path, '- name: a typo')})" in out
    assert "cases[0]: unknown key(s) expected (allowed: " in out
    assert "'nobody' is neither a fixture in fixtures.principals (known: provisioner)" in out
    assert "INVALID_ARGUMENT" in out and 'Action::"fly" is not an action' in out


def test_unreadable_suite_is_reported_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - name: x\n    expect: [unclosed\n")
    code, out, _ = stepguard(capsys, "test", str(tmp_path))
    assert code == EXIT_FAILED
    assert f"ERROR {bad}: line 4, column 1:" in out
    assert "1 suites could not run" in out


def test_invalid_policies_exit_4_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = broken_copy(tmp_path)
    code, out, _ = stepguard(capsys, "test", str(copy))
    assert code == EXIT_INVALID
    line = len((copy / "read_only.cedar").read_text().splitlines())  # at `context.nope`
    assert f"INVALID  {copy / 'tests' / 'credentials.yaml'}" in out
    assert f"{copy / 'read_only.cedar'}:{line}: validation error" in out
    code, _, _ = stepguard(capsys, "test", str(copy), "--format", "json")
    assert code == EXIT_INVALID


def test_a_subprocess_sees_the_same_exit_codes(tmp_path: Path) -> None:
    copy = broken_copy(tmp_path)
    run = [sys.executable, "-m", "sidecar.cli", "test"]
    ok = subprocess.run([*run, str(POLICIES)], capture_output=True, text=True, check=False)
    assert ok.returncode == EXIT_OK, ok.stdout + ok.stderr
    bad = subprocess.run([*run, str(copy)], capture_output=True, text=True, check=False)
    assert bad.returncode == EXIT_INVALID and "INVALID" in bad.stdout


def test_fail_on_empty_and_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = stepguard(capsys, "test", str(POLICIES), "--filter", "no-such-case")
    assert code == EXIT_OK and "NO TESTS: 0 suites, 0 cases" in out
    code, _, _ = stepguard(
        capsys, "test", str(POLICIES), "--filter", "no-such-case", "--fail-on-empty"
    )
    assert code == EXIT_EMPTY
    code, _, _ = stepguard(capsys, "test", str(tmp_path), "--fail-on-empty")
    assert code == EXIT_EMPTY
    code, out, _ = stepguard(capsys, "test", str(POLICIES), "--filter", "HOLIDAY", "-v")
    assert code == EXIT_OK
    assert "pass  out of hours: a holiday (a Friday)" in out
    assert out.rstrip().endswith("OK: 1 suites, 1 cases: 1 passed (policy errors: deny)")
    code, _, err = stepguard(capsys, "test", str(POLICIES), "--filter", "(")
    assert code == 1 and "--filter: not a regular expression" in err


def test_coverage_minimums_fail_with_exit_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suite(
        tmp_path,
        """
cases:
  - name: one grant
    principal: provisioner
    action: grant_access
    resource: 'TargetSystem::"jira"'
    context: approved
    expect: ALLOW
""",
    )
    code, out, _ = stepguard(capsys, "test", str(path), "--coverage")
    assert code == EXIT_OK
    assert "policies 1/12 (8.3%)" in out
    assert (
        "ok    8  permit provisioning-workloads-change-identities  determining in 1 case(s)" in out
    )
    assert "--   14  forbid shared-accounts-never-act  NEVER DETERMINING" in out
    # The clause was evaluated (the forbid applies) and was false: true is what is missing.
    assert "false 1  never true" in out
    assert stepguard(capsys, "test", str(path), "--coverage-min", "8")[0] == EXIT_OK
    assert stepguard(capsys, "test", str(path), "--coverage-min", "9")[0] == EXIT_COVERAGE
    assert stepguard(capsys, "test", str(path), "--clause-coverage-min", "100")[0] == EXIT_COVERAGE


def test_junit_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = suite(
        tmp_path,
        """
cases:
  - name: good
    principal: provisioner
    action: notify
    resource: 'TargetSystem::"slack"'
    expect: ALLOW
  - name: bad <&> name
    principal: provisioner
    action: notify
    resource: 'TargetSystem::"slack"'
    expect: DENY
""",
    )
    report = tmp_path / "report.xml"
    code, _, err = stepguard(capsys, "test", str(path), "--format", "junit", "-o", str(report))
    assert code == EXIT_FAILED and "1 passed, 1 failed" in err
    root = ET.fromstring(report.read_text())
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    (node,) = root.findall("testsuite")
    cases = {c.get("name"): c for c in node.findall("testcase")}
    assert set(cases) == {"good", "bad <&> name"}
    assert cases["good"].find("failure") is None
    failure = cases["bad <&> name"].find("failure")
    assert failure is not None and failure.get("message") == "decision is ALLOW, expected DENY"
    assert "actual:   ALLOW by step-runners-read-and-notify" in (failure.text or "")


def test_matrix_expands_every_combination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(
        f"""
policies: {POLICIES}
now: "2026-11-25T10:00:00Z"
fixtures:
  principals:
    shared: 'Workload::"spiffe://example.org/ns/identity/sa/default"'
    robot: 'ServiceAccount::"svc-idm-robot"'
  resources:
    slack: 'TargetSystem::"slack"'
    okta: 'TargetSystem::"okta"'
matrix:
  - name: shared never act
    principals: [shared, robot]
    actions: [notify, lookup_identity]
    resources: [slack, okta]
    contexts: [{{}}, {{workflow_id: w}}]
    expect: {{decision: DENY, policies: [shared-accounts-never-act]}}
"""
    )
    code, out, _ = stepguard(capsys, "test", str(path), "--format", "json")
    report = json.loads(out)
    assert code == EXIT_OK, out
    names = [c["name"] for c in report["suites"][0]["cases"]]
    assert len(names) == len(set(names)) == 2 * 2 * 2 * 2
    assert 'shared never act [robot lookup_identity okta {"workflow_id":"w"}]' in names


def test_fixture_entities_join_the_store_for_the_suite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suite(
        tmp_path,
        """
  entities:
    - uid: {type: TargetSystem, id: new-wiki}
      attrs: {sensitivity: low}
      parents: []
cases:
  - name: the fixture entity decides the ttl
    principal: provisioner
    action: issue_credential
    resource: 'TargetSystem::"new-wiki"'
    context: approved
    expect: {decision: ALLOW, obligations: {max_credential_ttl: PT1H}}
""",
    )
    assert stepguard(capsys, "test", str(path))[0] == EXIT_OK
    clash = suite(
        tmp_path,
        """
  entities:
    - uid: {type: TargetSystem, id: okta}
      attrs: {sensitivity: low}
      parents: []
cases:
  - {name: x, principal: provisioner, action: notify, resource: 'TargetSystem::"okta"',
     expect: ALLOW}
""",
        name="clash.yaml",
    )
    code, out, _ = stepguard(capsys, "test", str(clash))
    assert code == EXIT_FAILED
    assert "fixtures.entities do not load with" in out and 'TargetSystem::"okta"' in out


def test_include_shares_fixtures_and_a_missing_include_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "shared.yaml").write_text(
        f"fixtures:\n  principals:\n    p: '{PROVISIONER}'\n"
        "  resources:\n    slack: 'TargetSystem::\"slack\"'\n"
    )
    good = tmp_path / "good.yaml"
    good.write_text(
        f"policies: {POLICIES}\ninclude: shared.yaml\n"
        "cases:\n  - {name: n, principal: p, action: notify, resource: slack, expect: ALLOW}\n"
    )
    assert stepguard(capsys, "test", str(good))[0] == EXIT_OK
    good.write_text(good.read_text().replace("shared.yaml", "missing.yaml"))
    code, out, _ = stepguard(capsys, "test", str(good))
    assert code == EXIT_FAILED and "include: cannot read missing.yaml" in out


def test_policies_flag_runs_the_suites_against_a_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = tmp_path / "candidate"
    shutil.copytree(POLICIES, candidate, ignore=shutil.ignore_patterns("tests"))
    (candidate / "workload_identity.cedar").unlink()
    code, out, _ = stepguard(capsys, "test", str(POLICIES / "tests"), "--policies", str(candidate))
    assert code == EXIT_FAILED
    assert "FAIL  " in out and "workload_identity.yaml" in out
    assert "missing shared-accounts-never-act" in out


# --- Cedar's JSON tests ---------------------------------------------------------


def test_cedar_corpus_reports_7890_passed() -> None:
    corpus = shared_dir("conformance", "cedar")
    out = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "test", str(corpus)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == EXIT_OK, out.stdout[-2000:] + out.stderr
    assert out.stdout.rstrip().endswith(
        "OK: 999 suites, 7,890 cases: 7,890 passed, 999/999 validation checks agree"
        " (policy errors: deny)"
    )


def _cedar_test(tmp: Path, corpus: Path, name: str) -> tuple[Path, dict[str, Any]]:
    source = corpus / "tests" / name
    data = json.loads(source.read_text())
    for key in ("policies", "schema", "entities"):
        target = tmp / data[key]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / data[key], target)
    path = tmp / "tests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, data


def test_cedar_test_with_a_wrong_expectation_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = shared_dir("conformance", "cedar")
    path, data = _cedar_test(tmp_path, corpus, "multi/1.json")
    first = data["requests"][0]
    first["decision"] = "deny" if first["decision"] == "allow" else "allow"
    data["shouldValidate"] = not data["shouldValidate"]
    path.write_text(json.dumps(data))
    code, out, _ = stepguard(capsys, "test", str(tmp_path))
    assert code == EXIT_FAILED
    assert f"FAIL  {first['description']}" in out
    assert "strict validation passes, but shouldValidate is false" in out or (
        "strict validation fails, but shouldValidate is true" in out
    )
    assert f"{len(data['requests']) - 1} passed, 1 failed" in out


def test_a_cedar_test_file_nested_too_deep_is_reported_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """json.loads recurses: a deep enough file raised RecursionError out of `stepguard test`."""
    corpus = shared_dir("conformance", "cedar")
    path, data = _cedar_test(tmp_path, corpus, "multi/1.json")
    data["requests"][0]["context"] = "DEEP"
    deep = '{"a": ' * 5000 + "{}" + "}" * 5000  # json.dumps itself would recurse
    path.write_text(json.dumps(data).replace('"DEEP"', deep))
    code, out, err = stepguard(capsys, "test", str(tmp_path))
    assert code == EXIT_FAILED
    assert "not a readable Cedar test: line 1, column" in out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("shape", "said"),
    [
        ("[1, 2]", "not a readable Cedar test: the top level must be an object"),
        ('{"policies": 1, "requests": 2}', "not a readable Cedar test"),
    ],
)
def test_a_cedar_test_file_of_the_wrong_shape_is_reported_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str, said: str
) -> None:
    """A JSON list at the top level raised TypeError out of `stepguard test FILE.json`."""
    path = tmp_path / "t.json"
    path.write_text(shape)
    code, out, err = stepguard(capsys, "test", str(path))
    assert code == EXIT_FAILED
    assert said in out + err
    assert "Traceback" not in out + err


def test_requests_that_are_not_objects_are_malformed_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request that is a number raised AttributeError; now a malformed case, the rest run."""
    corpus = shared_dir("conformance", "cedar")
    path, data = _cedar_test(tmp_path, corpus, "multi/1.json")
    data["requests"] = [7, *data["requests"]]
    path.write_text(json.dumps(data))
    code, out, err = stepguard(capsys, "test", str(tmp_path))
    assert code == EXIT_FAILED
    assert "malformed request" in out
    assert "Traceback" not in out + err
    assert "4 passed, 1 errors" in out, out
