"""Plan cases in YAML suites (`plans:`): run by `stepguard test` through AuthorizePlan's path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sidecar.authoring.testing.runner import Runner
from tests.helpers import POLICIES

SUITE = """
name: plans
policies: {policies}
include: {fixtures}
plans:
  - name: run
    context: onboarding
    steps:
      - {{id: ok, principal: provisioner, action: create_account, resource: jira, expect: ALLOW}}
      - {{id: wrong, principal: provisioner, action: grant_access, resource: okta,
          expect: {{verdict: ALLOW}}}}
      - {{id: words, principal: provisioner, action: grant_access, resource: okta,
          expect: {{verdict: DEPENDS, words: "before 19:00 UTC"}}}}
      - {{id: open, principal: provisioner, action: grant_access, resource: okta,
          expect: {{verdict: DEPENDS, policies: [identity-change-requires-owned-workflow]}}}}
      - {{id: badfield, principal: provisioner, action: grant_access, resource: okta,
          unknown: [approvl], expect: DEPENDS}}
      - {{id: badverdict, principal: provisioner, action: grant_access, resource: okta,
          expect: MAYBE}}
"""


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "plans.yaml"
    path.write_text(SUITE.format(policies=POLICIES, fixtures=POLICIES / "tests" / "fixtures.yaml"))
    return path


def test_plan_steps_pass_fail_and_error_as_cases_do(tmp_path: Path) -> None:
    report = Runner().run([_suite(tmp_path)])
    (suite,) = report.suites
    by_name = {c.name: c for c in suite.cases}
    assert by_name["run [ok]"].status == "pass"
    wrong = by_name["run [wrong]"]
    assert wrong.status == "fail"
    assert wrong.problems[0].startswith("verdict is DEPENDS (allowed if the step runs")
    assert by_name["run [words]"].status == "fail"
    assert "does not say 'before 19:00 UTC'" in by_name["run [words]"].problems[0]
    open_ = by_name["run [open]"]
    assert open_.status == "fail"
    assert "missing identity-change-requires-owned-workflow" in open_.problems[0]
    assert "unexpected sensitive-target-after-hours-requires-break-glass" in open_.problems[0]
    bad = by_name["run [badfield]"]
    assert bad.status == "error"
    assert "steps[0].unknown[0]: context.approvl is not declared" in bad.problems[0]
    assert by_name["run [badverdict]"].status == "error"
    assert "'MAYBE' is not ALLOW, DENY or DEPENDS" in by_name["run [badverdict]"].problems[0]


def test_the_example_suite_plans_pass_under_stepguard_test() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "test", str(POLICIES / "tests" / "workflows.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = Runner().run([POLICIES / "tests" / "workflows.yaml"])
    plans = [c for c in report.suites[0].cases if c.request.startswith("plan: ")]
    names = {c.name.split(" [")[0] for c in plans}
    assert names == {
        "joiner run: every step allowed whatever the time",
        "leaver run: the provisioner cannot revoke, certainly",
        "weekend-prone run: critical targets depend on the time",
    }
    assert all(c.status == "pass" for c in plans)
