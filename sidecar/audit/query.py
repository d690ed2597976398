"""`stepguard audit query`: find decisions (and the outcomes reported for them) in a trail.

Filters combine with AND; each entity filter takes `Type::"id"` (exact) or an
id pattern with shell wildcards (`*provisioner`). Records come out in trail
order, which is decision order; the chains of many workers (workers.py) come
out as one trail, by time, then chain, then seq. Typical questions:

    # who received access to payroll, why, and when was it removed?
    stepguard audit query /var/log/stepguard --resource 'TargetSystem::"payroll"' \\
        --decision ALLOW --action grant_access --action revoke_access
    # everything run 42 of the onboarding workflow asked, as JSON lines
    stepguard audit query audit.jsonl --workflow onboarding --run 42 --format json
    # what became of decision D, and which steps ran without a decision in force?
    stepguard audit query audit.jsonl --decision-id D
    stepguard audit query /var/log/stepguard --violation
    # what did ines approve, under which tickets, for a spreadsheet?
    stepguard audit query audit.jsonl --approver 'User::"ines"' --csv > approved.csv

Requester, approver and ticket are read from the decision's recorded context
(`context.requester`, `context.approval.approver`, `context.approval.ticket`):
what the caller sent, after redaction.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar.audit.files import open_read
from sidecar.audit.segments import Trail
from sidecar.audit.workers import TrailSet, merged
from sidecar.core.errors import StepguardError
from sidecar.core.model import EntityUid
from sidecar.core.textsafe import escape

# The table's columns; CSV splits workflow/run/step into three (CSV_COLUMNS).
COLUMNS = (
    "time",
    "decision",
    "principal",
    "action",
    "resource",
    "requester",
    "approver",
    "ticket",
    "why",
    "workflow/run/step",
    "id",
)
CSV_COLUMNS = (*COLUMNS[:-2], "workflow", "run", "step", "id")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@")


@dataclass(frozen=True, slots=True)
class EntityFilter:
    type: str | None
    pattern: str

    @classmethod
    def parse(cls, text: str) -> EntityFilter:
        uid = EntityUid.parse(text)
        if uid is not None:
            return cls(uid.type, uid.id)
        return cls(None, text)

    def matches(self, uid: Any) -> bool:
        uid = _entity(uid)
        if isinstance(uid, str):  # a context value recorded as a plain string
            return self.type is None and fnmatch.fnmatchcase(uid, self.pattern)
        if not isinstance(uid, dict):
            return False
        if self.type is not None:
            return bool(uid.get("type") == self.type and uid.get("id") == self.pattern)
        return fnmatch.fnmatchcase(str(uid.get("id", "")), self.pattern)


@dataclass(frozen=True, slots=True)
class Query:
    principals: tuple[EntityFilter, ...] = ()
    actions: tuple[str, ...] = ()
    resources: tuple[EntityFilter, ...] = ()
    workflow: str | None = None
    run: str | None = None
    step: str | None = None
    decision: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("decision",)
    requesters: tuple[EntityFilter, ...] = ()
    approvers: tuple[EntityFilter, ...] = ()
    tickets: tuple[str, ...] = ()  # exact, or patterns with shell wildcards
    # A decision and the outcomes reported for it (outcomes' `decision_id`).
    decision_ids: tuple[str, ...] = ()
    violations_only: bool = False  # only outcomes flagged as violations

    def matches(self, event: dict[str, Any]) -> bool:
        if self.kinds and event.get("kind") not in self.kinds:
            return False
        if self.ids and event.get("id") not in self.ids:
            return False
        if self.decision_ids and not (
            event.get("id") in self.decision_ids or event.get("decision_id") in self.decision_ids
        ):
            return False
        if self.violations_only and not event.get("violation"):
            return False
        if self.decision and event.get("decision") != self.decision:
            return False
        for name, want in (("workflow_id", self.workflow), ("run_id", self.run)):
            if want is not None and event.get(name) != want:
                return False
        if self.step is not None and event.get("step_id") != self.step:
            return False
        if self.principals and not any(f.matches(event.get("principal")) for f in self.principals):
            return False
        if self.resources and not any(f.matches(event.get("resource")) for f in self.resources):
            return False
        if self.actions:
            action = event.get("action") or {}
            if not any(_action_matches(action, a) for a in self.actions):
                return False
        if self.requesters or self.approvers or self.tickets:
            ctx = event.get("context")
            ctx = ctx if isinstance(ctx, dict) else {}
            approval = ctx.get("approval")
            approval = approval if isinstance(approval, dict) else {}
            if self.requesters and not any(
                f.matches(ctx.get("requester")) for f in self.requesters
            ):
                return False
            approver = approval.get("approver")
            if self.approvers and not any(f.matches(approver) for f in self.approvers):
                return False
            ticket = approval.get("ticket")
            if self.tickets and not (
                isinstance(ticket, str)
                and any(fnmatch.fnmatchcase(ticket, t) for t in self.tickets)
            ):
                return False
        if self.since or self.until:
            at = parse_time(str(event.get("time", "")), "time")
            if (self.since and at < self.since) or (self.until and at >= self.until):
                return False
        return True


def _action_matches(action: Any, want: str) -> bool:
    if not isinstance(action, dict):
        return False
    uid = EntityUid.parse(want)  # its id unescaped, as the entity filters read theirs
    if uid is not None:
        return bool(action.get("type") == uid.type and action.get("id") == uid.id)
    return fnmatch.fnmatchcase(str(action.get("id", "")), want)


def parse_time(text: str, what: str) -> datetime:
    """RFC 3339 (a date alone means its midnight UTC)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise StepguardError(f"{what}: {text!r} is not an RFC 3339 time") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def events(trails: Sequence[Trail]) -> Iterator[dict[str, Any]]:
    """Every record of the trails, in order, with its location."""
    for trail in trails:
        for path in trail.segments:
            try:
                with open_read(path) as f:  # a FIFO is refused, never waited on
                    for lineno, raw in enumerate(f, 1):
                        try:
                            record = json.loads(raw)
                        except ValueError:
                            continue  # verify reports damaged lines; query shows what it can
                        if isinstance(record, dict):
                            record["_at"] = f"{path}:{lineno}"
                            yield record
            except OSError as exc:
                raise StepguardError(f"cannot read {path}: {exc}") from exc


