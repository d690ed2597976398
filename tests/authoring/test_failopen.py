"""`validate` warns about policies that can error at run time and fail open (issue 16, point 1).

A `forbid` (or the `unless` of a permit) that reads an attribute of an entity
that may be absent from the store errors at run time, and Cedar skips it.
The warnings carry file:line:column like errors; `--strict` makes them errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.cli.exitcodes import EXIT_INVALID, EXIT_OK
from sidecar.cli.main import main
from tests.conftest import POLICIES
from tests.core.test_policy_errors import ENTITIES, SCHEMA

THE_ISSUES_FORBID = """\
@id("ci-may-deploy-and-restart")
permit (principal == Workload::"ci", action, resource);

// The issue's case: a target the store lacks makes this error.
@id("no-deploys-to-critical-targets")
forbid (principal, action == Action::"deploy", resource)
when { resource.sensitivity == "critical" };
"""


def _dir(tmp_path: Path, policies: str, schema: str = SCHEMA) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "schema.cedarschema").write_text(schema)
    (directory / "release.cedar").write_text(policies)
    (directory / "entities.json").write_text(json.dumps(ENTITIES))
    return directory


def _validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["validate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_forbid_reading_an_absent_entity_warns_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _dir(tmp_path, THE_ISSUES_FORBID)
    code, out, err = _validate(capsys, str(directory))
    assert code == EXIT_OK and out.startswith("ok: 2 policies")
    # Line 7, column 17: the `sensitivity` of `when { resource.sensitivity`.
    assert err.startswith(
        "release.cedar:7: warning: `resource.sensitivity` in the `when` of forbid "
        '"no-deploys-to-critical-targets" errors at run time when the resource may not be '
        "in the entity store"
    )
    assert "--> release.cedar:7:17" in err
    assert "Guard it: `resource has sensitivity && ...`" in err
    assert err.rstrip().endswith("1 warning(s); they can error at run time (--strict refuses them)")

    code, out, err = _validate(capsys, str(directory), "--strict")
    assert code == EXIT_INVALID and out == ""
    assert "--strict: the policies are refused" in err

    code, out, _ = _validate(capsys, str(directory), "--json", "--strict")
    data = json.loads(out)
    assert code == EXIT_INVALID and data["ok"] is False and data["problems"] == []
    (warning,) = data["warnings"]
    assert (warning["file"], warning["line"], warning["column"], warning["level"]) == (
        "release.cedar",
        7,
        17,
        "warning",
    )
    assert warning["snippet"] == 'when { resource.sensitivity == "critical" };'


@pytest.mark.parametrize(
    "condition",
    [
        'when { resource has sensitivity && resource.sensitivity == "critical" }',
        'when { !(resource has sensitivity) || resource.sensitivity == "critical" }',
        'when { if resource has sensitivity then resource.sensitivity == "x" else true }',
        # A stored entity literal is present whatever the request says.
        'when { TargetSystem::"web".sensitivity == "low" }',
        'when { resource in TargetSystem::"web" }',  # `in` never errors
    ],
)
def test_guarded_reads_do_not_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], condition: str
) -> None:
    directory = _dir(tmp_path, f"forbid (principal, action, resource)\n{condition};\n")
    code, _, err = _validate(capsys, str(directory), "--strict")
    assert (code, err) == (EXIT_OK, "")


def test_what_is_reported_and_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies = (
        "permit (principal, action, resource)\n"  # line 1: a permit's `when` fails closed
        'when { resource.sensitivity == "low" };\n'
        "permit (principal, action, resource)\n"  # line 3: its `unless` is reported
        'unless { resource.sensitivity == "critical" };\n'
        "forbid (principal, action, resource)\n"  # line 5: an entity literal the store lacks
        'when { Freeze::"global".active && Freeze::"global".active };\n'
        "forbid (principal, action, resource)\n"  # line 7: the second read is covered
        'unless { resource.sensitivity == "low" || resource.sensitivity == "medium" };\n'
    )
    code, out, _ = _validate(capsys, str(_dir(tmp_path, policies)), "--json")
    data = json.loads(out)
    assert code == EXIT_OK
    found = [(w["line"], w["column"]) for w in data["warnings"]]
    assert found == [(4, 19), (6, 25), (8, 19)]
    messages = [w["message"] for w in data["warnings"]]
    assert "`unless` of this permit" in messages[0] and "the permit is skipped" in messages[0]
    assert 'Freeze::"global" is not in the entity store' in messages[1]
    assert "`unless` of this forbid" in messages[2]


def test_an_entity_typed_attribute_is_followed_through_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = """
namespace Release {
  entity Workload;
  entity Change = { frozen: Bool, owner?: Workload };
  type Ctx = { now: datetime, change?: Change };
  entity TargetSystem = { current: Change };
  action restart appliesTo { principal: [Workload], resource: [TargetSystem], context: Ctx };
}
"""
    policies = (
        "forbid (principal, action, resource)\n"
        "when { context has change && context.change.frozen };\n"
        "forbid (principal, action, resource)\n"
        "when { resource has current && resource.current.frozen };\n"
    )
    directory = _dir(tmp_path, policies, schema)
    (directory / "entities.json").write_text("[]")
    code = main(["validate", str(directory), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert [(w["line"], w["column"]) for w in data["warnings"]] == [(2, 45), (4, 49)]
    assert "context.change is a Release::Change" in data["warnings"][0]["message"]
    assert "resource.current is a Release::Change" in data["warnings"][1]["message"]


def test_an_optional_attribute_without_has_is_already_an_error_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = SCHEMA.replace("entity Freeze = { active: Bool }", "entity Freeze = { active?: Bool }")
    directory = _dir(
        tmp_path,
        'forbid (principal, action, resource)\nwhen { Freeze::"global".active };\n',
        schema,
    )
    code, _, err = _validate(capsys, str(directory))
    assert code == EXIT_INVALID
    assert "release.cedar:2:" in err and "optional attribute `active`" in err


def test_the_example_policies_have_no_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _validate(capsys, str(POLICIES), "--strict")
    assert (code, err) == (EXIT_OK, "") and out.startswith("ok: ")


def test_test_coverage_warns_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _dir(tmp_path, THE_ISSUES_FORBID)
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"policies: {directory}\n"
        'now: "2026-11-25T10:00:00Z"\n'
        "cases:\n"
        "  - name: ci deploys to web\n"
        "    principal: 'Workload::\"ci\"'\n"
        "    action: deploy\n"
        "    resource: 'TargetSystem::\"web\"'\n"
        "    expect: ALLOW\n"
    )
    code = main(["test", str(suite), "--coverage"])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert f"{directory / 'release.cedar'}:7: warning: `resource.sensitivity`" in out
    assert "--> " in out and "release.cedar:7:17" in out
    code = main(["test", str(suite), "--coverage", "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert [(w["line"], w["column"]) for w in report["warnings"]] == [(7, 17)]
    code = main(["test", str(suite)])  # without coverage: no analysis, no warning
    assert "warning" not in capsys.readouterr().out
