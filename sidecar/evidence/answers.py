"""The auditor's answers, read from a loaded evidence store (store.py).

Each answer is a table: named columns, one dict per row, and for every row
`evidence`, the chained records it rests on (`segment-file:line#seq=N`). Every
answer carries the trail's verification (`audit verify`'s verdict): evidence
read from a broken chain says so. What each answer means to an auditor is in
docs/evidence.md, "Answers".
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sidecar.evidence.store import (
    RAN,
    Store,
    Verification,
    parse_time,
    ref_of,
    rows,
    seconds_between,
)


@dataclass(frozen=True, slots=True)
class Answer:
    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    verification: Verification
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.name,
            "verification": self.verification.to_json(),
            "summary": self.summary,
            "columns": [*self.columns, "evidence"],
            "rows": self.rows,
        }


def duration_text(seconds: float | None) -> str:
    """`1d 2h 3m` style, for tables; "" when there is none."""
    if seconds is None:
        return ""
    sign = "-" if seconds < 0 else ""
    left = round(abs(seconds))
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m")) if v]
    if secs or not parts:
        parts.append(f"{secs}s")
    return sign + " ".join(parts)


# --- grants with their deadlines ----------------------------------------------------------

_GRANTS = """
SELECT g.n, g.kind, g.identity, g.target, g.item, g.opened_at, g.decision_id, g.expires_at,
       g.closed_at, g.closed_how, g.refs,
       d.workflow, d.run, d.requester, d.approver, d.ticket, d.sensitivity, d.not_after,
       d.revoke_within_s, d.file, d.line, d.seq,
       (SELECT MIN(l.leaver_at) FROM leavers AS l
         WHERE l.identity = g.identity AND l.leaver_at >= g.opened_at) AS leaver_at
FROM grants AS g LEFT JOIN decisions AS d ON d.id = g.decision_id
"""


def grant_rows(store: Store, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Grants (one per access) with their decision, state and deadline measured."""
    sql = _GRANTS + (f" WHERE {where}" if where else "") + " ORDER BY g.opened_at, g.n"
    out = []
    for g in rows(store.db, sql, params):
        _measure(store, g)
        out.append(g)
    return out


def _measure(store: Store, g: dict[str, Any]) -> None:
    """State, end, deadline, time to revoke and how much a deadline was missed by."""
    refs = json.loads(g.pop("refs"))
    if g.get("file"):
        refs.insert(0, ref_of(g))
    for name in ("file", "line", "seq"):
        g.pop(name, None)
    g["evidence"] = refs
    g["state"] = "open" if g["closed_at"] is None else g["closed_how"]
    ends = [t for t in (g["not_after"], g["leaver_at"]) if t]
    end = min(ends) if ends else None
    g["end"] = end
    limit = store.options.deadlines.resolve(
        g["target"], g["sensitivity"] or "", g["revoke_within_s"]
    )
    g["deadline_s"] = limit
    g["deadline_at"] = None
    g["time_to_revoke_s"] = None
    g["missed_by_s"] = None
    if end is None:
        return
    if g["closed_at"] is not None:
        g["time_to_revoke_s"] = max(0.0, seconds_between(end, g["closed_at"]))
    if limit is None:
        return
    deadline = parse_time(end) + timedelta(seconds=limit)
    g["deadline_at"] = deadline.isoformat().replace("+00:00", "Z")
    closed = g["closed_at"] or store.now
    late = (parse_time(closed) - deadline).total_seconds()
    g["missed_by_s"] = late if late > 0 else 0.0


