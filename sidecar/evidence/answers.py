"""The auditor's answers, read from a loaded evidence store (store.py).

Each answer is a table: named columns, one dict per row, and for every row
`evidence`, the chained records it rests on (`segment-file:line#seq=N`). Every
answer carries the trail's verification (`audit verify`'s verdict): evidence
read from a broken chain says so. What each answer means to an auditor is in
docs/evidence.md, "Answers".
"""

from __future__ import annotations

import functools
import gc
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

import orjson

from sidecar.evidence.facts import changers, changing_workflows, empty_facts, workflow_facts
from sidecar.evidence.ingest import parse_time
from sidecar.evidence.store import (
    RAN,
    Store,
    ref_of,
    rows,
    seconds_between,
)
from sidecar.evidence.verification import Verification

# What joins the items of a list column (`Answer.lists`); a table splits on it to show
# a long list's first few (cli/evidence.py).
LIST_SEP = ", "


@dataclass(frozen=True, slots=True)
class Answer:
    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    verification: Verification
    summary: dict[str, Any] = field(default_factory=dict)
    # Columns whose text is a list joined by LIST_SEP (`_joined`): a table shows a long
    # one's first few (a year's tickets would make every row pages wide); JSON and CSV all.
    lists: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.name,
            "verification": self.verification.to_json(),
            "summary": self.summary,
            "columns": [*self.columns, "evidence"],
            "rows": self.rows,
        }


_P = ParamSpec("_P")
_R = TypeVar("_R")


def acyclic(answer: Callable[_P, _R]) -> Callable[_P, _R]:
    """An answer builds tens of thousands of rows that hold no cycle (dicts of text,
    numbers and lists); Python's cyclic collector would rescan the growing result
    again and again (about a fifth of the leavers answer at 10 million events), so
    it is paused while the answer is built and resumed after, as it was."""

    @functools.wraps(answer)
    def built(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not gc.isenabled():
            return answer(*args, **kwargs)
        gc.disable()
        try:
            return answer(*args, **kwargs)
        finally:
            gc.enable()

    return built


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
    return list(each_grant(store, where, params))


def each_grant(
    store: Store, where: str = "", params: Sequence[Any] = ()
) -> Iterator[dict[str, Any]]:
    """`grant_rows` one at a time, for an answer that keeps only a summary of them (time
    to revoke reads every revocation: 1.5 million rows of a large trail)."""
    sql = _GRANTS + (f" WHERE {where}" if where else "") + " ORDER BY g.opened_at, g.n"
    for g in rows(store.db, sql, params):
        _measure(store, g)
        yield g


def _measure(store: Store, g: dict[str, Any]) -> None:
    """State, end, deadline, time to revoke and how much a deadline was missed by."""
    refs = orjson.loads(g.pop("refs"))
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


@acyclic
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


@acyclic
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


@acyclic
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
            detail = o["violation"]
            if detail == "caller_mismatch":  # who reported it, when it was not the decider's caller
                detail += f": reported by {o['reporter'] or 'an unauthenticated caller'}"
            out.append({**base, "category": category, "detail": detail, "evidence": evidence})
        removes = (
            orjson.loads(o["removed"])
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


@acyclic
def inventory(store: Store) -> Answer:
    """Every identity-changing workflow seen: its owner (the requesters, approvers and
    tickets its decisions carry), the actions it can take (allowed at least once), and
    whether it needs a human approval (every allowed identity-changing step had one)."""
    changing = _changing_actions(store)
    marks = ",".join("?" * len(changing))
    out: list[dict[str, Any]] = []
    if not changing:
        return Answer("inventory", INVENTORY_COLUMNS, out, store.verification, {"workflows": 0})
    workflows = (
        changing_workflows(store.db, changing)
        if store.facts_exact
        else [
            r["workflow"]
            for r in rows(
                store.db,
                # only placeholders are formatted in; the values are bound
                f"SELECT DISTINCT workflow FROM decisions WHERE action IN ({marks}) "  # noqa: S608
                "ORDER BY workflow",
                sorted(changing),
            )
        ]
    )
    if store.facts_exact:  # counted as the decisions were loaded
        facts = workflow_facts(store.db, workflows, changing)
    else:
        facts = _workflow_facts(store, workflows, sorted(changing))
    for wf in workflows:
        f = facts[wf]
        changes, approved = f["changes"], f["approved"]
        if changes and approved == changes:
            needs = "yes"
        elif approved:
            needs = f"partly ({approved}/{changes})"
        else:
            needs = "no"
        out.append(
            {
                "workflow": wf,
                "actions": _joined(f["actions"]),
                "requesters": _joined(f["requesters"]),
                "approvers": _joined(f["approvers"]),
                "tickets": _joined(f["tickets"]),
                "needs_approval": needs,
                "decisions": f["decisions"],
                "runs": f["runs"],
                "evidence": f["evidence"],
            }
        )
    return Answer(
        "inventory",
        INVENTORY_COLUMNS,
        out,
        store.verification,
        {"workflows": len(out)},
        lists=("actions", "requesters", "approvers", "tickets"),
    )


def _workflow_facts(
    store: Store, workflows: list[str], changing: list[str]
) -> dict[str, dict[str, Any]]:
    """What inventory says of each workflow, counted by SQLite in a few passes over the
    decisions (no decision row reaches Python): counts, the distinct actions allowed,
    requesters, approvers and tickets, and each action's first decision (the evidence)."""
    db = store.db
    wf_marks = ",".join("?" * len(workflows))
    ch_marks = ",".join("?" * len(changing))
    facts = empty_facts(workflows)
    # only placeholders are formatted in; the values are bound
    counted = db.execute(
        f"""SELECT workflow, COUNT(*), COUNT(DISTINCT run),
               SUM(decision = 'ALLOW' AND action IN ({ch_marks})),
               SUM(decision = 'ALLOW' AND action IN ({ch_marks}) AND approver != '')
        FROM decisions WHERE workflow IN ({wf_marks}) GROUP BY workflow""",  # noqa: S608
        [*changing, *changing, *workflows],
    )
    for wf, decisions, runs, changes, approved in counted:
        facts[wf].update(decisions=decisions, runs=runs, changes=changes, approved=approved)
    for name, column, extra in (
        ("actions", "action", "AND decision = 'ALLOW'"),
        ("requesters", "requester", ""),
        ("approvers", "approver", ""),
        ("tickets", "ticket", ""),
    ):
        found = db.execute(
            f"SELECT DISTINCT workflow, {column} FROM decisions "  # noqa: S608
            f"WHERE workflow IN ({wf_marks}) AND {column} != '' {extra}",
            workflows,
        )
        for wf, value in found:
            facts[wf][name].add(value)
    # Each action's first decision (SQLite takes the bare columns from the MIN row).
    firsts = db.execute(
        f"""SELECT workflow, file, line, seq, MIN(time) AS first FROM decisions
        WHERE workflow IN ({wf_marks}) GROUP BY workflow, action ORDER BY workflow, first""",  # noqa: S608
        workflows,
    )
    for wf, file, line, seq, _ in firsts:
        facts[wf]["evidence"].append(ref_of({"file": file, "line": line, "seq": seq}))
    return facts


def _joined(values: Any) -> str:
    return LIST_SEP.join(sorted({v for v in values if v}))


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
    if store.facts_exact:  # counted as the outcomes were loaded
        return out | changers(store.db)
    for r in rows(store.db, changed):
        if r["action"]:
            out.add(r["action"])
    return out
