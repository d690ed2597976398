"""Rows of the evidence store, made from the trail's decision and outcome records.

Every record of a trail passes through `Rows.decision` or `Rows.outcome`
(ingest.py's Sink), so they read each field once, inline; what they make of a
field is what `Rows.uid`, `_obj` and `_text` say. The columns are the store's
`decisions` and `outcomes` tables (store.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from sidecar.core.event import timestamp
from sidecar.core.model import EntityUid

DECISION_COLUMNS = (
    "id TEXT, time TEXT, decision TEXT, principal TEXT, action TEXT, target TEXT, workflow TEXT, "
    "run TEXT, step TEXT, requester TEXT, approver TEXT, ticket TEXT, sensitivity TEXT, "
    "not_after TEXT, revoke_within_s REAL, break_glass INTEGER, file TEXT, line INTEGER, "
    "seq INTEGER"
)
OUTCOME_COLUMNS = (
    "id TEXT, time TEXT, recorded TEXT, decision_id TEXT, decided TEXT, status TEXT, "
    "error_class TEXT, attempt INTEGER, workflow TEXT, run TEXT, step TEXT, action TEXT, "
    "identity TEXT, target TEXT, added TEXT, removed TEXT, cred_id TEXT, cred_change TEXT, "
    "expires_at TEXT, account TEXT, violation TEXT, file TEXT, line INTEGER, seq INTEGER, "
    "reporter TEXT, report_id TEXT"
)
# How many values a row of each table holds (what `Rows` builds; inserts bind as many).
DECISION_WIDTH = DECISION_COLUMNS.count(",") + 1
OUTCOME_WIDTH = OUTCOME_COLUMNS.count(",") + 1
BREAK_GLASS_PREFIX = "BG-"


class Rows:
    """Row builders with a memo of entity texts (principals, actions and identities
    repeat: `Type::"id"` is built once each).

    Every record of the trail passes through `decision` or `outcome`, so they read
    each field once, inline (a call per field would be most of their cost); what
    they make of a field is what `uid`, `_obj` and `_text` say."""

    def __init__(self) -> None:
        self._uids: dict[tuple[str, str], str] = {}

    def uid(self, value: Any) -> str:
        """`Type::"id"` of a recorded entity reference, "" when there is none.

        A decision's context records references as Cedar JSON does,
        `{"__entity": {"type": ..., "id": ...}}` (the requester, the approver); the
        event's own principal, action and resource, and an outcome's identity, as
        `{"type": ..., "id": ...}`. Both are read."""
        if not isinstance(value, dict):
            return ""
        inner = value.get("__entity")
        if inner is not None:
            if not isinstance(inner, dict):
                return ""
            value = inner
        kind = value.get("type")
        if type(kind) is not str:
            return ""
        ident = value.get("id")
        if type(ident) is not str:
            ident = str(ident)
        key = (kind, ident)
        text = self._uids.get(key)
        if text is None:
            text = str(EntityUid(kind, ident))
            if len(self._uids) >= 200_000:
                self._uids.clear()
            self._uids[key] = text
        return text

    def decision(self, e: Mapping[str, Any], file: str, line: int, seq: Any) -> tuple[Any, ...]:
        get, uid = e.get, self.uid
        ctx = get("context")
        if not isinstance(ctx, dict):
            ctx = _EMPTY
        approval = ctx.get("approval")
        if not isinstance(approval, dict):
            approval = _EMPTY
        bound = ctx.get("time_bound")
        obligations = get("obligations")
        revoke = obligations.get("revoke_within_s") if isinstance(obligations, dict) else None
        ticket = approval.get("ticket")
        if not isinstance(ticket, str):
            ticket = ""
        target = ctx.get("target_system")
        if not isinstance(target, str) or not target:
            resource = get("resource")
            target = resource.get("id") if isinstance(resource, dict) else None
            if not isinstance(target, str):
                target = ""
        return (
            _t(get("id")),
            _t(get("time")),
            _t(get("decision")),
            uid(get("principal")),
            uid(get("action")),
            target,
            _t(get("workflow_id")),
            _t(get("run_id")),
            _t(get("step_id")),
            uid(ctx.get("requester")),
            uid(approval.get("approver")),
            ticket,
            _t(ctx.get("sensitivity")),
            _instant(bound.get("not_after")) if isinstance(bound, dict) else "",
            float(revoke)
            if isinstance(revoke, int | float) and not isinstance(revoke, bool)
            else None,
            int(ticket.startswith(BREAK_GLASS_PREFIX)),
            file,
            line,
            seq if type(seq) is int else -1,
        )

    def outcome(self, e: Mapping[str, Any], file: str, line: int, seq: Any) -> tuple[Any, ...]:
        get = e.get
        effect = get("effect")
        if not isinstance(effect, dict):
            effect = _EMPTY
        cred = effect.get("credential")
        if not isinstance(cred, dict):
            cred = _EMPTY
        attempt = get("attempt")
        recorded = _t(get("time"))
        target = effect.get("target_system")
        if not isinstance(target, str) or not target:
            resource = get("resource")
            target = resource.get("id") if isinstance(resource, dict) else None
            if not isinstance(target, str):
                target = ""
        caller = get("caller")
        return (
            _t(get("id")),
            _t(get("finished_at")) or recorded,  # when the step did it, else when reported
            recorded,
            _t(get("decision_id")),
            _t(get("decided")),
            _t(get("status")),
            _t(get("error_class")),
            attempt if isinstance(attempt, int) else 0,
            _t(get("workflow_id")),
            _t(get("run_id")),
            _t(get("step_id")),
            self.uid(get("action")),
            self.uid(effect.get("identity")),
            target,
            _names(effect.get("entitlements_added")),
            _names(effect.get("entitlements_removed")),
            _t(cred.get("id")),
            _t(cred.get("change")),
            _t(cred.get("expires_at")),
            _t(effect.get("account")),
            _t(get("violation")),
            file,
            line,
            seq if type(seq) is int else -1,
            _t(caller.get("identity")) if isinstance(caller, dict) else "",  # who reported it
            _t(get("report_id")),  # the client's id for the report (store.py keeps one of each)
        )


def _t(value: Any) -> str:
    """Text, "" when the value is none (`_text` for the row builders' hot path)."""
    return value if isinstance(value, str) else ""


_EMPTY: dict[str, Any] = {}


def _obj(value: Any) -> dict[str, Any]:
    return value if type(value) is dict or isinstance(value, dict) else _EMPTY


def _text(value: Any) -> str:
    return value if type(value) is str or isinstance(value, str) else ""


def parse_time(text: str) -> datetime:
    """An instant of the trail (RFC 3339, `Z` or an offset; naive means UTC)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _instant(value: Any) -> str:
    """A recorded instant in the trail's time format, "" when there is none or it is
    malformed. A decision's context records instants as Cedar JSON does,
    `{"__extn": {"fn": "datetime", "arg": "2026-11-03T00:00:00.000Z"}}`; plain RFC 3339
    text is read too."""
    if isinstance(value, dict) and isinstance(value.get("__extn"), dict):
        value = value["__extn"].get("arg")
    if not isinstance(value, str) or not value:
        return ""
    try:
        return timestamp(parse_time(value))
    except ValueError:
        return ""


def _names(value: Any) -> str:
    """A list of entitlement names as JSON text (`[]` when none)."""
    if type(value) is not list or not value:
        return "[]"
    return orjson.dumps([v for v in value if isinstance(v, str)]).decode()


__all__ = [
    "DECISION_COLUMNS",
    "DECISION_WIDTH",
    "OUTCOME_COLUMNS",
    "OUTCOME_WIDTH",
    "Rows",
    "parse_time",
]
