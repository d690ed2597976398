"""The lifecycle declaration and the `@revoke_within` obligation through the real CLI:
`validate` (text and JSON), `check` (text and `--json`) and `test` (expectations)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import POLICIES, grant_request

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]
DAY_S = 24 * 3600.0


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPGUARD, *args], capture_output=True, text=True, input=stdin, timeout=60, check=False
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def test_validate_shows_the_declaration() -> None:
    out = run("validate", str(POLICIES), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["notes"] == [] and "lifecycle.yaml" in data["files"]
    declared = data["lifecycle"]
    assert declared["creates"]['Action::"grant_access"'] == "entitlement"
    assert declared["removes"]['Action::"disable_credential"'] == "credential"
    assert {
        "create": 'Action::"issue_credential"',
        "closed_by": 'Action::"disable_credential"',
        "kind": "credential",
        "key": ["identity", "target", "credential_id"],
        "closed_by_expiry": True,
    } in declared["pairs"]
    assert declared["leaver_workflows"] == ["leaver", "legacy-offboarding"]
    text = run("validate", str(POLICIES))
    assert text.returncode == 0 and "note:" not in text.stdout + text.stderr


def test_without_a_declaration_validate_says_so_and_passes(copy: Path) -> None:
    (copy / "lifecycle.yaml").unlink()
    out = run("validate", str(copy), "--strict")
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith("ok: 12 policies")
    assert "note: no lifecycle.yaml: the bundle does not say which steps create or remove" in (
        out.stdout
    )
    data = json.loads(run("validate", str(copy), "--json").stdout)
    assert data["ok"] is True and data["lifecycle"] is None
    assert data["notes"] and data["notes"][0].startswith("no lifecycle.yaml")


def test_validate_lists_every_problem_of_a_bad_declaration(copy: Path) -> None:
    text = (copy / "lifecycle.yaml").read_text()
    text = text.replace("  delete_account: account\n", "  delete_account: account\n  notify: x\n")
    text = text.replace("closed_by: revoke_access", "closed_by: disable_credential")
    (copy / "lifecycle.yaml").write_text(text)
    lines = text.splitlines()
    notify = lines.index("  notify: x") + 1
    pair = lines.index("    closed_by: disable_credential") + 1

    out = run("validate", str(copy))
    assert out.returncode == 4 and out.stdout == ""
    assert f"--> lifecycle.yaml:{notify}:11" in out.stderr
    assert f"lifecycle.yaml:{notify}: removes.notify: unknown kind 'x'" in out.stderr
    assert f"{notify} |   notify: x\n" in out.stderr
    assert "policies: 2 problem(s); the sidecar refuses these policies" in out.stderr

    data = json.loads(run("validate", str(copy), "--json").stdout)
    assert data["ok"] is False
    found = [(p["file"], p["line"], p["column"]) for p in data["problems"]]
    assert found == [
        ("lifecycle.yaml", notify, 11),
        ("lifecycle.yaml", pair, 16),  # an entitlement closed by a credential's removal
    ]
    # the same mismatch for grant_access and change_access is one problem
    assert "creates an entitlement but" in data["problems"][1]["message"]
    assert data["problems"][1]["message"].endswith("(and for 1 more action(s))")


def check(*extra: str, request: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return run(
        "check",
        "--policies",
        str(POLICIES),
        "--request",
        "-",
        "--now",
        "2026-11-25T10:00:00Z",
        *extra,
        stdin=json.dumps(request),
    )


def test_check_shows_the_obligation() -> None:
    out = check("--json", request=grant_request())
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["decision"] == "ALLOW"
    assert data["obligations"] == {"revoke_within_s": DAY_S}
    text = check(request=grant_request())
    assert "obligation: revoke_within = 86400s" in text.stdout
    assert "max_credential_ttl" not in text.stdout

    credential = grant_request()
    credential["action"] = {"type": "Action", "id": "issue_credential"}
    data = json.loads(check("--json", request=credential).stdout)
    assert data["obligations"] == {"max_credential_ttl_s": 3600.0}  # jira: medium

    denied = json.loads(check("--json", request=grant_request(approver=None)).stdout)
    assert denied["decision"] == "DENY" and denied["obligations"] == {}


SUITE = """
policies: {policies}
include: {fixtures}
now: "2026-11-25T10:00:00Z"
cases:
  - name: a grant must be revoked within an hour
    principal: provisioner
    action: grant_access
    resource: jira
    context: onboarding
    expect:
      decision: ALLOW
      obligations: {{revoke_within: PT1H}}
  - name: a grant must be revoked within a day
    principal: provisioner
    action: grant_access
    resource: jira
    context: onboarding
    expect:
      decision: ALLOW
      obligations: {{revoke_within: 86400, max_credential_ttl: null}}
"""


def test_the_test_runner_checks_the_obligation(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(policies=POLICIES, fixtures=POLICIES / "tests" / "fixtures.yaml"))
    out = run("test", str(suite))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "expected: ALLOW, revoke_within 3600s" in out.stdout
    permit = "provisioning-workloads-change-identities (identity_changes.cedar:8)"
    assert f"actual:   ALLOW by {permit}, revoke_within 86400s" in out.stdout
    assert "- revoke_within is 86400s, expected 3600s" in out.stdout
    report = json.loads(run("test", str(suite), "--format", "json").stdout)
    cases = report["suites"][0]["cases"]
    assert [c["status"] for c in cases] == ["fail", "pass"]
    assert cases[0]["expected"]["obligations"] == {"revoke_within": 3600.0}
    assert cases[0]["actual"]["obligations"] == {"revoke_within_s": DAY_S}


def test_an_unknown_obligation_is_a_suite_error(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        SUITE.format(policies=POLICIES, fixtures=POLICIES / "tests" / "fixtures.yaml").replace(
            "revoke_within: PT1H", "revoke_within_s: PT1H"
        )
    )
    out = run("test", str(suite))
    assert out.returncode == 3
    assert "unknown key(s) revoke_within_s (allowed: max_credential_ttl, revoke_within)" in (
        out.stdout
    )
