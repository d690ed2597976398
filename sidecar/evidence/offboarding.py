"""Leavers, their deadlines and time to revoke, read from a loaded evidence store.

The answers about deprovisioning: each leaver run with the access the identity
held at its leaver event, measured against the removal deadlines (answers.py
measures each grant), and how long revocations took per target. What they mean
to an auditor is in docs/evidence.md, "Answers".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.evidence.answers import Answer, acyclic, duration_text, each_grant, grant_rows
from sidecar.evidence.store import Store, ref_of, rows

# --- leavers ------------------------------------------------------------------------------

LEAVER_COLUMNS = (
    "identity",
    "run",
    "leaver_at",
    "target",
    "kind",
    "item",
    "finding",
    "closed_at",
    "deadline_at",
    "missed_by",
)


@dataclass(slots=True)
class LeaverRun:
    run: str
    workflow: str
    identity: str
    leaver_at: str
    grants: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    denied: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every access the identity held at the leaver event is closed."""
        return all(g["closed_at"] is not None for g in self.grants)

    @property
    def late(self) -> list[dict[str, Any]]:
        return [g for g in self.grants if g["missed_by_s"]]


def leaver_runs(store: Store, *, in_time: bool = True) -> list[LeaverRun]:
    """Each leaver run and identity with the access held at its leaver event, measured.

    `in_time=False` leaves out the accesses surely revoked before their deadline
    (store.py's `leaver_findings` holds the others): a run's `complete` and `late`
    are the same without them, and a large trail's leavers held hundreds of
    thousands of accesses, most of them revoked in time."""
    if in_time:
        by_n = {g["n"]: g for g in grant_rows(store, "g.n IN (SELECT grant_n FROM leavers)")}
    else:
        where = "g.n IN (SELECT n FROM leaver_findings)"
        by_n = {g["n"]: g for g in grant_rows(store, where)}
    # Only the runs with an access kept, when some are left out.
    kept = "" if in_time else " WHERE grant_n IN (SELECT n FROM leaver_findings)"
    runs: dict[tuple[str, str], LeaverRun] = {}
    # Each run and identity, where it first comes in (leaver_at, run, identity, grant_n).
    # Only the `kept` text above is formatted into these queries.
    for run, identity, leaver_at, workflow in store.db.execute(
        "SELECT run, identity, MIN(leaver_at) AS first, workflow FROM leavers "  # noqa: S608
        + (
            ""
            if in_time
            else f"WHERE (run, identity) IN (SELECT run, identity FROM leavers{kept}) "  # noqa: S608
        )
        + "GROUP BY run, identity ORDER BY first, run, identity"
    ):
        runs[(run, identity)] = LeaverRun(run, workflow, identity, leaver_at)
    for run, identity, n in store.db.execute(
        "SELECT run, identity, grant_n FROM leavers "  # noqa: S608
        + (kept or " WHERE grant_n IS NOT NULL")
        + " ORDER BY leaver_at, run, identity, grant_n"
    ):
        g = by_n.get(n)
        if g is not None:
            runs[(run, identity)].grants.append(g)
    # Every leaver run's failed steps and denied decisions, in two queries (not two per run).
    failures: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in rows(
        store.db,
        f"SELECT o.* FROM (SELECT DISTINCT run, identity FROM leavers{kept}) AS l "  # noqa: S608
        "CROSS JOIN outcomes AS o ON o.run = l.run AND o.identity = l.identity "
        "WHERE o.status IN ('failed', 'timed_out') ORDER BY o.time",
    ):
        failures[(f["run"], f["identity"])].append(f)
    denied: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for d in rows(
        store.db,
        "SELECT d.* FROM (SELECT DISTINCT run, workflow FROM leavers"  # noqa: S608
        f"{' WHERE run IN (SELECT run FROM leavers' + kept + ')' if kept else ''}) AS l "  # noqa: S608
        "CROSS JOIN decisions AS d ON d.run = l.run AND d.workflow = l.workflow "
        "WHERE d.decision = 'DENY' ORDER BY d.time",
    ):
        denied[(d["run"], d["workflow"])].append(d)
    for lr in runs.values():
        lr.failures = failures.get((lr.run, lr.identity), [])
        lr.denied = denied.get((lr.run, lr.workflow), [])
    return list(runs.values())


