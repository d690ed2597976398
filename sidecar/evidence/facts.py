"""What `inventory` says of each workflow, counted while the decisions are loaded.

`inventory` summarises every decision of a workflow: how many, which actions were
allowed, with or without an approver, by whom requested and approved, and each
action's first decision. Asked of millions of decision rows, that is several
scans of the whole table; counted as each row is made (ingest.py's Sink, in the
chains' own processes), it is a few small tables: one row per workflow and action
per chain (`inventory_actions`), and the distinct requesters, approvers and
tickets (`inventory_names`). The store merges the chains' counts when asked.

The counts are exact only when every decision row counted is in the store: a
decision read twice (the same trail given twice) is stored once, and then the
store answers `inventory` from the decisions table as before (store.py checks).
"""

from __future__ import annotations

import sqlite3
from typing import Any

TABLES = """
CREATE TABLE inventory_actions (workflow TEXT, action TEXT, n INTEGER, allowed INTEGER,
    approved INTEGER, first_time TEXT, first_run TEXT, file TEXT, line INTEGER, seq INTEGER,
    chain INTEGER);
CREATE TABLE inventory_names (workflow TEXT, kind TEXT, value TEXT);
CREATE TABLE inventory_changers (action TEXT);
CREATE TABLE inventory_counts (decisions INTEGER, outcomes INTEGER);
"""
_NAMES = ("requesters", "approvers", "tickets")


class Facts:
    """One chain's inventory counts, from its decision rows (ingest.DECISION_COLUMNS)."""

    def __init__(self) -> None:
        # (workflow, action) -> [n, allowed, approved, first time, its run, file, line, seq]
        self.actions: dict[tuple[str, str], list[Any]] = {}
        # workflow -> (requesters, approvers, tickets)
        self.names: dict[str, tuple[set[str], set[str], set[str]]] = {}
        self.decisions = 0
        self.outcomes = 0
        # Actions seen changing someone's access in a reported effect.
        self.changers: set[str] = set()

    def outcome(self, row: tuple[Any, ...]) -> None:
        """Count one outcome row (ingest.OUTCOME_COLUMNS)."""
        self.outcomes += 1
        if row[11] and row[12] and (row[14] != "[]" or row[15] != "[]" or row[17] or row[19]):
            self.changers.add(row[11])

    def add(self, row: tuple[Any, ...]) -> None:
        """Count one decision row. The first decision is the earliest by (time, run),
        the first read on a tie: the row SQLite's MIN(time) picked when it scanned the
        decisions by the (workflow, run, time) index in the order they were loaded."""
        self.decisions += 1
        workflow = row[6]
        key = (workflow, row[4])
        allowed = row[2] == "ALLOW"
        counts = self.actions.get(key)
        if counts is None:
            self.actions[key] = [1, 0, 0, row[1], row[7], row[16], row[17], row[18]]
            counts = self.actions[key]
        else:
            counts[0] += 1
            if (row[1], row[7]) < (counts[3], counts[4]):
                counts[3:8] = row[1], row[7], row[16], row[17], row[18]
        if allowed:
            counts[1] += 1
            if row[10]:
                counts[2] += 1
        names = self.names.get(workflow)
        if names is None:
            names = self.names[workflow] = (set(), set(), set())
        if row[9]:
            names[0].add(row[9])
        if row[10]:
            names[1].add(row[10])
        if row[11]:
            names[2].add(row[11])

    def write(self, db: sqlite3.Connection, chain: int) -> None:
        """Into the tables (made by `TABLES`) as chain number `chain`; then empty."""
        db.executemany(
            "INSERT INTO inventory_actions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(*key, *counts, chain) for key, counts in self.actions.items()],
        )
        db.executemany(
            "INSERT INTO inventory_names VALUES (?,?,?)",
            (
                (workflow, kind, value)
                for workflow, sets in self.names.items()
                for kind, values in zip(_NAMES, sets, strict=True)
                for value in values
            ),
        )
        db.executemany("INSERT INTO inventory_changers VALUES (?)", ((a,) for a in self.changers))
        db.execute("INSERT INTO inventory_counts VALUES (?, ?)", (self.decisions, self.outcomes))
        self.__init__()  # type: ignore[misc]


def exact(db: sqlite3.Connection) -> bool:
    """Whether the facts counted exactly the decisions and outcomes stored (a record
    read twice is stored once: then they are not)."""
    counts = db.execute(
        "SELECT COALESCE(SUM(decisions), 0), COALESCE(SUM(outcomes), 0) FROM inventory_counts"
    ).fetchone()
    stored = db.execute(
        "SELECT (SELECT COUNT(*) FROM decisions), (SELECT COUNT(*) FROM outcomes)"
    ).fetchone()
    return tuple(counts) == tuple(stored)


def changing_workflows(db: sqlite3.Connection, changing: set[str]) -> list[str]:
    """The workflows with a decision on one of the `changing` actions, in order."""
    return sorted(
        {
            wf
            for wf, action in db.execute("SELECT workflow, action FROM inventory_actions")
            if action in changing
        }
    )


def changers(db: sqlite3.Connection) -> set[str]:
    """Actions seen changing someone's access in a reported effect."""
    return {a for (a,) in db.execute("SELECT action FROM inventory_changers")}


def empty_facts(workflows: list[str]) -> dict[str, dict[str, Any]]:
    """What inventory says of each workflow before anything is counted."""
    return {
        wf: {
            "decisions": 0,
            "runs": 0,
            "changes": 0,
            "approved": 0,
            "actions": set(),
            "requesters": set(),
            "approvers": set(),
            "tickets": set(),
            "evidence": [],
        }
        for wf in workflows
    }


def workflow_facts(
    db: sqlite3.Connection, workflows: list[str], changing: set[str]
) -> dict[str, dict[str, Any]]:
    """answers._workflow_facts, from the counted facts: the same dict per workflow."""
    facts = empty_facts(workflows)
    firsts: dict[tuple[str, str], tuple[str, str, int, str, int, int]] = {}
    for wf, action, n, allowed, approved, first, run, file, line, seq, chain in db.execute(
        "SELECT * FROM inventory_actions ORDER BY chain"
    ):
        f = facts.get(wf)
        if f is None:
            continue
        f["decisions"] += n
        if action in changing:
            f["changes"] += allowed
            f["approved"] += approved
        if allowed and action:
            f["actions"].add(action)
        best = firsts.get((wf, action))
        if best is None or (first, run) < best[:2]:
            firsts[(wf, action)] = (first, run, chain, file, line, seq)
    # By workflow and first time, ties in action order (the order GROUP BY left them in).
    ordered = sorted(firsts.items(), key=lambda item: (item[0][0], item[1][0], item[0][1]))
    for (wf, _), (_, _, _, file, line, seq) in ordered:
        facts[wf]["evidence"].append(f"{file}:{line}#seq={seq}")
    for wf, kind, value in db.execute("SELECT workflow, kind, value FROM inventory_names"):
        f = facts.get(wf)
        if f is not None:
            f[kind].add(value)
    marks = ",".join("?" * len(workflows))
    for wf, runs in db.execute(
        # only placeholders are formatted in; the values are bound
        f"SELECT workflow, COUNT(DISTINCT run) FROM decisions "  # noqa: S608
        f"WHERE workflow IN ({marks}) GROUP BY workflow",
        workflows,
    ):
        facts[wf]["runs"] = runs
    return facts


__all__ = [
    "TABLES",
    "Facts",
    "changers",
    "changing_workflows",
    "empty_facts",
    "exact",
    "workflow_facts",
]
