"""`stepguard evidence` answers from real trails (issue 18, "Answers").

The trails are written by the real sinks (one sidecar's rotated chain, another's
two worker chains) from decision events built by `build_event` and outcome
events built by `build_outcome_event` (tests/evidence/outcome_events.py); the
answers come from the real CLI.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.evidence_trail import Shape, generate
from sidecar.audit.chain import parse_line
from sidecar.cli.evidence import TABLE_LIST_ITEMS
from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.cli.main import main
from tests.evidence.outcome_events import effect
from tests.evidence.scenario import MON, Story
from tests.helpers import POLICIES

NOW = "2026-11-09T09:00:00Z"


def evidence(
    capsys: pytest.CaptureFixture[str], answer: str, paths: list[Path], *flags: str
) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["evidence", answer, *map(str, paths), "--now", NOW, *flags])
    return code, capsys.readouterr().out


def answer_json(
    capsys: pytest.CaptureFixture[str], answer: str, paths: list[Path], *flags: str
) -> dict[str, Any]:
    code, out = evidence(capsys, answer, paths, "--json", *flags)
    assert code == EXIT_OK, out
    data: dict[str, Any] = json.loads(out)
    assert data["verification"]["ok"] is True
    return data


def test_leavers_names_exactly_the_incomplete_leaver(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = answer_json(capsys, "leavers", story_trails, "--policies", str(POLICIES))
    summary = data["summary"]
    assert summary["leavers"] == 2
    assert summary["fully_deprovisioned"] == 1
    assert summary["incomplete"] == ['User::"bob"']
    assert summary["revocation_confidence"] == 0.5
    unfinished = {
        (r["identity"], r["target"], r["finding"]) for r in data["rows"] if r["closed_at"] is None
    }
    assert unfinished == {
        ('User::"bob"', "github", "revocation denied"),
        ('User::"bob"', "jira", "revocation failed (TargetUnavailable)"),
    }


def test_leavers_measure_each_removal_against_its_deadline(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # the default: the grants' @revoke_within("PT24H"), from the leaver event
    data = answer_json(capsys, "leavers", story_trails)
    late = {(r["identity"], r["target"]): r for r in data["rows"] if r["missed_by_s"]}
    alice = late[('User::"alice"', "github")]
    assert alice["finding"] == "revoked late"
    assert alice["missed_by_s"] == 6 * 3600 and alice["missed_by"] == "6h"
    assert alice["deadline_at"] == "2026-11-05T17:00:00Z"
    # bob's github access is still open on Monday 09:00: 3 days 15 hours past Thursday 18:00
    assert late[('User::"bob"', "github")]["missed_by_s"] == (3 * 24 + 15) * 3600
    assert data["summary"]["missed_deadline"] == ['User::"alice"', 'User::"bob"']
    # a deadline per target beats the obligation: github within 2 days, alice is in time
    data = answer_json(capsys, "leavers", story_trails, "--deadline", "github=P2D")
    assert ('User::"alice"', "github") not in {
        (r["identity"], r["target"]) for r in data["rows"] if r["missed_by_s"]
    }
    # and per sensitivity: jira is medium; PT5M makes alice's retried revocation late
    data = answer_json(capsys, "leavers", story_trails, "--deadline", "medium=PT5M", "--all")
    jira = [r for r in data["rows"] if r["identity"] == 'User::"alice"' and r["target"] == "jira"]
    assert [r["missed_by_s"] for r in jira] == [300.0]


def test_every_row_links_to_the_chained_records_it_rests_on(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for answer in ("inventory", "access", "open-grants", "leavers", "exceptions"):
        data = answer_json(capsys, answer, story_trails)
        assert data["rows"], answer
        for row in data["rows"]:
            assert row["evidence"], (answer, row)
            for ref in row["evidence"]:
                where, _, seq = ref.partition("#seq=")
                file, _, line = where.rpartition(":")
                raw = Path(file).read_bytes().splitlines()[int(line) - 1]
                record = parse_line(raw)
                assert record.seq == int(seq), ref
                assert record.kind in ("decision", "outcome"), ref


def test_access_says_who_holds_what_since_when_and_granted_by_whom(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = answer_json(capsys, "access", story_trails, "--identity", "bob")
    held = {(r["target"], r["item"]): r for r in data["rows"]}
    assert set(held) == {("github", "admin"), ("jira", "dev")}
    assert held[("github", "admin")]["since"] == "2026-11-02T09:11:00.000000Z"
    assert held[("github", "admin")]["run"] == "j-bob"
    assert held[("github", "admin")]["approver"] == 'User::"ines"'
    assert held[("github", "admin")]["decision_id"]
    data = answer_json(capsys, "access", story_trails, "--target", "github")
    assert {r["identity"] for r in data["rows"]} == {'User::"bob"', 'User::"carol"'}
    # alice left and every access of hers was removed
    assert answer_json(capsys, "access", story_trails, "--identity", 'User::"alice"')["rows"] == []


def test_open_grants_and_exceptions(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = answer_json(capsys, "open-grants", story_trails)
    assert {(r["identity"], r["target"]) for r in data["rows"]} == {
        ('User::"bob"', "github"),
        ('User::"bob"', "jira"),
        ('User::"carol"', "github"),
    }
    data = answer_json(capsys, "exceptions", story_trails, "--policies", str(POLICIES))
    assert data["summary"] == {
        "break-glass": 1,
        "denied step ran": 1,
        "failed revocation": 2,
        "retry": 1,
    }
    ran = [r for r in data["rows"] if r["category"] == "denied step ran"]
    assert ran[0]["step"] == "notify" and ran[0]["detail"] == "decision_denied"


def test_inventory_names_owners_actions_and_approval(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = answer_json(capsys, "inventory", story_trails, "--policies", str(POLICIES))
    by = {r["workflow"]: r for r in data["rows"]}
    assert set(by) == {"onboarding", "leaver"}
    assert by["onboarding"]["needs_approval"] == "yes"
    assert by["onboarding"]["tickets"] == "BG-7, CHG-1"
    assert by["onboarding"]["requesters"] == 'User::"maria"'
    assert 'Action::"issue_credential"' in by["onboarding"]["actions"]
    assert by["leaver"]["runs"] == 2


def test_a_table_shows_a_long_lists_first_items_and_json_and_csv_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A workflow's tickets grow with its runs (one each): a table row shows the first
    few and how many more, where the whole list made every row pages wide."""
    trail = tmp_path / "trail"
    generate(trail, Shape(3_000, workers=2, population=40), processes=1)
    policies = ("--policies", str(POLICIES))
    data = answer_json(capsys, "inventory", [trail], *policies)
    code, table = evidence(capsys, "inventory", [trail], *policies)
    assert code == EXIT_OK
    code, out = evidence(capsys, "inventory", [trail], *policies, "--csv")
    by_csv = {r["workflow"]: r for r in csv.DictReader(io.StringIO(out))}
    long = 0
    for row in data["rows"]:
        line = next(x for x in table.splitlines() if x.startswith(row["workflow"] + " "))
        assert by_csv[row["workflow"]]["tickets"] == row["tickets"]  # CSV: every one
        tickets = row["tickets"].split(", ")
        if len(tickets) <= TABLE_LIST_ITEMS:
            assert row["tickets"] in line
            continue
        long += 1
        more = len(tickets) - TABLE_LIST_ITEMS
        assert ", ".join(tickets[:TABLE_LIST_ITEMS]) + f", ... and {more:,} more" in line
        assert tickets[TABLE_LIST_ITEMS] not in line
    assert long >= 1  # the trail has a workflow with a long list


