"""`stepguard replay`: a real audit trail, recorded by a real server, decided again."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli.exitcodes import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.cli.main import main
from sidecar.client import StepguardClient
from sidecar.core.cedartext import split_policies
from tests.helpers import POLICIES, PROVISIONER, grant_request, notify_request, running_sidecar


def _requests() -> list[dict[str, Any]]:
    credential = grant_request()
    credential["action"] = {"type": "Action", "id": "issue_credential"}
    credential["resource"] = {"type": "TargetSystem", "id": "okta"}
    revoke = notify_request()
    revoke["principal"] = PROVISIONER
    revoke["action"] = {"type": "Action", "id": "revoke_access"}
    secret = notify_request()
    secret["context"]["attributes"] = {"session_token": "hunter2"}  # redacted by name
    return [
        notify_request(),  # ALLOW, read-only permit
        notify_request(),
        grant_request(),  # ALLOW, provisioning permit
        grant_request(approver=None),  # DENY, independent-approval forbid
        credential,  # ALLOW, 15-minute credential
        revoke,  # DENY, no permit
        secret,  # DENY: the schema declares no session_token (Cedar refuses the context)
    ]


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit trail written by a real sidecar: segment header, decisions, shutdown record."""
    tmp = tmp_path_factory.mktemp("trail")
    with running_sidecar(tmp) as running:
        client = StepguardClient(running.tcp)
        try:
            answers = [client.authorize(r) for r in _requests()]
        finally:
            client.close()
        audit = running.audit
    assert [a.allowed for a in answers] == [True, True, True, False, True, False, False]
    kinds = [json.loads(line).get("kind") for line in audit.read_text().splitlines()]
    assert kinds.count("decision") == 7 and "segment" in kinds and "shutdown" in kinds
    return audit


