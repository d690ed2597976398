"""The mock world the example workflows act on: an HR source and four target systems.

Shared by the Airflow DAGs and the Prefect flows (put `examples/` on PYTHONPATH).
Nothing here knows about stepguard: it stands in for the systems a real
identity team's workflows would call.

HR (the file EXAMPLE_HR_FILE, default examples/hr/people.json): a list of
events, `joiner` (who starts, with the GitHub teams and Jira roles their job
needs, who asked and who approved) and `leaver` (who has left). The workflows
read it: onboarding grants what the joiner event lists, the leaver workflow
refuses to offboard anyone HR does not list as a leaver.

Target systems (their state in EXAMPLE_SYSTEMS_DIR, one JSON file per system;
without it, in this process's memory):

| system     | holds                          | changed by                                  |
|------------|--------------------------------|---------------------------------------------|
| `okta`     | accounts                       | create_account, delete_account              |
| `github`   | team memberships (entitlements)| grant_access, revoke_access (`team=`)       |
| `jira`     | project roles (entitlements)   | grant_access, revoke_access (`role=`)       |
| `aws-prod` | credentials, with their expiry | issue_credential, disable_credential        |

Every call appends one JSON line to the file named by EXAMPLE_SYSTEMS_LOG
(when set), so a test can see which steps really ran. A system named in
EXAMPLE_SYSTEMS_DOWN (comma-separated) is down: a call to it raises
TargetSystemDown and changes nothing, as a real outage would fail the step.
Reading what someone holds (`holdings`) goes to the systems' inventory and
works during an outage.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_HR_FILE = Path(__file__).resolve().parent / "hr" / "people.json"
SYSTEMS = ("okta", "github", "jira", "aws-prod")
_MEMORY: dict[str, dict[str, Any]] = {}


class TargetSystemDown(ConnectionError):
    """The target system did not answer: the step failed and changed nothing."""


class NotInHR(LookupError):
    """HR has no such event for this person: the workflow must not act on them."""


class AccessStillPresent(RuntimeError):
    """A leaver still holds access after the deprovisioning steps."""


# --- HR -------------------------------------------------------------------------


def hr_events() -> list[dict[str, Any]]:
    """Every HR event, in the order HR recorded them."""
    path = Path(os.environ.get("EXAMPLE_HR_FILE") or DEFAULT_HR_FILE)
    events: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["events"]
    return events


def hr_event(kind: str, person: str) -> dict[str, Any]:
    """The person's last `joiner` or `leaver` event; NotInHR when HR has none."""
    found = [e for e in hr_events() if e["type"] == kind and e["person"] == person]
    if not found:
        raise NotInHR(f"HR lists no {kind} event for {person!r}")
    return found[-1]


# --- target systems ---------------------------------------------------------------


def record(system: str, action: str, **details: Any) -> None:
    """One call to a target system: it fails when the system is down, else it is
    logged and, for a step that changes access, applied to the system's state."""
    if system in os.environ.get("EXAMPLE_SYSTEMS_DOWN", "").split(","):
        raise TargetSystemDown(f"{system} is down: {action} not done")
    entry = {"system": system, "action": action, **details}
    log.info("%s: %s %s", system, action, details)
    with _state(system) as state:
        _apply(state, action, details)
    path = os.environ.get("EXAMPLE_SYSTEMS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")


def holdings(account: str) -> dict[str, Any]:
    """What `account` holds on every system now: its okta account (True/False), its
    GitHub teams, Jira roles and aws-prod credential ids."""
    out: dict[str, Any] = {}
    for system in SYSTEMS:
        with _state(system) as state:
            held = state["entitlements"].get(account, [])
            creds = [c for c, v in state["credentials"].items() if v["account"] == account]
            if system == "okta":
                out["account"] = account in state["accounts"]
            elif system == "github":
                out["teams"] = list(held)
            elif system == "jira":
                out["jira_roles"] = list(held)
            else:
                out["credentials"] = creds
    return out


def seed(system: str, state: dict[str, Any]) -> None:
    """Replace a system's state (tests and demonstrations start from a known world)."""
    with _state(system) as current:
        current.clear()
        current.update(_empty() | state)


def _empty() -> dict[str, Any]:
    return {"accounts": [], "entitlements": {}, "credentials": {}}


def _apply(state: dict[str, Any], action: str, details: dict[str, Any]) -> None:
    account = details.get("account", "")
    item = details.get("team") or details.get("role")
    if action == "create_account" and account not in state["accounts"]:
        state["accounts"].append(account)
    elif action == "delete_account" and account in state["accounts"]:
        state["accounts"].remove(account)
    elif action == "grant_access" and item:
        held = state["entitlements"].setdefault(account, [])
        if item not in held:
            held.append(item)
    elif action == "revoke_access" and item:
        held = state["entitlements"].get(account, [])
        if item in held:
            held.remove(item)
        if not held:
            state["entitlements"].pop(account, None)
    elif action == "issue_credential":
        state["credentials"][details["credential"]] = {
            "account": account,
            "expires_at": details.get("expires_at"),
        }
    elif action == "disable_credential":
        state["credentials"].pop(details.get("credential", ""), None)


@contextmanager
def _state(system: str) -> Iterator[dict[str, Any]]:
    """The system's state, read and written back under a lock (mapped tasks may overlap)."""
    where = os.environ.get("EXAMPLE_SYSTEMS_DIR")
    if not where:
        yield _MEMORY.setdefault(system, _empty())
        return
    path = Path(where) / f"{system}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text(encoding="utf-8")) if path.exists() else _empty()
        yield state
        path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