@acyclic
def leavers(store: Store, *, everything: bool = False) -> Answer:
    """Leaver runs whose deprovisioning did not complete on every target the identity
    had access to, every removal that missed its deadline (by how much), and
    credentials past their expiry that were never revoked. `everything` adds the
    accesses that were removed in time."""
    out: list[dict[str, Any]] = []
    runs = leaver_runs(store, in_time=everything)
    for lr in runs:
        for g in lr.grants:
            failed = [f for f in lr.failures if f["target"] == g["target"] and _names_item(f, g)]
            denied = [d for d in lr.denied if d["target"] == g["target"]]
            if g["closed_at"] is None:
                finding = "not revoked"
                if failed:
                    finding = f"revocation {failed[-1]['status']} ({failed[-1]['error_class']})"
                elif denied:
                    finding = "revocation denied"
            elif g["missed_by_s"]:
                finding = f"{g['closed_how']} late"
            elif g["closed_how"] == "expired":
                finding = "expired, not revoked"
            else:
                finding = "revoked" if g["missed_by_s"] is not None else "revoked (no deadline)"
            problem = finding not in ("revoked", "revoked (no deadline)")
            if not (problem or everything):
                continue
            out.append(
                {
                    "identity": lr.identity,
                    "run": lr.run,
                    "leaver_at": lr.leaver_at,
                    "target": g["target"],
                    "kind": g["kind"],
                    "item": g["item"],
                    "finding": finding,
                    "closed_at": g["closed_at"],
                    "deadline_at": g["deadline_at"],
                    "missed_by": duration_text(g["missed_by_s"]) if g["missed_by_s"] else "",
                    "missed_by_s": g["missed_by_s"],
                    "evidence": [
                        *g["evidence"],
                        *(ref_of(f) for f in failed),
                        *(ref_of(d) for d in denied if g["closed_at"] is None),
                    ],
                }
            )
    # Credentials that expired unrevoked, outside any leaver run (those are listed with
    # theirs): what the row shows needs no measuring, only the grant and its decision.
    for identity, target, kind, item, closed_at, refs, file, line, seq in store.db.execute(
        """SELECT g.identity, g.target, g.kind, g.item, g.closed_at, g.refs, d.file, d.line, d.seq
        FROM grants AS g LEFT JOIN decisions AS d ON d.id = g.decision_id
        WHERE g.closed_how = 'expired'
          AND NOT EXISTS (SELECT 1 FROM leavers AS l WHERE l.grant_n = g.n)
        ORDER BY g.opened_at, g.n"""
    ):
        evidence = orjson.loads(refs)
        if file:
            evidence.insert(0, f"{file}:{line}#seq={seq}")
        out.append(
            {
                "identity": identity,
                "run": "",
                "leaver_at": None,
                "target": target,
                "kind": kind,
                "item": item,
                "finding": "credential expired, not revoked",
                "closed_at": closed_at,
                "deadline_at": None,
                "missed_by": "",
                "missed_by_s": None,
                "evidence": evidence,
            }
        )
    # A leaver is a person: one whose leaver workflow ran twice counts once, and is
    # fully deprovisioned when every run of it found everything closed.
    # Counted, not listed: every incomplete one is a leaver (its run is in `leavers`).
    (people,) = store.db.execute("SELECT COUNT(DISTINCT identity) FROM leavers").fetchone()
    incomplete = {lr.identity for lr in runs if not lr.complete}
    complete = people - len(incomplete)
    summary = {
        "leavers": people,
        "fully_deprovisioned": complete,
        "incomplete": sorted(incomplete),
        "missed_deadline": sorted({lr.identity for lr in runs if lr.late}),
        "revocation_confidence": confidence(complete, people),
    }
    return Answer("leavers", LEAVER_COLUMNS, out, store.verification, summary)


def _names_item(failure: dict[str, Any], g: dict[str, Any]) -> bool:
    """Whether a failed step tried to remove this access (same kind and item)."""
    if g["kind"] == "entitlement":
        return g["item"] in orjson.loads(failure["removed"])
    if g["kind"] == "credential":
        return bool(failure["cred_id"] == g["item"])
    return failure["account"] in ("disabled", "deleted")


def confidence(complete: int, total: int) -> float | None:
    """Revocation confidence: leavers fully deprovisioned / leavers (None with no leaver)."""
    return complete / total if total else None


# --- figures for the report ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@acyclic
def time_to_revoke(store: Store) -> list[dict[str, Any]]:
    """Per target: how long revocations took after the access ended (p50, p95, max),
    with the evidence of the slowest one."""
    # Read one at a time; kept per target: every duration, but only the slowest one's
    # evidence. A large trail has millions of revocations: holding each one's measured
    # row was most of the report's memory.
    by_target: dict[str, list[float]] = defaultdict(list)
    slowest: dict[str, tuple[float, list[str]]] = {}
    for g in each_grant(store, "g.closed_how = 'revoked'"):
        took = g["time_to_revoke_s"]
        if took is None:
            continue
        target = g["target"]
        by_target[target].append(took)
        if target not in slowest or took > slowest[target][0]:
            slowest[target] = (took, g["evidence"])
    return [
        {
            "target": target,
            "revocations": len(values),
            "p50_s": percentile(values, 50),
            "p95_s": percentile(values, 95),
            "max_s": slowest[target][0],
            "evidence": slowest[target][1],
        }
        for target, values in sorted(by_target.items())
    ]
