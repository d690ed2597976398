"""`stepguard plan` run as a real command on real plan files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import POLICIES, joiner_plan, leaver_plan


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "plan", "--policies", str(POLICIES), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_yaml_leaver_plan_names_the_denied_step_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "leaver.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(leaver_plan()))))
    out = _run(str(path))
    assert out.returncode == 2, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["step", "verdict", "action", "resource", "unknown"]
    assert lines[2].split()[:2] == ["revoke-okta", "DENY"]
    assert (
        "revoke-okta: denied whatever the unknowns are: no policy permits this step" in out.stdout
    )
    assert "never replaces the decisions" in out.stdout


def test_json_output_of_a_weekend_dependent_plan_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "joiner.json"
    path.write_text(json.dumps(joiner_plan(target="okta")))
    out = _run(str(path), "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert [s["verdict"] for s in answer["steps"]] == ["DEPENDS", "DEPENDS"]
    step = answer["steps"][0]
    assert "before 18:00 UTC" in step["reason"]
    assert step["residuals"][0]["id"] == "sensitive-target-after-hours-requires-break-glass"
    assert 'unknown("now")' in step["residuals"][0]["cedar"]
    assert step["satisfied_policies"] == ["provisioning-workloads-change-identities"]
    assert answer["policy_errors"] == "deny"


def test_a_bad_unknown_field_exits_1_naming_it(tmp_path: Path) -> None:
    plan = joiner_plan()
    plan["steps"][1]["unknown"] = ["approval.tikcet"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(plan))))
    out = _run(str(path))
    assert out.returncode == 1
    assert "steps[1].unknown[0]" in out.stderr
    assert "not declared by the schema" in out.stderr


def test_invalid_policies_exit_4(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text("permit(principal, action, resource) when { nope };")
    (tmp_path / "schema.cedarschema").write_text("entity User;")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(joiner_plan()))
    out = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "plan", "--policies", str(tmp_path), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 4


def test_the_worked_example_of_policies_readme_says_what_the_command_prints() -> None:
    """policies/README.md, "Pre-flight: a worked example": the table is the command's."""
    root = POLICIES.parent
    out = _run(str(root / "examples" / "plans" / "leaver-run.yaml"))
    assert out.returncode == 2, out.stderr
    readme = (POLICIES / "README.md").read_text()
    for line in out.stdout.splitlines()[:8]:
        assert line in readme or not line.strip(), line
    assert [line.split()[1] for line in out.stdout.splitlines()[1:4]] == [
        "ALLOW",
        "DENY",
        "DEPENDS",
    ]
