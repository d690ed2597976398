"""`./dev evidence-demo` (scripts/evidence_demo.py), the README's one command for the
evidence report of the example runs: the parts that need no orchestrator.

The whole command runs on real Airflow and Prefect in
tests/integrations/test_{airflow,prefect}_integration.py (`./dev test tests/integrations/`).
Here: the plan it derives from the mock HR source, that it refuses to clear a
directory it did not make, and that ./dev and the README offer it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import ROOT


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "evidence_demo", ROOT / "scripts/evidence_demo.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_run_per_hr_event_joiners_first_against_their_own_sidecar() -> None:
    demo = _demo()
    events = json.loads((ROOT / "examples/hr/people.json").read_text())["events"]
    runs = demo.plan_runs(events, {"joiners": "127.0.0.1:1", "leavers": "127.0.0.1:2"})
    assert [(r["name"], r["workflow"], r["target"], r["systems_down"]) for r in runs] == [
        ("01-joiner-alice", "onboarding", "127.0.0.1:1", []),
        ("02-joiner-bob", "onboarding", "127.0.0.1:1", []),
        ("03-joiner-carol", "onboarding", "127.0.0.1:1", []),
        ("04-leaver-alice", "leaver", "127.0.0.1:2", []),
        ("05-leaver-bob", "leaver", "127.0.0.1:2", ["github"]),
    ]
    # what the workflows read from their input: who, who asked, who approved
    assert runs[1]["inputs"] == {
        "new_hire": "bob",
        "requester": "maria",
        "approval": {
            "approver": "ines",
            "approved_at": "2026-11-25T09:00:00Z",
            "ticket": "CHG-2002",
        },
    }
    assert runs[4]["inputs"] == {"person": "bob", "requester": "maria"}
    with pytest.raises(ValueError, match="unknown type 'mover'"):
        demo.plan_runs([{"type": "mover", "person": "x"}], {})


def test_it_clears_only_a_directory_it_made(tmp_path: Path) -> None:
    demo = _demo()
    mine = tmp_path / "mine"
    demo.prepare(mine)
    (mine / "trails").mkdir()
    demo.prepare(mine)  # made by it: cleared
    assert sorted(p.name for p in mine.iterdir()) == [demo.MARK]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine, not the demo's")
    with pytest.raises(SystemExit, match="not made by this command"):
        demo.prepare(other)
    assert (other / "keep.txt").exists()


def test_dev_and_the_readme_offer_it() -> None:
    usage = subprocess.run([str(ROOT / "dev"), "nothing"], capture_output=True, text=True)
    assert usage.returncode == 2 and "evidence-demo" in usage.stderr
    help_text = subprocess.run(
        [str(ROOT / ".venv/bin/python"), str(ROOT / "scripts/evidence_demo.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "{airflow,prefect}" in help_text and "--out" in help_text
    readme = (ROOT / "README.md").read_text()
    assert "\n    ./dev evidence-demo " in readme
