"""Real orchestrator runs against real sidecars, shared by the Airflow and Prefect tests.

The orchestrators live in their own venvs (scripts/orchestrator_venvs.py) and
run the example workflows in a subprocess; the sidecars run here, in .venv,
with injected clocks and real audit files. One subprocess runs every scenario
of its orchestrator, because starting an orchestrator costs most of the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing
from tests.helpers import ROOT, Running, running_sidecar

# A Wednesday morning (business hours) and a Sunday night (closed) in the
# example calendar (policies/entities.json).
WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SUNDAY_03 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)

APPROVED = {"approver": "ines", "approved_at": "2026-11-25T09:00:00Z", "ticket": "CHG-1042"}
ONBOARDING_STEPS = (
    "create_account",
    "grant_access",
    "grant_jira_role",
    "issue_credential",
    "notify",
)
# The leaver's tasks that ask for someone holding an okta account, GitHub teams
# and one credential, no Jira role (revoke_jira_role is then never asked).
LEAVER_STEPS = (
    "find_access",
    "revoke_access",
    "find_jira_roles",
    "find_credentials",
    "disable_credential",
    "delete_account",
    "verify_revocation",
)
PROVISIONER = "spiffe://example.org/ns/identity/sa/provisioner"
DEPROVISIONER = "spiffe://example.org/ns/identity/sa/deprovisioner"
NOTIFIER = "spiffe://example.org/ns/comms/sa/notifier"
JIRA_CONNECTOR = "spiffe://example.org/ns/atlassian/sa/jira-connector"
# step -> (action, target system, workload), as the examples declare them
DECLARED = {
    "create_account": ("create_account", "okta", PROVISIONER),
    "grant_access": ("grant_access", "github", PROVISIONER),
    "grant_jira_role": ("grant_access", "jira", PROVISIONER),
    "issue_credential": ("issue_credential", "aws-prod", PROVISIONER),
    "notify": ("notify", "slack", NOTIFIER),
    "find_access": ("lookup_identity", "okta", DEPROVISIONER),
    "revoke_access": ("revoke_access", "github", DEPROVISIONER),
    "find_jira_roles": ("lookup_identity", "jira", DEPROVISIONER),
    "revoke_jira_role": ("revoke_access", "jira", JIRA_CONNECTOR),
    "find_credentials": ("lookup_identity", "aws-prod", DEPROVISIONER),
    "disable_credential": ("disable_credential", "aws-prod", DEPROVISIONER),
    "delete_account": ("delete_account", "okta", DEPROVISIONER),
    "verify_revocation": ("verify_revocation", "okta", DEPROVISIONER),
}
# What the mock systems log for a completed onboarding (test_hr: two teams, one
# Jira role) and for a leaver holding what `seed_leavers` gives, as (system, action).
# The Cedar action of each onboarding task (grant_jira_role grants access on jira).
ONBOARDING_ACTIONS = (
    "create_account",
    "grant_access",
    "grant_access",
    "issue_credential",
    "notify",
)
ONBOARDING_CALLS = [
    ("okta", "create_account"),
    ("github", "grant_access"),
    ("github", "grant_access"),
    ("jira", "grant_access"),
    ("aws-prod", "issue_credential"),
    ("slack", "notify"),
]
LEAVER_CALLS = [
    ("okta", "lookup_identity"),
    ("github", "revoke_access"),
    ("aws-prod", "disable_credential"),
    ("okta", "delete_account"),
    ("okta", "verify_revocation"),
]

READ_POLICY = "step-runners-read-and-notify"
APPROVAL_POLICY = "identity-change-requires-independent-approval"
AFTER_HOURS_POLICY = "sensitive-target-after-hours-requires-break-glass"
TIME_BOUND_POLICY = "step-outside-time-bound"
LEAVER_POLICY = "leaver-deprovisioning-any-time"


@dataclass(frozen=True)
class Scenario:
    name: str
    workflow: str  # onboarding | leaver (the DAG id / flow name)
    sidecar: str  # weekday | night | stopped
    inputs: dict[str, Any]  # the run conf (Airflow) or flow parameters (Prefect)
    systems_down: tuple[str, ...] = ()  # mock target systems that fail every call
    # Where outcomes go once a task body has changed a system: the sidecar stops
    # between the decision and the outcome ("stopped"), or None: the same one.
    outcome_sidecar: str | None = None
    # Integration settings for this run (plan_check, ...), set in the environment.
    settings: tuple[tuple[str, str], ...] = ()


SCENARIOS = [
    Scenario(
        "approved",
        "onboarding",
        "weekday",
        {"new_hire": "bob", "requester": "maria", "approval": APPROVED},
    ),
    Scenario("unapproved", "onboarding", "weekday", {"new_hire": "eve", "requester": "maria"}),
    Scenario(
        "self-approved",
        "onboarding",
        "weekday",
        {"new_hire": "mallory", "requester": "ines", "approval": APPROVED},
    ),
    Scenario(
        "onboarding-at-night",
        "onboarding",
        "night",
        {"new_hire": "oscar", "requester": "maria", "approval": APPROVED},
    ),
    Scenario("leaver-at-night", "leaver", "night", {"person": "carol", "requester": "maria"}),
    Scenario(
        "leaver-expired",
        "leaver",
        "night",
        {
            "person": "dave",
            "requester": "maria",
            "time_bound": {"not_after": "2026-11-29T02:00:00Z"},
        },
    ),
    Scenario(
        "sidecar-stopped",
        "onboarding",
        "stopped",
        {"new_hire": "peggy", "requester": "maria", "approval": APPROVED},
    ),
]


# Scenarios of what the guarded tasks did (their outcomes); kept apart from
# SCENARIOS because a retried task asks once per attempt.
OUTCOME_SCENARIOS = [
    Scenario(
        "leaver-target-down",
        "leaver",
        "night",
        {"person": "frank", "requester": "maria"},
        systems_down=("aws-prod",),
    ),
    Scenario(
        "outcome-sidecar-stopped",
        "onboarding",
        "weekday",
        {"new_hire": "grace", "requester": "maria", "approval": APPROVED},
        outcome_sidecar="stopped",
    ),
    # tests/integrations/outcome_kinds: tasks skipped by their own code (Airflow)
    # and stopped by the orchestrator's timeout (both).
    Scenario("outcome-kinds", "outcome_kinds", "weekday", {"requester": "maria"}),
]


# Pre-flight when a run starts (sidecar/integrations/preflight.py): the test
# workflow "preflight" announces, then has the provisioner revoke access, which
# no policy permits, whatever the time.
PLAN_SCENARIOS = [
    Scenario(
        f"plan-{mode}",
        "preflight",
        "weekday",
        {"requester": "maria"},
        settings=(("plan_check", mode),),
    )
    for mode in ("off", "warn", "enforce")
] + [
    Scenario(
        "plan-enforce-approved",
        "onboarding",
        "weekday",
        {"new_hire": "heidi", "requester": "maria", "approval": APPROVED},
        settings=(("plan_check", "enforce"),),
    ),
    # The sidecar refuses connections: the plan cannot be checked, so enforce starts
    # nothing (fail closed), where before the run started and each task asked in vain.
    Scenario(
        "plan-enforce-unreachable",
        "preflight",
        "stopped",
        {"requester": "maria"},
        settings=(("plan_check", "enforce"),),
    ),
]


@dataclass
class TaskResult:
    state: str  # success | failed | upstream_failed | ...
    attempts: int
    step_id: str  # the id stepguard was given for the step


@dataclass
class RunResult:
    run_id: str
    state: str  # success | failed
    tasks: dict[str, TaskResult]
    effects: list[dict[str, Any]] = field(default_factory=list)

    def ran(self) -> list[str]:
        return [effect["action"] for effect in self.effects]

    def calls(self) -> list[tuple[str, str]]:
        """(system, action) of each call the mock systems took, in order."""
        return [(effect["system"], effect["action"]) for effect in self.effects]


@dataclass
class Outcome:
    """Everything a test checks: per-scenario results, each sidecar's trail, the runner's log."""

    runs: dict[str, RunResult]
    audits: dict[str, list[dict[str, Any]]]  # sidecar name -> decision events
    log: str
    trails: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # every record

    def events(self, scenario: Scenario) -> list[dict[str, Any]]:
        run_id = self.runs[scenario.name].run_id
        return [e for events in self.audits.values() for e in events if e["run_id"] == run_id]

    def trail(self, scenario: Scenario) -> list[dict[str, Any]]:
        """The run's decisions and outcomes, in the order of its sidecar's chain."""
        run_id = self.runs[scenario.name].run_id
        return [
            e
            for e in self.trails.get(scenario.sidecar, [])
            if e.get("kind") in ("decision", "outcome") and e.get("run_id") == run_id
        ]

    def outcomes(self, scenario: Scenario) -> list[dict[str, Any]]:
        return [e for e in self.trail(scenario) if e["kind"] == "outcome"]


def orchestrator_python(name: str) -> Path:
    """The venv's python, built if needed; a skip that says why if the registry refused."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "orchestrator_venvs.py"), name],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    venv = ROOT / f".venv-{name}"
    refused = venv / ".stepguard-refused"
    if proc.returncode == 0 and refused.exists():
        missing(
            f"{venv.name} could not be built because the package registry refused: "
            f"{refused.read_text().strip()}"
        )
    if proc.returncode != 0:
        pytest.fail(f"building {venv.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return venv / "bin" / "python"


@contextmanager
def sidecars(tmp: Path) -> Iterator[tuple[dict[str, str], dict[str, Running]]]:
    """A weekday sidecar, a Sunday-night one, and the address of one that was stopped."""
    with ExitStack() as stack:
        running = {
            "weekday": stack.enter_context(
                running_sidecar(_dir(tmp / "weekday"), clock=lambda: WEDNESDAY_10)
            ),
            "night": stack.enter_context(
                running_sidecar(_dir(tmp / "night"), clock=lambda: SUNDAY_03)
            ),
        }
        with running_sidecar(_dir(tmp / "stopped")) as stopped:
            dead = stopped.tcp
        targets = {name: r.tcp for name, r in running.items()} | {"stopped": dead}
        yield targets, running


def test_hr(scenarios: list[Scenario]) -> dict[str, Any]:
    """The mock HR source for these scenarios (examples/identity_systems.py): every new
    hire joins with two GitHub teams and one Jira role, every leaver has left."""
    events: list[dict[str, Any]] = []
    for s in scenarios:
        if "new_hire" in s.inputs:
            events.append(
                {
                    "type": "joiner",
                    "person": s.inputs["new_hire"],
                    "github_teams": ["engineering", "on-call"],
                    "jira_roles": ["developer"],
                    "requester": "maria",
                }
            )
        elif "person" in s.inputs:
            events.append({"type": "leaver", "person": s.inputs["person"], "requester": "maria"})
    return {"events": events}


def seed_leavers(systems: Path, scenarios: list[Scenario]) -> None:
    """What each leaver holds before the runs, in the mock systems' files: an okta
    account, the `engineering` team on GitHub and the credential `cred-<person>`."""
    accounts = [f"{s.inputs['person']}@example.org" for s in scenarios if "person" in s.inputs]
    state: dict[str, dict[str, Any]] = {
        "okta": {"accounts": accounts},
        "github": {"entitlements": {a: ["engineering"] for a in accounts}},
        "aws-prod": {
            "credentials": {
                f"cred-{a.split('@')[0]}": {"account": a, "expires_at": None} for a in accounts
            }
        },
    }
    systems.mkdir(parents=True, exist_ok=True)
    for system, held in state.items():
        full = {"accounts": [], "entitlements": {}, "credentials": {}} | held
        (systems / f"{system}.json").write_text(json.dumps(full))


def run_scenarios(
    python: Path,
    runner: Path,
    tmp: Path,
    scenarios: list[Scenario],
    env: dict[str, str],
) -> Outcome:
    """Run every scenario in one orchestrator process; collect results, effects and trails.

    The mock world (examples/identity_systems.py) is the test's own: an HR file
    listing the scenarios' joiners and leavers, and target systems where each
    leaver starts with an account, a team and a credential (`seed_leavers`).
    """
    (tmp / "hr.json").write_text(json.dumps(test_hr(scenarios)))
    seed_leavers(tmp / "systems", scenarios)
    env = env | {
        "EXAMPLE_HR_FILE": str(tmp / "hr.json"),
        "EXAMPLE_SYSTEMS_DIR": str(tmp / "systems"),
    }
    with sidecars(tmp) as (targets, running):
        plan = {
            "scenarios": [
                {
                    "name": s.name,
                    "workflow": s.workflow,
                    "target": targets[s.sidecar],
                    "inputs": s.inputs,
                    "systems_log": str(tmp / f"{s.name}.systems.jsonl"),
                    "systems_down": ",".join(s.systems_down),
                    "outcome_target": targets[s.outcome_sidecar] if s.outcome_sidecar else None,
                    "settings": dict(s.settings),
                }
                for s in scenarios
            ],
            "examples": str(ROOT / "examples"),
            "outcome_kinds": str(ROOT / "tests" / "integrations" / "outcome_kinds"),
        }
        (tmp / "plan.json").write_text(json.dumps(plan))
        log_path = tmp / "runner.log"
        with log_path.open("w") as log:
            proc = subprocess.run(
                [str(python), str(runner), str(tmp / "plan.json"), str(tmp / "results.json")],
                cwd=tmp,
                env=_clean_env() | env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=240,
                check=False,
            )
        log_text = log_path.read_text(errors="replace")
        if proc.returncode != 0:
            pytest.fail(f"{runner.name} exited {proc.returncode}:\n{log_text[-6000:]}")
        # Stopping drains and closes the trails, so every event is on disk.
        for r in running.values():
            r.sidecar.stop(grace=1.0)
        trails = {name: r.audit_events() for name, r in running.items()}
        audits = {
            name: [e for e in events if e.get("kind", "decision") == "decision"]
            for name, events in trails.items()
        }
    raw = json.loads((tmp / "results.json").read_text())
    runs = {}
    for s in scenarios:
        result = raw[s.name]
        effects_file = tmp / f"{s.name}.systems.jsonl"
        effects = (
            [json.loads(line) for line in effects_file.read_text().splitlines()]
            if effects_file.exists()
            else []
        )
        runs[s.name] = RunResult(
            run_id=result["run_id"],
            state=result["state"],
            tasks={name: TaskResult(**task) for name, task in result["tasks"].items()},
            effects=effects,
        )
    return Outcome(runs, audits, log_text, trails)


def check_plan_setting(outcome: Outcome) -> None:
    """off: no plan; warn: planned, logged, and the run goes on until the denied step;
    enforce: the run fails before its first task body, naming the step and the policy;
    a run with no step certainly denied runs under enforce as it always did."""
    plans = {
        s.name: [
            e
            for e in outcome.trails["weekday"]
            if e.get("kind") == "plan" and e.get("run_id") == outcome.runs[s.name].run_id
        ]
        for s in PLAN_SCENARIOS
    }
    decisions = {s.name: outcome.events(s) for s in PLAN_SCENARIOS}
    off, warn, enforce = (outcome.runs[f"plan-{m}"] for m in ("off", "warn", "enforce"))
    assert plans["plan-off"] == []
    assert off.ran() == ["notify"] and off.state == "failed"  # stopped at revoke, as always
    # warn: the plan is recorded and linked to the run's decisions; the run goes on.
    (warned,) = plans["plan-warn"]
    assert [s["verdict"] for s in warned["steps"]] == ["ALLOW", "DENY"]
    assert warn.ran() == ["notify"] and warn.state == "failed"
    assert sorted(e["decision"] for e in decisions["plan-warn"]) == ["ALLOW", "DENY"]
    # enforce: no task body ran, no step was even decided; the plan says why.
    (enforced,) = plans["plan-enforce"]
    assert enforced["verdicts"] == {"ALLOW": 1, "DENY": 1, "DEPENDS": 0}
    assert enforce.state == "failed"
    assert enforce.ran() == []
    assert decisions["plan-enforce"] == []
    for name in ("plan-warn", "plan-enforce"):
        assert f"plan {plans[name][0]['id']} of run" in outcome.log
    assert "(revoke_access on okta): denied whatever the unknowns are" in outcome.log
    assert "the run is stopped before its first task (plan_check = enforce)" in outcome.log
    # A run with nothing certainly denied is planned and runs to the end under enforce.
    approved = outcome.runs["plan-enforce-approved"]
    assert approved.state == "success"
    (fine,) = plans["plan-enforce-approved"]
    assert fine["verdicts"]["DENY"] == 0
    assert sorted(s["action"]["id"] for s in fine["steps"]) == sorted(ONBOARDING_ACTIONS)


def check_enforce_starts_no_run_unchecked(outcome: Outcome) -> None:
    """enforce with the sidecar refusing connections: the run fails before its first task
    asks, saying the plan could not be checked, why, and that the run was not started."""
    run = outcome.runs["plan-enforce-unreachable"]
    assert run.state == "failed"
    assert run.ran() == []  # no task body ran
    where = f"preflight/{run.run_id}"
    stopped = [
        line
        for line in outcome.log.splitlines()
        if f"stepguard plan of run {where} could not be checked (" in line
    ]
    assert stopped, outcome.log[-3000:]
    assert all(
        "UNAVAILABLE" in line
        and "the run was not started (plan_check = enforce starts no run unchecked)" in line
        for line in stopped
    ), stopped
    # No task got as far as asking for its own decision (each would log its verdict).
    assert f"stepguard UNAVAILABLE {where}/" not in outcome.log
    assert f"stepguard DENY {where}/" not in outcome.log


def by_name(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


def policies_of(event: dict[str, Any]) -> set[str]:
    return {reason["policy"] for reason in event["reasons"]}


def check_one_event_per_guarded_step(outcome: Outcome, scenario: Scenario) -> None:
    """Every task that asked left exactly one event, carrying the orchestrator's ids."""
    result = outcome.runs[scenario.name]
    asked = {
        name: task
        for name, task in result.tasks.items()
        if task.state in ("success", "failed") and scenario.sidecar != "stopped"
    }
    events = outcome.events(scenario)
    assert sorted(e["step_id"] for e in events) == sorted(t.step_id for t in asked.values())
    for name, task in asked.items():
        (event,) = [e for e in events if e["step_id"] == task.step_id]
        assert event["workflow_id"] == scenario.workflow
        assert event["run_id"] == result.run_id
        assert event["context"]["workflow_id"] == scenario.workflow
        assert event["context"]["attempt"] == task.attempts
        action, target, workload = DECLARED[name.split("[")[0]]
        assert event["action"] == {"type": "Action", "id": action}
        assert event["resource"] == {"type": "TargetSystem", "id": target}
        assert event["principal"] == {"type": "Workload", "id": workload}
        assert event["decision"] == ("ALLOW" if task.state == "success" else "DENY")


def check_leaver_not_blocked_at_night(outcome: Outcome) -> None:
    """Sunday 03:00: the leaver flow completes, the onboarding flow is stopped."""
    run = outcome.runs["leaver-at-night"]
    assert run.state == "success"
    # the lookup first and the verification last; the removals in any order
    calls = run.calls()
    assert (calls[0], sorted(calls[1:-1]), calls[-1]) == (
        LEAVER_CALLS[0],
        sorted(LEAVER_CALLS[1:-1]),
        LEAVER_CALLS[-1],
    )
    events = outcome.events(by_name("leaver-at-night"))
    assert len(events) == len(LEAVER_STEPS)
    assert all(e["decision"] == "ALLOW" for e in events)
    for e in events:  # lookups are read-only steps; every removal is a leaver's
        lookup = e["action"]["id"] == "lookup_identity"
        assert (READ_POLICY if lookup else LEAVER_POLICY) in policies_of(e)
    # The same night, the onboarding flow is stopped: the clock really is Sunday 03:00.
    night = outcome.runs["onboarding-at-night"]
    assert night.tasks["create_account"].state == "failed"
    assert night.ran() == []
    (denied,) = outcome.events(by_name("onboarding-at-night"))
    assert AFTER_HOURS_POLICY in policies_of(denied)


def check_time_bound_stops_the_first_step(outcome: Outcome) -> None:
    run = outcome.runs["leaver-expired"]
    assert run.tasks["find_access"].state == "failed"
    assert run.ran() == []
    (event,) = outcome.events(by_name("leaver-expired"))
    assert event["context"]["time_bound"]["not_after"]
    assert TIME_BOUND_POLICY in policies_of(event)


# What each example step declares with record_effect (identity and target are
# checked apart): action -> the rest of the effect.
DECLARED_EFFECTS: dict[str, dict[str, Any]] = {
    "create_account": {"account": "created"},
    "grant_access": {},  # entitlements_added: the HR teams (github), the role (jira)
    "issue_credential": {},  # credential: issued, with its times
    "notify": {},
    "lookup_identity": {},  # find_access names the identity; the other lookups nothing
    "revoke_access": {"entitlements_removed": ["engineering"]},  # what seed_leavers gave
    "disable_credential": {},  # credential: revoked
    "delete_account": {"account": "deleted"},
    "verify_revocation": {},
}


def check_each_allowed_step_is_followed_by_its_outcome(
    outcome: Outcome, scenario: Scenario, person: str
) -> None:
    """Every ALLOW of the run is followed, in the chain, by exactly one outcome for it:
    succeeded, same attempt, with the effect the step declared."""
    trail = outcome.trail(scenario)
    decisions = [e for e in trail if e["kind"] == "decision"]
    assert decisions and all(d["decision"] == "ALLOW" for d in decisions)
    outcomes = [e for e in trail if e["kind"] == "outcome"]
    assert len(outcomes) == len(decisions)
    identity = {"type": "User", "id": f"{person}@example.org"}
    for decision in decisions:
        (reported,) = [o for o in outcomes if o["decision_id"] == decision["id"]]
        assert reported["seq"] > decision["seq"]
        assert reported["decided"] == "ALLOW"
        assert "violation" not in reported
        assert reported["status"] == "succeeded"
        assert "error_class" not in reported
        assert reported["attempt"] == decision["context"]["attempt"]
        assert reported["step_id"] == decision["step_id"]
        action = decision["action"]["id"]
        effect = reported.get("effect", {})
        quiet = action == "lookup_identity" and decision["resource"]["id"] != "okta"
        if action in ("notify", "verify_revocation") or quiet:
            assert effect == {}
            continue
        assert effect["identity"] == identity
        assert effect["target_system"] == decision["resource"]["id"]
        for key, value in DECLARED_EFFECTS[action].items():
            assert effect[key] == value
        if action == "grant_access":
            assert effect["entitlements_added"] == (
                ["engineering", "on-call"] if effect["target_system"] == "github" else ["developer"]
            )
        if action == "issue_credential":
            credential = effect["credential"]
            assert credential["change"] == "issued"
            assert credential["id"].startswith(f"cred-{person}-")
            issued = datetime.fromisoformat(credential["issued_at"])
            expires = datetime.fromisoformat(credential["expires_at"])
            assert (expires - issued).total_seconds() == 15 * 60  # the decision's TTL
        if action == "disable_credential":
            assert effect["credential"] == {"id": f"cred-{person}", "change": "revoked"}


def check_a_denied_step_has_no_outcome_claiming_it_ran(outcome: Outcome) -> None:
    """A denied task's body never ran: nothing reports it, least of all as succeeded."""
    for name in ("unapproved", "self-approved", "onboarding-at-night", "leaver-expired"):
        scenario = by_name(name)
        (denied,) = outcome.events(scenario)
        assert denied["decision"] == "DENY"
        assert outcome.outcomes(scenario) == []
    every = [e for trail in outcome.trails.values() for e in trail if e.get("kind") == "outcome"]
    assert every
    assert all(e["decided"] == "ALLOW" and "violation" not in e for e in every)


def check_a_failing_step_reports_each_attempt_failed(outcome: Outcome) -> None:
    """aws-prod is down: revoke_access succeeded, disable_credential failed three
    times, each attempt its own decision followed by a failed outcome naming the
    credential it tried to revoke; the verification never ran."""
    scenario = next(s for s in OUTCOME_SCENARIOS if s.name == "leaver-target-down")
    run = outcome.runs[scenario.name]
    assert run.state == "failed"
    assert sorted(run.calls()) == [
        ("github", "revoke_access"),
        ("okta", "delete_account"),
        ("okta", "lookup_identity"),
    ]
    trail = outcome.trail(scenario)
    revoke = [e for e in trail if e["action"]["id"] == "revoke_access"]
    assert [(e["kind"], e.get("decision") or e["status"]) for e in revoke] == [
        ("decision", "ALLOW"),
        ("outcome", "succeeded"),
    ]
    disable = [e for e in trail if e["action"]["id"] == "disable_credential"]
    assert [(e["kind"], e.get("decision") or e["status"]) for e in disable] == [
        ("decision", "ALLOW"),
        ("outcome", "failed"),
    ] * 3
    for decision, failed in zip(disable[::2], disable[1::2], strict=True):
        assert failed["decision_id"] == decision["id"]
        assert failed["error_class"].endswith(".TargetSystemDown")
        # declared before the call that failed: what was not revoked
        assert failed["effect"]["credential"] == {"id": "cred-frank", "change": "revoked"}
        assert "violation" not in failed
    attempts = [
        (d["context"]["attempt"], o["attempt"])
        for d, o in zip(disable[::2], disable[1::2], strict=True)
    ]
    assert attempts == [(1, 1), (2, 2), (3, 3)]
    assert not [e for e in trail if e["action"]["id"] == "verify_revocation"]


def check_a_sidecar_stopped_before_the_outcome_does_not_fail_the_task(
    outcome: Outcome, steps: list[str]
) -> None:
    """The decisions were had, then the sidecar went away: every task still
    succeeds on its first try, and the log says which outcome was not recorded."""
    scenario = next(s for s in OUTCOME_SCENARIOS if s.name == "outcome-sidecar-stopped")
    run = outcome.runs[scenario.name]
    assert run.state == "success"
    assert {name: (t.state, t.attempts) for name, t in run.tasks.items()} == {
        name: ("success", 1) for name in steps
    }
    decisions = outcome.events(scenario)
    assert len(decisions) == len(steps)
    assert all(d["decision"] == "ALLOW" for d in decisions)
    assert outcome.outcomes(scenario) == []
    not_recorded = [
        line
        for line in outcome.log.splitlines()
        if "stepguard outcome succeeded of onboarding/" in line and "NOT recorded" in line
    ]
    assert len([line for line in not_recorded if run.run_id in line]) == len(steps)


def check_skips_and_timeouts(outcome: Outcome, expected: dict[str, str]) -> dict[str, Any]:
    """Each task of outcome_kinds: its ALLOW followed by the status the orchestrator's
    ending means (`expected`: step name -> status); returns the outcomes by name."""
    scenario = next(s for s in OUTCOME_SCENARIOS if s.name == "outcome-kinds")
    run = outcome.runs[scenario.name]
    trail = outcome.trail(scenario)
    decisions = [e for e in trail if e["kind"] == "decision"]
    assert [d["decision"] for d in decisions] == ["ALLOW"] * len(expected)
    by_name = {}
    for name, status in expected.items():
        step_id = run.tasks[name].step_id
        (decision,) = [d for d in decisions if d["step_id"] == step_id]
        (reported,) = [e for e in outcome.outcomes(scenario) if e["decision_id"] == decision["id"]]
        assert reported["seq"] > decision["seq"]
        assert (reported["status"], reported["attempt"]) == (status, 1), reported
        assert "violation" not in reported
        by_name[name] = reported
    return by_name


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _clean_env() -> dict[str, str]:
    """The environment without this venv's traces, so the orchestrator's venv is the one used."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_CURRENT_TEST"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("STEPGUARD_")}


def orchestrators_imported_by_stepguard(python: Path) -> list[str]:
    """Which of airflow/prefect importing stepguard (core and integrations) pulls in.

    The orchestrator tests run this in their venvs, where both could be imported.
    """
    code = (
        "import sys, sidecar, sidecar.client, sidecar.cli, sidecar.integrations.airflow, "
        "sidecar.integrations.prefect; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'prefect'})))"
    )
    out = subprocess.run(
        [str(python), "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()
