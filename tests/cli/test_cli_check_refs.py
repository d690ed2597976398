"""`stepguard check` with bare ids, and "did you mean" for what it does not know (issue 22.3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.cli.main import main
from tests.conftest import POLICIES

NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"
NOW = "2026-11-25T10:00:00Z"


def check(
    capsys: pytest.CaptureFixture[str], *flags: str, policies: Path = POLICIES
) -> tuple[int, str, str]:
    code = main(["check", "--policies", str(policies), "--now", NOW, *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bare_action_principal_and_resource_resolve(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(
        capsys, "--principal", NOTIFIER, "--action", "notify", "--resource", "slack", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["decision"] == "ALLOW"


def test_unquoted_type_and_id(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(
        capsys,
        "--principal",
        f"Workload::{NOTIFIER}",
        "--action",
        "Action::notify",
        "--resource",
        "TargetSystem::slack",
    )
    assert code == 0, err
    assert "decision: ALLOW" in out


def test_same_answer_as_the_full_references(capsys: pytest.CaptureFixture[str]) -> None:
    bare = check(
        capsys, "--principal", NOTIFIER, "--action", "grant_access", "--resource", "okta", "--json"
    )
    full = check(
        capsys,
        "--principal",
        f'Workload::"{NOTIFIER}"',
        "--action",
        'Action::"grant_access"',
        "--resource",
        'TargetSystem::"okta"',
        "--json",
    )
    assert bare[0] == full[0] == 2

    def answer(out: str) -> tuple[str, set[str], str]:
        doc = json.loads(out)  # Cedar lists the determining policies in no fixed order
        ids = {p["id"] for p in doc["determining_policies"]}
        return doc["decision"], ids, doc["policy_revision"]

    assert answer(bare[1]) == answer(full[1])


def test_mistyped_bare_action_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(
        capsys, "--principal", NOTIFIER, "--action", "notfy", "--resource", "slack"
    )
    assert code == 1 and out == ""
    assert (
        "--action: 'notfy' is not an action declared by the schema; "
        'did you mean Action::"notify"?' in err
    )


def test_mistyped_full_action_suggests_through_validation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = check(
        capsys, "--principal", NOTIFIER, "--action", 'Action::"notfy"', "--resource", "slack"
    )
    assert code == 1
    assert 'did you mean Action::"notify"?' in err


def test_mistyped_entity_type_suggests(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = check(
        capsys, "--principal", NOTIFIER, "--action", "notify", "--resource", 'TargetSystm::"slack"'
    )
    assert code == 1
    assert "'TargetSystm' is not an entity type of the schema; did you mean TargetSystem?" in err
    # The same through a request file: request validation names the closest type.
    request = tmp_path / "r.json"
    request.write_text(
        json.dumps(
            {
                "principal": {"type": "Wrkload", "id": NOTIFIER},
                "action": {"type": "Action", "id": "notify"},
                "resource": {"type": "TargetSystem", "id": "slack"},
            }
        )
    )
    code, _, err = check(capsys, "--request", str(request))
    assert code == 1
    assert (
        "principal.type: 'Wrkload' is not an entity type of the schema; did you mean Workload?"
        in err
    )


def test_mistyped_bare_resource_is_not_taken_for_a_new_entity(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = check(
        capsys, "--principal", NOTIFIER, "--action", "notify", "--resource", "slak"
    )
    assert code == 1
    assert 'did you mean TargetSystem::"slack"?' in err
    assert 'give its type: TargetSystem::"slak"' in err


def test_bare_principal_of_a_type_that_cannot_be_a_principal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # User::"maria" is stored, but the schema allows only workloads as principals.
    code, _, err = check(
        capsys, "--principal", "maria", "--action", "notify", "--resource", "slack"
    )
    assert code == 1
    assert "no principal entity 'maria'" in err
    assert 'ServiceAccount::"maria" or Workload::"maria"' in err


def test_ambiguous_bare_id_lists_the_candidates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "schema.cedarschema").write_text(
        "entity Person;\nentity Repo;\nentity Channel;\n"
        "action notify appliesTo {\n"
        "  principal: [Person], resource: [Repo, Channel], context: {now: datetime}\n};\n"
    )
    (tmp_path / "all.cedar").write_text("permit (principal, action, resource);\n")
    (tmp_path / "entities.json").write_text(
        json.dumps(
            [
                {"uid": {"type": t, "id": i}, "attrs": {}, "parents": []}
                for t, i in (("Person", "ann"), ("Repo", "general"), ("Channel", "general"))
            ]
        )
    )
    code, _, err = check(
        capsys,
        "--principal",
        "ann",
        "--action",
        "notify",
        "--resource",
        "general",
        policies=tmp_path,
    )
    assert code == 1
    assert '--resource: \'general\' is ambiguous: Channel::"general", Repo::"general"' in err
    code, _out, err = check(
        capsys,
        "--principal",
        "ann",
        "--action",
        "notify",
        "--resource",
        'Repo::"general"',
        policies=tmp_path,
    )
    assert code == 0, err


def test_unknown_context_key_is_refused_with_the_closest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before, `requestr` was dropped silently and the request asked without a requester.
    code, out, err = check(
        capsys,
        "--principal",
        NOTIFIER,
        "--action",
        "notify",
        "--resource",
        "slack",
        "--context",
        '{"requestr": {"type": "User", "id": "maria"}}',
    )
    assert code == 1 and out == ""
    assert "context: unknown key 'requestr'; did you mean requester?" in err


def test_undeclared_context_attribute_gets_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = check(
        capsys,
        "--principal",
        NOTIFIER,
        "--action",
        "notify",
        "--resource",
        "slack",
        "--context",
        '{"attributes": {"workflw": {"__entity": {"type": "Workflow", "id": "onboarding"}}}}',
    )
    assert code == 2  # Cedar refuses the request: a DENY, as on the server
    assert "context attribute 'workflw' is not declared by the schema; did you mean workflow" in err


def test_closest_keeps_only_the_near_best() -> None:
    from sidecar.core.suggest import closest

    ids = [NOTIFIER, "spiffe://example.org/ns/etl/sa/worker", "spiffe://example.org/ns/x/sa/y"]
    assert closest("spiffe://example.org/ns/comms/sa/notifer", ids) == [NOTIFIER]
    assert closest("zzz", ids) == []
    assert closest("a" * 500, ["a" * 500]) == []  # long input: no comparison at all