def test_table_and_csv_carry_the_verification(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = evidence(capsys, "leavers", story_trails)
    assert code == EXIT_OK
    assert out.splitlines()[0].startswith("verified: 3 chain(s) intact")
    assert "revocation failed (TargetUnavailable)" in out
    code, out = evidence(capsys, "open-grants", story_trails, "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 and {r["verified"] for r in rows} == {"ok"}


def test_a_broken_chain_is_said_in_every_answer(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    segment = story_trails[1] / "audit.w1.jsonl"
    lines = segment.read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if b'"status":"succeeded"' in line)
    lines[at] = lines[at].replace(b'"succeeded"', b'"skipped"')  # an outcome rewritten
    segment.write_bytes(b"".join(lines))
    code, out = evidence(capsys, "leavers", story_trails, "--json")
    assert code == EXIT_FAILED
    data = json.loads(out)
    assert data["verification"]["ok"] is False
    assert "CHAIN BROKEN" in data["verification"]["summary"]
    assert [c["exit"] for c in data["verification"]["chains"] if not c["ok"]] == [3]
    code, out = evidence(capsys, "open-grants", story_trails)
    assert code == EXIT_FAILED and out.startswith("CHAIN BROKEN")
    code, out = evidence(capsys, "access", story_trails, "--csv")
    assert code == EXIT_FAILED
    assert {r["verified"] for r in csv.DictReader(io.StringIO(out))} == {"BROKEN"}


def test_bad_input_is_an_error_that_names_it(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["evidence", "leavers", str(story_trails[0]), "--deadline", "high=24h"])
    assert code == EXIT_ERROR
    assert "--deadline 'high=24h'" in capsys.readouterr().err
    code = main(["evidence", "leavers", str(tmp_path / "nothing")])
    assert code == EXIT_ERROR
    broken = tmp_path / "policies"
    broken.mkdir()
    (broken / "bad.cedar").write_text("permit(")
    code = main(["evidence", "leavers", str(story_trails[0]), "--policies", str(broken)])
    assert code == EXIT_INVALID


def test_with_the_bundle_only_a_paired_removal_closes_a_grant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lifecycle.yaml pairs grant_access with revoke_access: a step of another
    declared remover (disable_credential) that reports the entitlement removed does
    not close it; without the bundle, the reported effect alone closes it."""
    story = Story()
    story.step(MON, "grant_access", "github", "onboarding", "j-1", "dan", added=("admin",))
    story.step(
        MON + timedelta(hours=1),
        "disable_credential",
        "github",
        "cleanup",
        "c-1",
        "dan",
        removed=("admin",),
    )
    paths = story.write(tmp_path / "trails")
    held = answer_json(capsys, "access", paths, "--policies", str(POLICIES))["rows"]
    assert [(r["identity"], r["item"]) for r in held] == [('User::"dan"', "admin")]
    assert answer_json(capsys, "access", paths)["rows"] == []
    story.step(
        MON + timedelta(hours=2),
        "revoke_access",
        "github",
        "cleanup",
        "c-2",
        "dan",
        removed=("admin",),
    )
    paths = story.write(tmp_path / "again")
    assert answer_json(capsys, "access", paths, "--policies", str(POLICIES))["rows"] == []


def test_the_store_can_be_kept_and_leaver_workflows_named(
    story_trails: list[Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "evidence.sqlite"
    answer_json(capsys, "open-grants", story_trails, "--db", str(db))
    with sqlite3.connect(db) as kept:
        assert kept.execute("SELECT COUNT(*) FROM grants WHERE closed_at IS NULL").fetchone() == (
            3,
        )
        assert kept.execute("SELECT COUNT(*) FROM chains WHERE ok").fetchone() == (3,)
    code, _ = evidence(capsys, "open-grants", story_trails, "--db", str(db))
    assert code == EXIT_ERROR  # never written over
    # no leaver workflow by that name: nobody left
    data = answer_json(capsys, "leavers", story_trails, "--leaver-workflow", "offboarding")
    assert data["summary"]["leavers"] == 0 and data["summary"]["revocation_confidence"] is None


def test_the_installed_command_answers(story_trails: list[Path]) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "evidence",
            "leavers",
            *map(str, story_trails),
            "--now",
            NOW,
            "--policies",
            str(POLICIES),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == EXIT_OK, out.stderr
    assert 'incomplete: User::"bob",' in out.stdout
    assert "revocation_confidence: 0.5" in out.stdout


def test_a_leaver_run_twice_counts_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Revocation confidence counts people: a leaver workflow re-run after a failed
    revocation is one leaver, deprovisioned once the second run removed everything."""
    story = Story()
    story.step(MON, "grant_access", "jira", "onboarding", "j-1", "dan", added=("dev",))
    for i, status in enumerate(("failed", "succeeded")):
        at = MON + timedelta(days=1 + i)
        d = story.decide(at, "revoke_access", "jira", "leaver", f"l-{i}", "jira")
        story.outcome(
            d,
            at + timedelta(minutes=1),
            status,
            error_class="TargetUnavailable" if status == "failed" else "",
            effect=effect("dan", "jira", removed=("dev",)),
        )
    paths = story.write(tmp_path / "trails")
    summary = answer_json(capsys, "leavers", paths)["summary"]
    assert summary["leavers"] == 1
    assert summary["fully_deprovisioned"] == 1
    assert summary["revocation_confidence"] == 1.0


def test_a_grant_ends_at_its_time_bound_as_the_sidecar_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A grant allowed until `time_bound.not_after` (recorded by the sidecar as a Cedar
    datetime) ends then: its @revoke_within deadline runs from it, with no leaver."""
    story = Story()
    bound = MON + timedelta(hours=8)
    d = story.decide(MON, "grant_access", "jira", "onboarding", "j-1", "grant", not_after=bound)
    assert d["context"]["time_bound"]["not_after"]["__extn"]["fn"] == "datetime"
    story.outcome(
        d, MON + timedelta(minutes=1), "succeeded", effect=effect("dan", "jira", added=("dev",))
    )
    paths = story.write(tmp_path / "trails")
    (row,) = answer_json(capsys, "open-grants", paths)["rows"]
    assert row["deadline_at"] == "2026-11-03T17:00:00Z"  # the bound, 17:00, + PT24H
    assert row["missed_by"] == "5d 16h"  # still open on Monday 9 November 09:00


def test_the_tests_outcome_events_follow_the_trail_schema() -> None:
    """The helper builds its events with the sidecar's own builder; they pass the schema."""
    import json
    from datetime import UTC, datetime
    from pathlib import Path

    import jsonschema

    from tests.evidence.outcome_events import effect, outcome_event

    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "sidecar/audit/event.schema.json").read_text()
    )
    outcome = {"$defs": schema["$defs"], "$ref": "#/$defs/outcome"}
    at = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    for event in (
        outcome_event(
            None,
            at,
            "succeeded",
            decision_id="0190f0f0-0000-7000-8000-000000000001",
            violation="decision_unknown",
        ),
        outcome_event(
            None,
            at,
            "failed",
            decision_id="0190f0f0-0000-7000-8000-000000000002",
            effect=effect("bob", "jira", removed=("jira-admin",)),
            error_class="PermissionError",
            violation="decision_unknown",
        ),
    ):
        jsonschema.validate(event, outcome)
