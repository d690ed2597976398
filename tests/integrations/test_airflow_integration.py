"""Every task of a real Airflow run asks stepguard first.

The example DAGs (examples/airflow/dags) run under Airflow's own dag.test()
in .venv-airflow, loaded from the DAGs folder so that the cluster policy in
examples/airflow/airflow_local_settings.py applies, against real sidecars
with injected clocks and real audit files (tests/integrations/orchestration.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.browser import browser
from tests.helpers import ROOT
from tests.integrations.evidence_runs import (
    Demo,
    check_leavers_names_exactly_the_incomplete_leaver,
    check_the_report_shows_confidence_below_100_percent,
    check_the_runs_changed_the_mock_systems,
    check_the_trails_hold_the_denial_and_the_failures,
    check_who_granted_what_is_read_from_the_real_trails,
    run_demo,
)
from tests.integrations.orchestration import (
    APPROVAL_POLICY,
    LEAVER_STEPS,
    ONBOARDING_CALLS,
    ONBOARDING_STEPS,
    OUTCOME_SCENARIOS,
    PLAN_SCENARIOS,
    SCENARIOS,
    Outcome,
    Scenario,
    by_name,
    check_a_denied_step_has_no_outcome_claiming_it_ran,
    check_a_failing_step_reports_each_attempt_failed,
    check_a_sidecar_stopped_before_the_outcome_does_not_fail_the_task,
    check_each_allowed_step_is_followed_by_its_outcome,
    check_enforce_starts_no_run_unchecked,
    check_leaver_not_blocked_at_night,
    check_one_event_per_guarded_step,
    check_plan_setting,
    check_skips_and_timeouts,
    check_time_bound_stops_the_first_step,
    orchestrator_python,
    orchestrators_imported_by_stepguard,
    policies_of,
    run_scenarios,
)

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow
__all__ = ["browser"]  # the fixture, used by name

# A run conf that tries to redeclare the step: the policy reads the declaration
# when the DAG is loaded, so this changes nothing.
REDECLARED = Scenario(
    "conf-redeclares",
    "onboarding",
    "weekday",
    {
        "new_hire": "trudy",
        "requester": "maria",
        "stepguard": {"action": "notify", "target": "slack"},
    },
)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    python = orchestrator_python("airflow")
    tmp = tmp_path_factory.mktemp("airflow")
    home = tmp / "airflow-home"
    home.mkdir()
    # The example DAGs, and the test's own (tasks that skip or time out), in one
    # DAGs folder: dag.test() runs only DAGs of the configured folder.
    dags = tmp / "dags"
    dags.mkdir()
    for dag_file in [
        *(ROOT / "examples" / "airflow" / "dags").glob("*.py"),
        HERE / "outcome_kinds" / "dags" / "outcome_kinds.py",
        HERE / "outcome_kinds" / "dags" / "preflight.py",
    ]:
        shutil.copy(dag_file, dags / dag_file.name)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        # the cluster policy, and the mock HR source and systems the DAGs import
        "PYTHONPATH": f"{ROOT / 'examples' / 'airflow'}{os.pathsep}{ROOT / 'examples'}",
    }
    return run_scenarios(
        python,
        HERE / "airflow_runner.py",
        tmp,
        [*SCENARIOS, REDECLARED, *OUTCOME_SCENARIOS, *PLAN_SCENARIOS],
        env,
    )


def test_a_permitted_run_completes_with_the_credential_ttl_handed_to_the_task(
    outcome: Outcome,
) -> None:
    run = outcome.runs["approved"]
    assert run.state == "success"
    assert {name: (t.state, t.attempts) for name, t in run.tasks.items()} == {
        name: ("success", 1) for name in ONBOARDING_STEPS
    }
    calls = run.calls()  # the two grants (github, jira) in either order
    assert (calls[0], sorted(calls[1:4]), calls[4:]) == (
        ONBOARDING_CALLS[0],
        sorted(ONBOARDING_CALLS[1:4]),
        ONBOARDING_CALLS[4:],
    )
    assert [e["team"] for e in run.effects if e["system"] == "github"] == [
        "engineering",
        "on-call",
    ]
    (credential,) = [e for e in run.effects if e["action"] == "issue_credential"]
    assert credential["ttl_s"] == 15 * 60  # aws-prod is critical: PT15M


@pytest.mark.parametrize("name", ["unapproved", "self-approved"])
def test_missing_or_self_approval_stops_at_the_identity_changing_step(
    outcome: Outcome, name: str
) -> None:
    run = outcome.runs[name]
    assert run.state == "failed"
    create = run.tasks["create_account"]
    assert (create.state, create.attempts) == ("failed", 1)  # retries=2, but a DENY is final
    assert {t.state for n, t in run.tasks.items() if n != "create_account"} == {"upstream_failed"}
    assert run.ran() == []  # the task body never ran
    (event,) = outcome.events(by_name(name))
    assert event["decision"] == "DENY"
    assert APPROVAL_POLICY in policies_of(event)
    deny_line = f"stepguard DENY onboarding/{run.run_id}/create_account attempt 1"
    assert deny_line in outcome.log
    assert APPROVAL_POLICY in outcome.log.split(deny_line, 1)[1].splitlines()[0]


def test_the_leaver_flow_is_not_blocked_outside_business_hours(outcome: Outcome) -> None:
    check_leaver_not_blocked_at_night(outcome)


def test_a_run_outside_its_time_bound_is_stopped_at_the_first_step(outcome: Outcome) -> None:
    check_time_bound_stops_the_first_step(outcome)


@pytest.mark.parametrize("name", [s.name for s in [*SCENARIOS, REDECLARED]])
def test_the_audit_trail_holds_one_event_per_guarded_step_with_airflows_ids(
    outcome: Outcome, name: str
) -> None:
    scenario = REDECLARED if name == REDECLARED.name else by_name(name)
    check_one_event_per_guarded_step(outcome, scenario)


def test_no_event_belongs_to_no_run(outcome: Outcome) -> None:
    run_ids = {run.run_id for run in outcome.runs.values()}
    for events in outcome.audits.values():
        assert events
        assert {e["run_id"] for e in events} <= run_ids


def test_a_stopped_sidecar_fails_the_guarded_task_closed(outcome: Outcome) -> None:
    run = outcome.runs["sidecar-stopped"]
    assert run.state == "failed"
    create = run.tasks["create_account"]
    # Unreachable is retryable: each of the 3 tries asked again, none ran.
    assert (create.state, create.attempts) == ("failed", 3)
    assert run.ran() == []
    assert outcome.events(by_name("sidecar-stopped")) == []
    for attempt in (1, 2, 3):
        line = f"stepguard UNAVAILABLE onboarding/{run.run_id}/create_account attempt {attempt}"
        assert line in outcome.log


def test_a_run_conf_cannot_redeclare_a_step(outcome: Outcome) -> None:
    run = outcome.runs[REDECLARED.name]
    assert run.tasks["create_account"].state == "failed"
    assert run.ran() == []
    (event,) = outcome.events(REDECLARED)
    assert event["action"]["id"] == "create_account"
    assert event["resource"]["id"] == "okta"
    assert APPROVAL_POLICY in policies_of(event)


def test_the_core_import_path_does_not_import_airflow() -> None:
    python = orchestrator_python("airflow")
    assert orchestrators_imported_by_stepguard(python) == []


# Outcomes: what each guarded task did, reported by the integration by itself.


def test_each_permitted_step_is_followed_by_its_succeeded_outcome_and_declared_effect(
    outcome: Outcome,
) -> None:
    check_each_allowed_step_is_followed_by_its_outcome(outcome, by_name("approved"), "bob")
    check_each_allowed_step_is_followed_by_its_outcome(outcome, by_name("leaver-at-night"), "carol")
    assert len(outcome.outcomes(by_name("leaver-at-night"))) == len(LEAVER_STEPS)


def test_a_denied_step_never_runs_and_no_outcome_claims_it_did(outcome: Outcome) -> None:
    check_a_denied_step_has_no_outcome_claiming_it_ran(outcome)


def test_a_failing_step_reports_failed_with_its_error_class_on_every_attempt(
    outcome: Outcome,
) -> None:
    check_a_failing_step_reports_each_attempt_failed(outcome)


def test_a_sidecar_stopped_before_the_outcome_does_not_fail_the_task(outcome: Outcome) -> None:
    check_a_sidecar_stopped_before_the_outcome_does_not_fail_the_task(
        outcome, list(ONBOARDING_STEPS)
    )


def test_a_skipped_task_reports_skipped_and_a_timed_out_one_timed_out(outcome: Outcome) -> None:
    run = outcome.runs["outcome-kinds"]
    assert {n: t.state for n, t in run.tasks.items()} == {
        "nothing_to_send": "skipped",
        "slow_send": "failed",
    }
    reported = check_skips_and_timeouts(
        outcome, {"nothing_to_send": "skipped", "slow_send": "timed_out"}
    )
    assert "error_class" not in reported["nothing_to_send"]
    assert reported["slow_send"]["error_class"].endswith(".AirflowTaskTimeout")


# The example joiner and leaver runs and their evidence (tests/integrations/evidence_runs.py).


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    orchestrator_python("airflow")  # built, or a skip saying why not
    return run_demo("airflow", tmp_path_factory.mktemp("evidence-demo") / "out")


def test_the_example_joiner_and_leaver_runs_change_the_mock_systems(demo: Demo) -> None:
    check_the_runs_changed_the_mock_systems(demo)
    check_the_trails_hold_the_denial_and_the_failures(demo)


def test_evidence_leavers_names_exactly_the_incomplete_leaver_of_the_example_runs(
    demo: Demo,
) -> None:
    check_leavers_names_exactly_the_incomplete_leaver(demo)


def test_evidence_names_who_asked_and_approved_in_the_example_runs(demo: Demo) -> None:
    check_who_granted_what_is_read_from_the_real_trails(demo)


def test_the_report_of_the_example_runs_shows_confidence_below_100_percent(
    demo: Demo, browser: Any
) -> None:
    check_the_report_shows_confidence_below_100_percent(demo, browser)


def test_plan_check_off_warn_enforce_when_a_run_starts(outcome: Outcome) -> None:
    """Issue 21: with enforce, a run whose revoke step is certainly denied fails before
    its first task, naming the step and the policy; warn logs and records; off does neither."""
    check_plan_setting(outcome)


def test_plan_check_enforce_starts_no_run_whose_plan_cannot_be_checked(outcome: Outcome) -> None:
    """Fail closed (issue 21, as Temporal's PlanNotChecked): the sidecar refuses
    connections, so the DAG run fails before its first task asks, and no body runs."""
    check_enforce_starts_no_run_unchecked(outcome)
