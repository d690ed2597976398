"""The example joiner and leaver runs, and the evidence they leave (issue 18, "Proven on
real runs"), shared by the Airflow and Prefect tests.

`./dev evidence-demo ORCHESTRATOR --out DIR` (scripts/evidence_demo.py; the README's
one command) runs the example workflows on the real orchestrator once per event of
the mock HR source (examples/hr/people.json) against two real sidecars, then writes
the report. The checks read what those runs left: the mock target systems' files,
the answer of the real `stepguard evidence leavers` over the trails, and the HTML
report opened in Chromium.

The HR story: alice, bob and carol join; alice and bob leave. During bob's leaver
run github is down (his two teams' revocation fails on every try) and his Jira
role's revocation is denied (the Jira connector's workload is not registered).
Alice is fully deprovisioned; bob is the one incomplete leaver.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.browser import open_page
from tests.helpers import ROOT

ALICE, BOB, CAROL = ('User::"alice@example.org"', 'User::"bob@example.org"', "carol@example.org")
UNREGISTERED_POLICY = "unregistered-workloads-never-act"


@dataclass
class Demo:
    out: Path
    stdout: str

    @property
    def trails(self) -> list[Path]:
        return [self.out / "trails" / "joiners", self.out / "trails" / "leavers"]

    def runs(self) -> dict[str, Any]:
        runs: dict[str, Any] = json.loads((self.out / "runs.json").read_text())
        return runs

    def system(self, name: str) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.out / "systems" / f"{name}.json").read_text())
        return state

    def records(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for trail in self.trails
            for line in (trail / "audit.jsonl").read_text().splitlines()
        ]


def run_demo(orchestrator: str, out: Path) -> Demo:
    """The README's command, as a user runs it (it exits 0 on a verified trail)."""
    proc = subprocess.run(
        [str(ROOT / "dev"), "evidence-demo", orchestrator, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = out / "orchestrator.log"
    assert proc.returncode == 0, (
        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n"
        f"{log.read_text()[-6000:] if log.exists() else ''}"
    )
    return Demo(out, proc.stdout)


def check_the_runs_changed_the_mock_systems(demo: Demo) -> None:
    """Every run happened on the orchestrator, and the tasks really changed the systems:
    alice is gone everywhere, bob keeps his teams and Jira role, carol keeps all."""
    assert {name: r["state"] for name, r in demo.runs().items()} == {
        "01-joiner-alice": "success",
        "02-joiner-bob": "success",
        "03-joiner-carol": "success",
        "04-leaver-alice": "success",
        "05-leaver-bob": "failed",
    }
    assert demo.system("okta")["accounts"] == [CAROL]  # alice's and bob's deleted
    assert demo.system("github")["entitlements"] == {
        "bob@example.org": ["engineering", "on-call"],  # github was down
        CAROL: ["design"],
    }
    assert demo.system("jira")["entitlements"] == {"bob@example.org": ["developer"]}  # denied
    credentials = demo.system("aws-prod")["credentials"]
    assert [c["account"] for c in credentials.values()] == [CAROL]  # alice's and bob's revoked


def check_the_trails_hold_the_denial_and_the_failures(demo: Demo) -> None:
    """What the leavers answer rests on, in the trails: one DENY (the Jira connector)
    and three failed attempts of the GitHub revocation, each after its own ALLOW."""
    records = demo.records()
    denied = [r for r in records if r.get("kind") == "decision" and r["decision"] == "DENY"]
    assert len(denied) == 1
    (deny,) = denied
    assert (deny["action"]["id"], deny["resource"]["id"]) == ("revoke_access", "jira")
    assert [p["policy"] for p in deny["reasons"]] == [UNREGISTERED_POLICY]
    failed = [r for r in records if r.get("kind") == "outcome" and r["status"] == "failed"]
    assert [(f["resource"]["id"], f["attempt"]) for f in failed] == [
        ("github", 1),
        ("github", 2),
        ("github", 3),
    ]
    assert all(f["error_class"].endswith("TargetSystemDown") for f in failed)
    assert all(f["effect"]["identity"]["id"] == "bob@example.org" for f in failed)
    # the joiners' sidecar ran on its fixed clock and every one of its records says so
    joiners = [
        json.loads(line) for line in (demo.trails[0] / "audit.jsonl").read_text().splitlines()
    ]
    steps = [r for r in joiners if r.get("kind") in ("decision", "outcome")]
    assert steps and all(r["note"].startswith("non-production: fixed clock") for r in steps)


def evidence(demo: Demo, answer: str, *flags: str) -> dict[str, Any]:
    """`stepguard evidence ANSWER` over the trails the runs wrote: the real CLI."""
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "stepguard"),
            "evidence",
            answer,
            *map(str, demo.trails),
            "--policies",
            str(ROOT / "policies"),
            "--json",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    assert data["verification"]["ok"] is True
    return data


def check_leavers_names_exactly_the_incomplete_leaver(demo: Demo) -> None:
    answer = evidence(demo, "leavers")
    summary = answer["summary"]
    assert summary["leavers"] == 2
    assert summary["fully_deprovisioned"] == 1
    assert summary["incomplete"] == [BOB]
    assert summary["revocation_confidence"] == 0.5
    findings = sorted((r["identity"], r["target"], r["item"], r["finding"]) for r in answer["rows"])
    assert findings == [
        (BOB, "github", "engineering", "revocation failed (identity_systems.TargetSystemDown)"),
        (BOB, "github", "on-call", "revocation failed (identity_systems.TargetSystemDown)"),
        (BOB, "jira", "developer", "revocation denied"),
    ]
    assert not [r for r in answer["rows"] if r["identity"] == ALICE]
    assert all(
        r["evidence"] and all("#seq=" in ref for ref in r["evidence"]) for r in answer["rows"]
    )
    # the demo printed the same answer, as a table
    assert "revocation_confidence: 0.5" in demo.stdout
    assert f"incomplete: {BOB}" in demo.stdout


def check_the_report_shows_confidence_below_100_percent(demo: Demo, browser: Any) -> None:
    """The report the command wrote, opened in Chromium, offline."""
    report = demo.out / "evidence.html"
    page, seen, context = open_page(browser, report)
    try:
        assert page.get_attribute("#verification", "data-ok") == "true"
        confidence = page.text_content("#confidence") or ""
        assert confidence == "50 %"
        assert float(confidence.removesuffix(" %")) < 100
        assert page.text_content("#confidence-detail") == "1 of 2 leavers fully deprovisioned"
        width = page.evaluate(
            "document.querySelectorAll('#confidence-chart rect')[1].getBBox().width"
        )
        assert width == 200  # half of the 400-pixel bar
        rows = page.locator("#leavers tbody tr").all_inner_texts()
        assert len(rows) == 3 and all(BOB in r for r in rows)
        assert not any(ALICE in r for r in rows)
        assert seen == [report.as_uri()]  # nothing but itself
    finally:
        context.close()


def check_who_granted_what_is_read_from_the_real_trails(demo: Demo) -> None:
    """The requester and approver the orchestrator sent (recorded by the sidecar as Cedar
    entity references) are the owners `inventory` names and the approver `access` shows."""
    rows = {r["workflow"]: r for r in evidence(demo, "inventory")["rows"]}
    onboarding = rows["onboarding"]
    assert (onboarding["requesters"], onboarding["approvers"]) == ('User::"maria"', 'User::"ines"')
    assert onboarding["tickets"] == "CHG-2001, CHG-2002, CHG-2003"
    assert onboarding["needs_approval"] == "yes"
    assert rows["leaver"]["needs_approval"] == "no"
    held = evidence(demo, "access", "--identity", "bob@example.org")["rows"]
    assert sorted((r["target"], r["item"]) for r in held) == [
        ("github", "engineering"),
        ("github", "on-call"),
        ("jira", "developer"),
    ]
    assert {(r["workflow"], r["approver"]) for r in held} == {("onboarding", 'User::"ines"')}