def set_events(trails: Sequence[Trail | TrailSet]) -> Iterator[dict[str, Any]]:
    """Every record, trail after trail; a trail of many workers' chains (workers.py) as
    one stream, ordered by time, then chain, then seq. A single chain: in its order."""
    for trail in trails:
        if isinstance(trail, Trail):
            yield from events([trail])
        else:
            yield from merged([events([c]) for c in trail.chains], _time_of, _seq_of)


def _time_of(event: dict[str, Any]) -> str:
    """A decision's time; "" for the sink's own records (segment headers, shutdowns...):
    they are ordered where they stand in their chain, not by the clock they were written at."""
    time = event.get("time")
    return time if isinstance(time, str) and event.get("kind") == "decision" else ""


def _seq_of(event: dict[str, Any]) -> int:
    seq = event.get("seq")
    return seq if isinstance(seq, int) else -1


def run_query(trails: Sequence[Trail | TrailSet], query: Query) -> Iterator[dict[str, Any]]:
    return (e for e in set_events(trails) if query.matches(e))


def _entity(value: Any) -> Any:
    """A Cedar JSON entity reference (`{"__entity": {...}}`) as its uid; else the value."""
    if isinstance(value, dict) and isinstance(value.get("__entity"), dict):
        return value["__entity"]
    return value


def _uid(value: Any) -> str:
    """A recorded reference as Cedar writes it (`EntityUid`: escaped, printable)."""
    if isinstance(value, dict) and "type" in value:
        return str(EntityUid(str(value["type"]), str(value.get("id", ""))))
    return ""


