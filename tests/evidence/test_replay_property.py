"""Property: the replay (store.replay_access) pairs exactly as the plain replay it
replaced: for any interleaving of changing outcomes (several changes in one step,
ties in time, credentials expiring, undeclared actions, steps that did not succeed
or name no identity), with and without the bundle's pairs, the grants table equals,
row for row, what the reference below makes: the replay as it was written before
it was made faster (each row's `changes` as lists, a reference per row, grants as
mutable lists re-dumped when written), kept here as the model."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.core.bundle import load_bundle
from sidecar.core.lifecycle import Lifecycle
from sidecar.evidence.options import Options
from sidecar.evidence.store import INDEXES, SCHEMA, Store, closers, replay_access
from sidecar.evidence.verification import Verification
from tests.helpers import ROOT

LIFECYCLE = load_bundle(ROOT / "policies").lifecycle
ACTIONS = (
    "grant_access",
    "change_access",
    "revoke_access",
    "create_account",
    "delete_account",
    "issue_credential",
    "disable_credential",
    "notify",  # declared nowhere
)
Key = tuple[str, str, str, str]


def _at(minute: int, second: int = 0) -> str:
    return f"2026-01-05T08:{minute:02d}:{second:02d}.000Z"


names = st.lists(st.sampled_from(("e1", "e2", "e3")), max_size=3)
steps = st.lists(
    st.fixed_dictionaries(
        {
            "minute": st.integers(0, 5),  # ties in time are common
            "late": st.integers(0, 2),  # recorded this many minutes after
            "file": st.sampled_from(("a.jsonl", "b.jsonl")),
            "status": st.sampled_from(("succeeded", "succeeded", "succeeded", "failed")),
            "action": st.sampled_from(ACTIONS),
            "identity": st.sampled_from(('User::"ann"', 'User::"ann"', 'User::"ben"', "")),
            "target": st.sampled_from(("github", "github", "jira")),
            "added": names,
            "removed": names,
            "cred": st.sampled_from(("", "c1", "c1", "c2")),
            "change": st.sampled_from(("", "issued", "revoked", "rotated")),
            "ttl": st.one_of(st.none(), st.integers(0, 3)),  # minutes; none: no expiry
            "second": st.sampled_from((0, 0, 30)),  # 0: it may expire as a step happens
            "account": st.sampled_from(("", "", "created", "disabled", "deleted", "locked")),
            "workflow": st.sampled_from(("onboarding", "leaver", "legacy-offboarding")),
            "run": st.sampled_from(("r1", "r2", "r3", "")),
        }
    ),
    max_size=40,
)


def _rows(plan: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Outcome rows (rows.OUTCOME_COLUMNS) of the plan, in the order a chain wrote them."""
    out = []
    lines = {"a.jsonl": 0, "b.jsonl": 0}
    for i, s in enumerate(plan):
        lines[s["file"]] += 1
        minute = s["minute"]
        expires = _at(min(59, minute + s["ttl"]), s["second"]) if s["ttl"] is not None else ""
        out.append(
            (
                f"o-{i}",
                _at(minute),
                _at(minute + s["late"]),
                f"d-{i}",
                "ALLOW",
                s["status"],
                "",
                1,
                s["workflow"],
                s["run"],
                "step",
                f'Action::"{s["action"]}"',
                s["identity"],
                s["target"],
                orjson.dumps(s["added"]).decode(),
                orjson.dumps(s["removed"]).decode(),
                s["cred"],
                s["change"],
                expires,
                s["account"],
                "",
                s["file"],
                lines[s["file"]],
                i if i % 7 else -1,
                "",
                "",
            )
        )
    return out


