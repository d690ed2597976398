"""`stepguard check` on real directories, in a subprocess (`serve` and `validate` beside it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import POLICIES, grant_request, notify_request

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPGUARD, *args], capture_output=True, text=True, input=stdin, timeout=60, check=False
    )


def test_check_allow_from_flags() -> None:
    out = run(
        "check",
        "--policies",
        str(POLICIES),
        "--principal",
        'Workload::"spiffe://example.org/ns/comms/sa/notifier"',
        "--action",
        'Action::"notify"',
        "--resource",
        'TargetSystem::"slack"',
        "--now",
        "2026-11-25T10:00:00Z",
    )
    assert out.returncode == 0, out.stderr
    assert "decision: ALLOW" in out.stdout
    assert "step-runners-read-and-notify (read_only.cedar:" in out.stdout


def test_check_deny_from_file_as_json(tmp_path: Path) -> None:
    req = tmp_path / "req.json"
    req.write_text(json.dumps(grant_request(approver="maria")))
    out = run(
        "check",
        "--policies",
        str(POLICIES),
        "--request",
        str(req),
        "--json",
        "--now",
        "2026-11-25T10:00:00Z",
    )
    assert out.returncode == 2, out.stderr
    result = json.loads(out.stdout)
    assert result["decision"] == "DENY"
    assert "identity-change-requires-independent-approval" in {
        p["id"] for p in result["determining_policies"]
    }


def test_check_obligation_and_stdin() -> None:
    req = grant_request()
    req["action"] = {"type": "Action", "id": "issue_credential"}
    req["resource"] = {"type": "TargetSystem", "id": "github"}
    out = run(
        "check",
        "--policies",
        str(POLICIES),
        "--request",
        "-",
        "--now",
        "2026-11-25T10:00:00Z",
        stdin=json.dumps(req),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "obligation: max_credential_ttl = 900s" in out.stdout


def test_check_errors_exit_1() -> None:
    bad_flag = run(
        "check",
        "--policies",
        str(POLICIES),
        "--principal",
        "nonsense",
        "--action",
        'Action::"notify"',
        "--resource",
        'TargetSystem::"slack"',
    )
    assert bad_flag.returncode == 1 and "--principal" in bad_flag.stderr
    bad_field = run(
        "check",
        "--policies",
        str(POLICIES),
        "--request",
        "-",
        stdin=json.dumps({**notify_request(), "action": {"type": "Action", "id": "fly"}}),
    )
    assert (
        bad_field.returncode == 1 and 'action: Action::"fly" is not an action' in bad_field.stderr
    )
    missing = run("check", "--policies", str(POLICIES))
    assert (
        missing.returncode == 1 and "missing: --principal, --action, --resource" in missing.stderr
    )


def test_check_and_serve_exit_4_for_invalid_policies(tmp_path: Path) -> None:
    broken = tmp_path / "policies"
    shutil.copytree(POLICIES, broken)
    (broken / "read_only.cedar").write_text("permit (principal, action, resource) when { ;\n")
    check = run(
        "check", "--policies", str(broken), "--request", "-", stdin=json.dumps(notify_request())
    )
    assert check.returncode == 4 and "read_only.cedar" in check.stderr
    serve = run(
        "serve", "--policies", str(broken), "--listen", "127.0.0.1:0", "--metrics-listen", "off"
    )
    assert serve.returncode == 4 and "read_only.cedar" in serve.stderr