def _context_cell(value: Any) -> str:
    """A context value as a cell: an entity as `Type::"id"`, a string as itself, else JSON."""
    value = _entity(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "type" in value and "id" in value:
        return _uid(value)
    return json.dumps(value, sort_keys=True)


def _outcome_why(event: dict[str, Any]) -> str:
    """An outcome in the `why` cell: status, error class, violation, the decision it followed."""
    why = str(event.get("status", ""))
    if event.get("error_class"):
        why += f" ({event['error_class']})"
    if event.get("violation"):
        why += f" VIOLATION {event['violation']}"
    return f"{why}; decision {event.get('decided', '')} {event.get('decision_id', '')}"


def _plan_why(event: dict[str, Any]) -> str:
    """A plan in the `why` cell: its verdict counts and the steps certainly denied."""
    counts = event.get("verdicts")
    counts = counts if isinstance(counts, dict) else {}
    why = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("ALLOW", "DENY", "DEPENDS"))
    steps = event.get("steps")
    steps = steps if isinstance(steps, list) else []
    denied = [
        f"{s.get('step_id', '')} ({', '.join(map(str, s.get('policies') or [])) or 'no permit'})"
        for s in steps
        if isinstance(s, dict) and s.get("verdict") == "DENY"
    ]
    return why + (f"; denied: {'; '.join(denied)}" if denied else "")


def fields(event: dict[str, Any]) -> tuple[str, ...]:
    """One record's cells, in CSV_COLUMNS order (raw: the outputs escape them)."""
    if event.get("kind") == "outcome":
        return (
            str(event.get("time", "")),
            "OUTCOME",
            _uid(event.get("principal")),
            str((event.get("action") or {}).get("id", "")),
            _uid(event.get("resource")),
            "",
            "",
            "",
            _outcome_why(event),
            *(str(event.get(k) or "") for k in ("workflow_id", "run_id", "step_id")),
            str(event.get("id", "")),
        )
    if event.get("kind") == "plan":
        return (
            str(event.get("time", "")),
            "PLAN",
            *("",) * 6,
            _plan_why(event),
            str(event.get("workflow_id") or ""),
            str(event.get("run_id") or ""),
            "",
            str(event.get("id", "")),
        )
    if event.get("kind") != "decision":
        detail = {
            k: v
            for k, v in event.items()
            if k not in ("schema", "kind", "id", "time", "seq", "prev", "hash", "_at")
        }
        blank = ("",) * 6
        return (
            str(event.get("time", "")),
            str(event.get("kind", "")).upper(),
            *blank,
            json.dumps(detail, sort_keys=True),
            "",
            "",
            "",
            str(event.get("id", "")),
        )
    policies = ", ".join(str(r.get("policy", "")) for r in event.get("reasons", []))
    why = policies or str(event.get("reason", ""))
    if event.get("cached"):
        why += " (cached)"
    ctx = event.get("context")
    ctx = ctx if isinstance(ctx, dict) else {}
    approval = ctx.get("approval")
    approval = approval if isinstance(approval, dict) else {}
    return (
        str(event.get("time", "")),
        str(event.get("decision", "")),
        _uid(event.get("principal")),
        str((event.get("action") or {}).get("id", "")),
        _uid(event.get("resource")),
        _context_cell(ctx.get("requester")),
        _context_cell(approval.get("approver")),
        _context_cell(approval.get("ticket")),
        why,
        *(str(event.get(k) or "") for k in ("workflow_id", "run_id", "step_id")),
        str(event.get("id", "")),
    )


def row(event: dict[str, Any]) -> tuple[str, ...]:
    """One record's table cells (COLUMNS): workflow, run and step in one, `-` for none."""
    cells = fields(event)
    if event.get("kind") not in ("decision", "outcome", "plan"):
        return (*cells[:9], "", cells[-1])
    where = "/".join(c or "-" for c in cells[9:12])
    return (*cells[:9], where, cells[-1])


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: escaped (textsafe) like the table, and a
    leading = + - @ made inert with a `'`, as OWASP advises against CSV injection."""
    cell = escape(cell)
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def csv_text(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """RFC 4180 CSV (CRLF line ends, quoting as needed): a header, then one line a record."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for event in records:
        writer.writerow([spreadsheet_safe(c) for c in fields(event)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # no records: the header alone
        yield buffer.getvalue()


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """The rows as aligned text. Every cell is trail data a caller chose (ids, run ids,
    reasons), so each is escaped (sidecar/core/textsafe.py): one record is one line."""
    rows = [tuple(escape(c) for c in r) for r in rows]
    widths = [len(c) for c in COLUMNS]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
