"""`stepguard audit query`: find decisions in a trail, for auditors.

Filters combine with AND; each entity filter takes `Type::"id"` (exact) or an
id pattern with shell wildcards (`*provisioner`). Records come out in trail
order, which is decision order. Typical questions:

    # who received access to payroll, why, and when was it removed?
    stepguard audit query /var/log/stepguard --resource 'TargetSystem::"payroll"' \\
        --decision ALLOW --action grant_access --action revoke_access
    # everything run 42 of the onboarding workflow asked, as JSON lines
    stepguard audit query audit.jsonl --workflow onboarding --run 42 --format json
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar.audit.files import open_read
from sidecar.audit.verify import Trail
from sidecar.errors import StepguardError
from sidecar.textsafe import escape

_UID = re.compile(r'(?P<type>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)::"(?P<id>(?:[^"\\]|\\.)*)"')
COLUMNS = ("time", "decision", "principal", "action", "resource", "why", "workflow/run/step", "id")


@dataclass(frozen=True, slots=True)
class EntityFilter:
    type: str | None
    pattern: str

    @classmethod
    def parse(cls, text: str) -> EntityFilter:
        m = _UID.fullmatch(text)
        if m:
            return cls(m["type"], re.sub(r"\\(.)", r"\1", m["id"]))
        return cls(None, text)

    def matches(self, uid: Any) -> bool:
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

    def matches(self, event: dict[str, Any]) -> bool:
        if self.kinds and event.get("kind") not in self.kinds:
            return False
        if self.ids and event.get("id") not in self.ids:
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
        if self.since or self.until:
            at = parse_time(str(event.get("time", "")), "time")
            if (self.since and at < self.since) or (self.until and at >= self.until):
                return False
        return True


def _action_matches(action: Any, want: str) -> bool:
    if not isinstance(action, dict):
        return False
    m = _UID.fullmatch(want)
    if m:
        return bool(action.get("type") == m["type"] and action.get("id") == m["id"])
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


def run_query(trails: Sequence[Trail], query: Query) -> Iterator[dict[str, Any]]:
    return (e for e in events(trails) if query.matches(e))


def _uid(value: Any) -> str:
    if isinstance(value, dict) and "type" in value:
        escaped = str(value.get("id", "")).replace("\\", "\\\\").replace('"', '\\"')
        return f'{value["type"]}::"{escaped}"'
    return ""


def row(event: dict[str, Any]) -> tuple[str, ...]:
    if event.get("kind") != "decision":
        detail = {
            k: v
            for k, v in event.items()
            if k not in ("schema", "kind", "id", "time", "seq", "prev", "hash", "_at")
        }
        return (
            str(event.get("time", "")),
            str(event.get("kind", "")).upper(),
            "",
            "",
            "",
            json.dumps(detail, sort_keys=True),
            "",
            str(event.get("id", "")),
        )
    policies = ", ".join(str(r.get("policy", "")) for r in event.get("reasons", []))
    why = policies or str(event.get("reason", ""))
    if event.get("cached"):
        why += " (cached)"
    where = "/".join(str(event.get(k) or "-") for k in ("workflow_id", "run_id", "step_id"))
    return (
        str(event.get("time", "")),
        str(event.get("decision", "")),
        _uid(event.get("principal")),
        str((event.get("action") or {}).get("id", "")),
        _uid(event.get("resource")),
        why,
        where,
        str(event.get("id", "")),
    )


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """The rows as aligned text. Every cell is trail data a caller chose (ids, run ids,
    reasons), so each is escaped (sidecar/textsafe.py): one record is one line."""
    rows = [tuple(escape(c) for c in r) for r in rows]
    widths = [len(c) for c in COLUMNS]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)
