"""Property: for any interleaving of grants, revocations, failures and expiries, written
across several chains by the real sinks, `access` and `open-grants` equal a simple
reference model (a dict replayed in time order)."""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.audit.sink import open_sink
from sidecar.evidence import answers
from sidecar.evidence.options import Options
from sidecar.evidence.store import open_store
from tests.evidence.outcome_events import effect, outcome_event
from tests.evidence.scenario import MON, decision_event

IDENTITIES = ("ann", "ben")
TARGETS = ("github", "jira")
ITEMS = ("e1", "e2")
CREDENTIALS = ("c1", "c2")
STATUSES = ("succeeded", "succeeded", "failed", "timed_out", "skipped")

ops = st.lists(
    st.tuples(
        st.sampled_from(("grant", "revoke", "issue", "disable", "create", "delete")),
        st.sampled_from(IDENTITIES),
        st.sampled_from(TARGETS),
        st.integers(0, 1),  # which entitlement or credential
        st.sampled_from(STATUSES),
        st.integers(1, 30),  # a credential's lifetime, in minutes
        st.integers(0, 2),  # the chain it is written to
    ),
    max_size=30,
)

Key = tuple[str, str, str, str]
ACTION = {
    "grant": "grant_access",
    "revoke": "revoke_access",
    "issue": "issue_credential",
    "disable": "disable_credential",
    "create": "create_account",
    "delete": "delete_account",
}


def _at(minute: int) -> datetime:
    return MON + timedelta(minutes=minute)


def reference(plan: list[tuple[Any, ...]], now: datetime) -> dict[Key, datetime]:
    """Who holds what at `now`: key -> since. Expiry closes a credential at its expiry."""
    held: dict[Key, tuple[datetime, datetime | None]] = {}

    def expire(at: datetime) -> None:
        for key, (_, until) in list(held.items()):
            if until is not None and until <= at:
                del held[key]

    for i, (op, who, target, k, status, ttl, _) in enumerate(plan):
        at = _at(2 * i + 1)
        expire(at)
        if status != "succeeded":
            continue
        user = f'User::"{who}"'
        if op in ("grant", "revoke"):
            key: Key = ("entitlement", user, target, ITEMS[k])
        elif op in ("issue", "disable"):
            key = ("credential", user, target, CREDENTIALS[k])
        else:
            key = ("account", user, target, "")
        if op in ("grant", "issue", "create"):
            until = at + timedelta(minutes=ttl) if op == "issue" else None
            held.setdefault(key, (at, until))
        else:
            held.pop(key, None)
    expire(now)
    return {key: since for key, (since, _) in held.items()}


def write(directory: Path, plan: list[tuple[Any, ...]]) -> Path:
    trail = directory / "audit.jsonl"
    sinks = [open_sink(str(trail), worker=i, workers=3) for i in range(3)]
    try:
        for i, (op, who, target, k, status, ttl, chain) in enumerate(plan):
            decided = _at(2 * i)
            done = _at(2 * i + 1)
            d = decision_event(decided, ACTION[op], target, "wf", f"run-{i}", op)
            sinks[chain].write(d)
            if op == "grant":
                eff = effect(who, target, added=(ITEMS[k],))
            elif op == "revoke":
                eff = effect(who, target, removed=(ITEMS[k],))
            elif op in ("issue", "disable"):
                issued = op == "issue"
                eff = effect(
                    who,
                    target,
                    credential=CREDENTIALS[k],
                    change="issued" if issued else "revoked",
                    issued_at=done if issued else None,
                    expires_at=done + timedelta(minutes=ttl) if issued else None,
                )
            else:
                eff = effect(who, target, account="created" if op == "create" else "deleted")
            error = "TargetUnavailable" if status in ("failed", "timed_out") else ""
            event = outcome_event(d, done, status, effect=eff, error_class=error)
            sinks[(chain + i) % 3].write(event)
    finally:
        for sink in sinks:
            sink.close()
    return directory


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=ops, later=st.integers(0, 90))
def test_access_and_open_grants_equal_the_reference_model(
    plan: list[tuple[Any, ...]], later: int
) -> None:
    now = _at(2 * len(plan) + later)
    with tempfile.TemporaryDirectory() as tmp:
        directory = write(Path(tmp), plan)
        store = open_store([directory], Options(now=now))
        try:
            assert store.verification.ok, store.verification.summary()
            held = {
                (r["kind"], r["identity"], r["target"], r["item"]): r["since"]
                for r in answers.access(store).rows
            }
            opened = {
                (r["kind"], r["identity"], r["target"], r["item"])
                for r in answers.open_grants(store).rows
            }
        finally:
            store.close()
    want = reference(plan, now)
    assert held == {
        k: v.isoformat(timespec="microseconds").replace("+00:00", "Z") for k, v in want.items()
    }
    assert opened == set(want)