def _cells(g: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {**{c: g.get(c) for c in columns}, "evidence": g["evidence"]}


ACCESS_COLUMNS = (
    "identity",
    "target",
    "kind",
    "item",
    "since",
    "expires_at",
    "decision_id",
    "workflow",
    "run",
    "approver",
)


def access(store: Store, identity: str = "", target: str = "") -> Answer:
    """Who holds what now according to the evidence, since when, granted by which
    decision, run and approver. `identity` matches `Type::"id"` or the bare id."""
    where = ["g.closed_at IS NULL"]
    params: list[Any] = []
    if identity:
        where.append("(g.identity = ? OR g.identity LIKE ? ESCAPE '\\')")
        params += [identity, '%::"' + _like(identity) + '"']
    if target:
        where.append("g.target = ?")
        params.append(target)
    out = []
    for g in grant_rows(store, " AND ".join(where), params):
        g["since"] = g["opened_at"]
        out.append(_cells(g, ACCESS_COLUMNS))
    return Answer("access", ACCESS_COLUMNS, out, store.verification, {"held": len(out)})


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


OPEN_COLUMNS = (
    "identity",
    "target",
    "kind",
    "item",
    "since",
    "age",
    "run",
    "approver",
    "deadline_at",
    "missed_by",
)


def open_grants(store: Store) -> Answer:
    """Access granted and never removed (neither revoked nor, for a credential, expired),
    with its age and, when it has ended (time bound, leaver event), how late it is."""
    out = []
    for g in grant_rows(store, "g.closed_at IS NULL"):
        g["since"] = g["opened_at"]
        g["age"] = duration_text(seconds_between(g["opened_at"], store.now))
        g["missed_by"] = duration_text(g["missed_by_s"]) if g["missed_by_s"] else ""
        out.append(_cells(g, OPEN_COLUMNS))
    return Answer("open-grants", OPEN_COLUMNS, out, store.verification, {"open": len(out)})


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


def leaver_runs(store: Store) -> list[LeaverRun]:
    """Each leaver run and identity with the access held at its leaver event, measured."""
    by_n = {g["n"]: g for g in grant_rows(store, "g.n IN (SELECT grant_n FROM leavers)")}
    runs: dict[tuple[str, str], LeaverRun] = {}
    for r in rows(
        store.db,
        "SELECT run, workflow, identity, leaver_at, grant_n FROM leavers "
        "ORDER BY leaver_at, run, identity, grant_n",
    ):
        lr = runs.setdefault(
            (r["run"], r["identity"]),
            LeaverRun(r["run"], r["workflow"], r["identity"], r["leaver_at"]),
        )
        if r["grant_n"] is not None:
            lr.grants.append(by_n[r["grant_n"]])
    for lr in runs.values():
        lr.failures = list(
            rows(
                store.db,
                "SELECT * FROM outcomes WHERE run = ? AND identity = ? AND status IN "
                "('failed', 'timed_out') ORDER BY time",
                (lr.run, lr.identity),
            )
        )
        lr.denied = list(
            rows(
                store.db,
                "SELECT * FROM decisions WHERE run = ? AND workflow = ? AND decision = 'DENY' "
                "ORDER BY time",
                (lr.run, lr.workflow),
            )
        )
    return list(runs.values())


def leavers(store: Store, *, everything: bool = False) -> Answer:
    """Leaver runs whose deprovisioning did not complete on every target the identity
    had access to, every removal that missed its deadline (by how much), and
    credentials past their expiry that were never revoked. `everything` adds the
    accesses that were removed in time."""
    out: list[dict[str, Any]] = []
    runs = leaver_runs(store)
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
    listed = {g["n"] for lr in runs for g in lr.grants}
    for g in grant_rows(store, "g.closed_how = 'expired'"):
        if g["n"] in listed:
            continue  # listed with its leaver run
        out.append(
            {
                "identity": g["identity"],
                "run": "",
                "leaver_at": None,
                "target": g["target"],
                "kind": g["kind"],
                "item": g["item"],
                "finding": "credential expired, not revoked",
                "closed_at": g["closed_at"],
                "deadline_at": None,
                "missed_by": "",
                "missed_by_s": None,
                "evidence": g["evidence"],
            }
        )
    # A leaver is a person: one whose leaver workflow ran twice counts once, and is
    # fully deprovisioned when every run of it found everything closed.
    people = {lr.identity for lr in runs}
    incomplete = {lr.identity for lr in runs if not lr.complete}
    complete = len(people - incomplete)
    summary = {
        "leavers": len(people),
        "fully_deprovisioned": complete,
        "incomplete": sorted(incomplete),
        "missed_deadline": sorted({lr.identity for lr in runs if lr.late}),
        "revocation_confidence": confidence(complete, len(people)),
    }
    return Answer("leavers", LEAVER_COLUMNS, out, store.verification, summary)


def _names_item(failure: dict[str, Any], g: dict[str, Any]) -> bool:
    """Whether a failed step tried to remove this access (same kind and item)."""
    if g["kind"] == "entitlement":
        return g["item"] in json.loads(failure["removed"])
    if g["kind"] == "credential":
        return bool(failure["cred_id"] == g["item"])
    return failure["account"] in ("disabled", "deleted")


def confidence(complete: int, total: int) -> float | None:
    """Revocation confidence: leavers fully deprovisioned / leavers (None with no leaver)."""
    return complete / total if total else None


# --- exceptions ---------------------------------------------------------------------------

EXCEPTION_COLUMNS = (
    "time",
    "category",
    "detail",
    "workflow",
    "run",
    "step",
    "action",
    "identity",
    "target",
)


def exceptions(store: Store) -> Answer:
    """Violations, break-glass decisions, denied steps that ran anyway, failed
    revocations and retries, in time order."""
    out: list[dict[str, Any]] = []
    removers = _removing_actions(store)
    exceptional = (
        "SELECT * FROM outcomes WHERE violation != '' OR attempt > 1 OR status IN "
        "('failed', 'timed_out') ORDER BY time, recorded, file, line"
    )
    for o in rows(store.db, exceptional):
        base = {c: o.get(c) for c in ("time", "workflow", "run", "step", "action", "identity")}
        base["target"] = o["target"]
        evidence = [ref_of(o), *_decision_ref(store, o["decision_id"])]
        if o["violation"]:
            denied = o["decided"] == "DENY" and o["status"] in RAN
            category = "denied step ran" if denied else "violation"
            out.append(
                {**base, "category": category, "detail": o["violation"], "evidence": evidence}
            )
        removes = (
            json.loads(o["removed"])
            or o["cred_change"] == "revoked"
            or o["account"] in ("disabled", "deleted")
            or o["action"] in removers
        )
        if removes and o["status"] in ("failed", "timed_out"):
            detail = f"{o['status']}" + (f" ({o['error_class']})" if o["error_class"] else "")
            out.append(
                {**base, "category": "failed revocation", "detail": detail, "evidence": evidence}
            )
        if o["attempt"] > 1:
            out.append(
                {
                    **base,
                    "category": "retry",
                    "detail": f"attempt {o['attempt']}, {o['status']}",
                    "evidence": evidence,
                }
            )
    for d in rows(store.db, "SELECT * FROM decisions WHERE break_glass = 1 ORDER BY time"):
        out.append(
            {
                "time": d["time"],
                "category": "break-glass",
                "detail": f"{d['decision']}, ticket {d['ticket']}, approver {d['approver']}",
                "workflow": d["workflow"],
                "run": d["run"],
                "step": d["step"],
                "action": d["action"],
                "identity": "",
                "target": d["target"],
                "evidence": [ref_of(d)],
            }
        )
    out.sort(key=lambda r: (r["time"] or "", r["category"]))
    counts: dict[str, int] = defaultdict(int)
    for r in out:
        counts[r["category"]] += 1
    return Answer("exceptions", EXCEPTION_COLUMNS, out, store.verification, dict(counts))


def _decision_ref(store: Store, decision_id: str) -> list[str]:
    return [
        ref_of(d)
        for d in rows(
            store.db, "SELECT file, line, seq FROM decisions WHERE id = ?", (decision_id,)
        )
    ]


def _removing_actions(store: Store) -> set[str]:
    lifecycle = store.options.lifecycle
    return {str(u) for u in lifecycle.removes} if lifecycle is not None else set()


# --- inventory ----------------------------------------------------------------------------

INVENTORY_COLUMNS = (
    "workflow",
    "actions",
    "requesters",
    "approvers",
    "tickets",
    "needs_approval",
    "decisions",
    "runs",
)


def inventory(store: Store) -> Answer:
    """Every identity-changing workflow seen: its owner (the requesters, approvers and
    tickets its decisions carry), the actions it can take (allowed at least once), and
    whether it needs a human approval (every allowed identity-changing step had one)."""
    changing = _changing_actions(store)
    marks = ",".join("?" * len(changing))
    out: list[dict[str, Any]] = []
    if not changing:
        return Answer("inventory", INVENTORY_COLUMNS, out, store.verification, {"workflows": 0})
    workflows = [
        r["workflow"]
        for r in rows(
            store.db,
            # only placeholders are formatted in; the values are bound
            f"SELECT DISTINCT workflow FROM decisions WHERE action IN ({marks}) "  # noqa: S608
            "ORDER BY workflow",
            sorted(changing),
        )
    ]
    for wf in workflows:
        ds = list(rows(store.db, "SELECT * FROM decisions WHERE workflow = ? ORDER BY time", (wf,)))
        allowed = [d for d in ds if d["decision"] == "ALLOW"]
        changes = [d for d in allowed if d["action"] in changing]
        approved = sum(1 for d in changes if d["approver"])
        if changes and approved == len(changes):
            needs = "yes"
        elif approved:
            needs = f"partly ({approved}/{len(changes)})"
        else:
            needs = "no"
        first_of: dict[str, dict[str, Any]] = {}
        for d in ds:
            first_of.setdefault(d["action"], d)
        out.append(
            {
                "workflow": wf,
                "actions": _joined(d["action"] for d in allowed),
                "requesters": _joined(d["requester"] for d in ds),
                "approvers": _joined(d["approver"] for d in ds),
                "tickets": _joined(d["ticket"] for d in ds),
                "needs_approval": needs,
                "decisions": len(ds),
                "runs": len({d["run"] for d in ds}),
                "evidence": [ref_of(d) for d in first_of.values()],
            }
        )
    return Answer("inventory", INVENTORY_COLUMNS, out, store.verification, {"workflows": len(out)})


def _joined(values: Any) -> str:
    return ", ".join(sorted({v for v in values if v}))


def _changing_actions(store: Store) -> set[str]:
    """Actions that change identity: declared in the bundle's lifecycle, or seen
    changing someone's access in a reported effect."""
    lifecycle = store.options.lifecycle
    out = set()
    if lifecycle is not None:
        out |= {str(u) for u in (*lifecycle.creates, *lifecycle.removes)}
    changed = (
        "SELECT DISTINCT action FROM outcomes WHERE identity != '' AND (added != '[]' "
        "OR removed != '[]' OR cred_change != '' OR account != '')"
    )
    for r in rows(store.db, changed):
        if r["action"]:
            out.add(r["action"])
    return out


# --- figures for the report ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def time_to_revoke(store: Store) -> list[dict[str, Any]]:
    """Per target: how long revocations took after the access ended (p50, p95, max),
    with the evidence of the slowest one."""
    by_target: dict[str, list[tuple[float, list[str]]]] = defaultdict(list)
    for g in grant_rows(store, "g.closed_how = 'revoked'"):
        if g["time_to_revoke_s"] is not None:
            by_target[g["target"]].append((g["time_to_revoke_s"], g["evidence"]))
    out = []
    for target, found in sorted(by_target.items()):
        values = [v for v, _ in found]
        slowest = max(found, key=lambda f: f[0])
        out.append(
            {
                "target": target,
                "revocations": len(values),
                "p50_s": percentile(values, 50),
                "p95_s": percentile(values, 95),
                "max_s": slowest[0],
                "evidence": slowest[1],
            }
        )
    return out