def _decisions(plan: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each step's decision (rows.DECISION_COLUMNS), a minute before its outcome."""
    return [
        (
            f"d-{i}",
            _at(max(0, s["minute"] - 1)),
            "ALLOW",
            "",
            f'Action::"{s["action"]}"',
            s["target"],
            s["workflow"],
            s["run"],
            "step",
            *("", "", "", "", ""),  # requester, approver, ticket, sensitivity, not_after
            None,
            0,
            "c.jsonl",
            i + 1,
            i,
        )
        for i, s in enumerate(plan)
    ]


def _store(plan: list[dict[str, Any]], now: str, lifecycle: Lifecycle | None) -> Store:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    db.executemany(f"INSERT INTO decisions VALUES ({','.join('?' * 19)})", _decisions(plan))
    db.executemany(f"INSERT INTO outcomes VALUES ({','.join('?' * 26)})", _rows(plan))
    db.executescript(INDEXES)
    # Leaver workflows: the bundle's (leaver, legacy-offboarding), else `leaver`.
    options = Options(now=datetime.now(UTC), lifecycle=lifecycle)
    return Store(db, Verification(()), options, now)


# --- the reference: the replay as it was before it was made faster ------------------------

_CHANGING = """
SELECT id, time, decision_id, action, identity, target, added, removed, cred_id, cred_change,
    expires_at, account, file, line, seq
FROM outcomes WHERE status = 'succeeded' AND identity != '' AND (added != '[]'
    OR removed != '[]' OR (cred_id != '' AND cred_change IN ('issued', 'revoked'))
    OR account IN ('created', 'disabled', 'deleted'))
ORDER BY time, recorded, file, line
"""


def _changes(row: tuple[Any, ...]) -> tuple[list[tuple[Key, str]], list[Key]]:
    identity, target = row[4], row[5]
    if not identity:
        return [], []
    opened: list[tuple[Key, str]] = [
        (("entitlement", identity, target, name), "") for name in orjson.loads(row[6])
    ]
    closed: list[Key] = [("entitlement", identity, target, name) for name in orjson.loads(row[7])]
    if row[8] and row[9] == "issued":
        opened.append((("credential", identity, target, row[8]), row[10]))
    elif row[8] and row[9] == "revoked":
        closed.append(("credential", identity, target, row[8]))
    if row[11] == "created":
        opened.append((("account", identity, target, ""), ""))
    elif row[11] in ("disabled", "deleted"):
        closed.append(("account", identity, target, ""))
    return opened, closed


def _closes(
    closing: dict[str, frozenset[str]] | None, creators: frozenset[str], remover: str, creator: str
) -> bool:
    if closing is None or remover not in closing or creator not in creators:
        return True
    return creator in closing[remover]


def reference(
    db: sqlite3.Connection, now: str, lifecycle: Lifecycle | None
) -> list[tuple[Any, ...]]:
    """The grants rows, by n."""
    closing = closers(lifecycle)
    creators = frozenset(str(u) for u in lifecycle.creates) if lifecycle else frozenset()
    open_: dict[Key, list[Any]] = {}
    done: list[list[Any]] = []
    count = 0

    def close(key: Key, grant: list[Any], at: str, how: str, by: str = "", ref: str = "") -> None:
        del open_[key]
        grant[9:12] = at, how, by
        if ref:
            grant[12].append(ref)
        done.append(grant)

    for row in db.execute(_CHANGING):
        at = row[1]
        ref = f"{row[12]}:{row[13]}#seq={row[14]}"
        opened, closed = _changes(row)
        for key in closed:
            held = open_.get(key)
            if held is None:
                continue
            if held[8] and held[8] <= at:
                close(key, held, held[8], "expired")
            elif _closes(closing, creators, row[3], held[13]):
                close(key, held, at, "revoked", row[0], ref)
        for key, expires_at in opened:
            held = open_.get(key)
            if held is not None:
                if not (held[8] and held[8] <= at):
                    continue
                close(key, held, held[8], "expired")
            count += 1
            open_[key] = [count, *key, at, row[0], row[2], expires_at, None, "", "", [ref], row[3]]
    for key, held in list(open_.items()):
        if held[8] and held[8] <= now:
            close(key, held, held[8], "expired")
    done.extend(open_.values())
    return sorted((*g[:12], orjson.dumps(g[12]).decode()) for g in done)


def _step(minute: int, action: str, **changes: Any) -> dict[str, Any]:
    base = {
        "minute": minute,
        "late": 0,
        "file": "a.jsonl",
        "status": "succeeded",
        "action": action,
        "identity": 'User::"ann"',
        "target": "github",
        "added": [],
        "removed": [],
        "cred": "",
        "change": "",
        "ttl": None,
        "second": 0,
        "account": "",
        "workflow": "onboarding",
        "run": "r1",
    }
    return base | changes


# On the instant of an expiry: issued again, revoked, and at `now`.
_AT_EXPIRY = [
    _step(1, "issue_credential", cred="c1", change="issued", ttl=2),
    _step(3, "issue_credential", cred="c1", change="issued", ttl=1),
    _step(4, "disable_credential", cred="c1", change="revoked"),
    _step(4, "issue_credential", cred="c2", change="issued", ttl=2),
]


# The leaver rows as `_leavers` found them before it looked identities up run by run.
_LEAVERS = """
SELECT r.run, r.workflow, o.identity, r.leaver_at, g.n
FROM (SELECT workflow, run, MIN(time) AS leaver_at FROM decisions
      WHERE workflow IN ({marks}) AND run != '' GROUP BY workflow, run) AS r
JOIN (SELECT DISTINCT run, identity FROM outcomes WHERE identity != '') AS o
     ON o.run = r.run
LEFT JOIN grants AS g ON g.identity = o.identity AND g.opened_at <= r.leaver_at
     AND (g.closed_at IS NULL OR g.closed_at > r.leaver_at)
"""


@settings(max_examples=500, deadline=None)
@example(plan=_AT_EXPIRY, now_minute=6, paired=True)
@given(plan=steps, now_minute=st.integers(0, 10), paired=st.booleans())
def test_the_replay_makes_the_grants_the_reference_makes(
    plan: list[dict[str, Any]], now_minute: int, paired: bool
) -> None:
    lifecycle = LIFECYCLE if paired else None
    now = _at(now_minute)
    store = _store(plan, now, lifecycle)
    try:
        want = reference(store.db, now, lifecycle)
        replay_access(store)
        got = store.db.execute("SELECT * FROM grants ORDER BY n").fetchall()
        store.db.execute(  # as store.SCHEMA makes `leavers`
            "CREATE TABLE leavers_before (run TEXT, workflow TEXT, identity TEXT, "
            "leaver_at TEXT, grant_n INTEGER, PRIMARY KEY (run, identity, grant_n))"
        )
        workflows = sorted(store.options.leavers)
        marks = ",".join("?" * len(workflows))
        store.db.execute(
            f"INSERT OR IGNORE INTO leavers_before {_LEAVERS.format(marks=marks)}", workflows
        )
        # The leaver rows, in the order they went in (what no ORDER BY reads them in).
        leavers = store.db.execute("SELECT * FROM leavers ORDER BY rowid").fetchall()
        leavers_before = store.db.execute("SELECT * FROM leavers_before ORDER BY rowid").fetchall()
    finally:
        store.close()
    assert got == want
    assert leavers == leavers_before