def candidate(tmp: Path) -> Path:
    """Notifications no longer allowed; the independent-approval forbid removed."""
    out = tmp / "candidate"
    shutil.copytree(POLICIES, out, ignore=shutil.ignore_patterns("tests"))
    read_only = out / "read_only.cedar"
    read_only.write_text(
        read_only.read_text().replace(
            'action in Action::"read-only"', 'action == Action::"lookup_identity"'
        )
    )
    identity = out / "identity_changes.cedar"
    kept = [
        s.text
        for s in split_policies(identity.read_text())
        if "identity-change-requires-independent-approval" not in s.text
    ]
    identity.write_text("\n\n".join(kept) + "\n")
    return out


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unchanged_policies_change_nothing(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = replay(capsys, "--policies", str(POLICIES), "--fail-on-change", str(trail))
    assert code == EXIT_OK
    assert "replayed 7 decisions from 1 file(s)" in out
    assert "unchanged: 7" in out and "changed:   0 (allow->deny 0, deny->allow 0)" in out
    assert "skipped:   1 segment records" in out and "skipped:   1 shutdown records" in out
    assert "note: 1 recorded request(s) hold redacted values" in out
    assert out.rstrip().endswith("no decision would change")


def test_changes_are_grouped_by_policy_and_action(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = candidate(tmp_path)
    code, out, _ = replay(capsys, "--policies", str(new), str(trail))
    assert code == EXIT_OK  # reporting changes is not a failure unless asked
    assert "changed:   3 (allow->deny 2, deny->allow 1)" in out and "unchanged: 4" in out
    by_policy = out[out.index("by policy:") : out.index("by action:")]
    rows = [line.split(None, 2) for line in by_policy.splitlines()[2:] if line.strip()]
    assert rows == [
        ["2", "0", "permit step-runners-read-and-notify no longer applies"],
        ["0", "1", "permit provisioning-workloads-change-identities (identity_changes.cedar:1)"],
    ]
    by_action = out[out.index("by action:") : out.index("changes:")]
    rows = [line.split(None, 2) for line in by_action.splitlines()[2:] if line.strip()]
    assert rows == [["2", "0", 'Action::"notify"'], ["0", "1", 'Action::"grant_access"']]
    assert 'ALLOW -> DENY  Workload::"spiffe://example.org/ns/comms/sa/notifier"' in out
    assert "now: denied: no policy permits this request" in out
    assert "now: permitted by provisioning-workloads-change-identities" in out
    code, _, _ = replay(capsys, "--policies", str(new), "--fail-on-change", str(trail))
    assert code == EXIT_FAILED


def test_json_report(trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = replay(
        capsys, "--policies", str(candidate(tmp_path)), "--format", "json", str(trail)
    )
    data = json.loads(out)
    assert code == EXIT_OK
    assert (data["decisions"], data["unchanged"], data["changed"]) == (7, 4, 3)
    assert (data["allow_to_deny"], data["deny_to_allow"]) == (2, 1)
    assert data["skipped"] == {"segment records": 1, "shutdown records": 1}
    assert data["compared_with"] == "recorded" and data["redacted"] == 1
    assert data["by_action"][0] == {
        "action": 'Action::"notify"',
        "allow_to_deny": 2,
        "deny_to_allow": 0,
    }
    grant = next(c for c in data["changes"] if c["direction"] == "deny->allow")
    assert grant["before"] == {
        "decision": "DENY",
        "policies": ["identity-change-requires-independent-approval"],
    }
    assert grant["after"]["decision"] == "ALLOW"
    assert grant["after"]["policies"] == ["provisioning-workloads-change-identities"]
    assert grant["source"].startswith(f"{trail}:") and grant["id"]
    assert len(grant["recorded_revision"]) == 64


def test_torn_lines_gzip_files_and_a_baseline(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torn = tmp_path / "torn.jsonl"
    torn.write_text(trail.read_text() + '{"kind":"decision","principal":{"ty')
    packed = tmp_path / "older.jsonl.gz"
    packed.write_bytes(gzip.compress(trail.read_bytes()))
    new = candidate(tmp_path)
    code, out, _ = replay(
        capsys,
        "--policies",
        str(new),
        "--baseline",
        str(POLICIES),
        "--format",
        "json",
        str(torn),
        str(packed),
    )
    data = json.loads(out)
    assert code == EXIT_OK
    assert data["decisions"] == 14 and data["changed"] == 6
    assert data["skipped"]["unreadable lines (not JSON: a torn write?)"] == 1
    assert data["compared_with"] == str(POLICIES)


def test_a_request_the_candidate_schema_refuses_counts_as_deny(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "no-notify"
    shutil.copytree(POLICIES, new, ignore=shutil.ignore_patterns("tests"))
    schema = new / "schema.cedarschema"
    schema.write_text(
        schema.read_text().replace("action lookup_identity, notify in", "action lookup_identity in")
    )
    code, out, _ = replay(capsys, "--policies", str(new), "--format", "json", str(trail))
    data = json.loads(out)
    assert code == EXIT_OK and data["allow_to_deny"] == 2
    assert data["by_policy"] == [
        {
            "policy": "(request refused by the candidate schema)",
            "allow_to_deny": 2,
            "deny_to_allow": 0,
        }
    ]
    assert data["changes"][0]["after"]["reason"].startswith('action: Action::"notify" is not')


def test_invalid_candidate_and_unreadable_trail(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(POLICIES, broken, ignore=shutil.ignore_patterns("tests"))
    (broken / "read_only.cedar").write_text("permit (principal, action, resource) when { ;\n")
    code, _, err = replay(capsys, "--policies", str(broken), str(trail))
    assert code == EXIT_INVALID and "read_only.cedar:1: syntax error" in err
    code, _, err = replay(capsys, "--policies", str(POLICIES), str(tmp_path / "nope.jsonl"))
    assert code == 1 and "cannot read audit file" in err


def test_a_rotated_trail_is_replayed_whole_from_its_directory_or_its_active_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every segment, oldest first; the report says how many decisions came from where."""
    trail_dir = tmp_path / "trail"
    trail_dir.mkdir()
    with running_sidecar(trail_dir, audit_rotate_bytes=2048) as running:
        client = StepguardClient(running.tcp)
        try:
            for i in range(40):
                request = notify_request()
                request["context"]["run_id"] = f"run-{i}"  # each one decided, none cached
                assert client.authorize(request).allowed
        finally:
            client.close()
        active = running.audit
    segments = sorted(p for p in trail_dir.iterdir() if p.name.startswith("audit.jsonl."))
    segments = [p for p in segments if p.suffix != ".head"]
    assert len(segments) >= 3, "the trail should have rotated several times"
    for target in (trail_dir, active):
        code, out, _ = replay(capsys, "--policies", str(POLICIES), "--format", "json", str(target))
        data = json.loads(out)
        assert code == EXIT_OK
        assert data["decisions"] == 40 and data["unchanged"] == 40
        assert data["files"] == [*map(str, segments), str(active)]
        assert sum(r["decisions"] for r in data["read_from"]) == 40
        assert all(r["decisions"] > 0 for r in data["read_from"][:-1])
    code, out, _ = replay(capsys, "--policies", str(POLICIES), str(trail_dir))
    assert "replayed 40 decisions from" in out
    assert f"decisions from {segments[0]}" in out and f"decisions from {active}" in out
