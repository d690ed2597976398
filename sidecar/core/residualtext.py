"""Residuals bound to values, printed as Cedar, and put in plain words for a human.

`words` reads the residual core/residual.py simplified: comparisons of the
step's time (`unknown("now")`, its `.toTime()` and `.toDate()`) become "the step
runs before 18:00 UTC", the calendar's closed days "a business day", and `!`
is pushed inwards (De Morgan) so that a forbid reads as what keeps it off.
Anything else is named as Cedar would name it. Pure: no I/O.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import cedarpy

from sidecar.core.model import EntityUid
from sidecar.core.residual import DT, DUR, Est, est, lit, unknown_name

_DAY_MS = 86_400_000


def bind(node: Est, values: Mapping[str, Est]) -> Est:
    """Replace each `unknown("name")` by `values[name]` (an EST literal); others stay."""
    if isinstance(node, list):
        return [bind(x, values) for x in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"unknown"}:
        name = unknown_name(node)
        if name is not None and name in values:
            return values[name]
        return node
    return {k: bind(v, values) for k, v in node.items()}


def est_from_cedar_json(value: Any) -> Est:
    """A context value in Cedar's JSON form (`__entity`, `__extn`) as an EST literal."""
    if isinstance(value, bool | str | int):
        return {"Value": value}
    if isinstance(value, list):
        return {"Set": [est_from_cedar_json(x) for x in value]}
    if isinstance(value, dict):
        if set(value) == {"__entity"}:
            return {"Value": value}
        if set(value) == {"__extn"}:
            ext = value["__extn"]
            args = ext.get("args") if "args" in ext else [ext.get("arg")]
            return {str(ext.get("fn")): [est_from_cedar_json(a) for a in args]}
        return {"Record": {k: est_from_cedar_json(v) for k, v in value.items()}}
    raise ValueError(f"not a Cedar value: {value!r}")


def cedar_text(policy_id: str, policy_est: Mapping[str, Any]) -> str:
    """A residual as Cedar text (cedarpy prints it), `@id` kept; the EST when it cannot."""
    body = {k: v for k, v in policy_est.items() if k != "annotations"}
    body["annotations"] = {"id": policy_id}
    return _printed(
        json.dumps({"staticPolicies": {policy_id: body}, "templates": {}, "templateLinks": []})
    )


@functools.lru_cache(maxsize=256)
def _printed(document: str) -> str:
    """Cedar's printing of one policy set document (the steps of a run repeat residuals:
    the same text is printed once; parsing one costs milliseconds)."""
    try:
        return str(cedarpy.policies_from_json_str(document)).strip()
    except Exception:  # noqa: BLE001 - printing never fails a plan
        body = json.loads(document)["staticPolicies"]
        return json.dumps(next(iter(body.values())), sort_keys=True)


# --- words --------------------------------------------------------------------------------

_SUBJECT = {
    "now": "the step's time",
    "approval": "the approval",
    "requester": "the requester",
    "time_bound": "the time bound",
    "sensitivity": "the context's sensitivity",
}
_CMP_NOW = {
    "<": "the step runs before {x}",
    "<=": "the step runs at or before {x}",
    ">": "the step runs after {x}",
    ">=": "the step runs at or after {x}",
}
_RUNS = "the step runs "
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def words(node: Est) -> str:
    """A simplified condition in plain words ("the step runs before 18:00 UTC and ...")."""
    try:
        return _words(node, False)[0]
    except RecursionError:  # pragma: no cover - residuals are as deep as their policies
        return "a condition too deep to put in words"


def negated_words(node: Est) -> str:
    """What keeps a condition false, in plain words (a forbid's residual: "allowed if ...")."""
    try:
        return _words(node, True)[0]
    except RecursionError:  # pragma: no cover - residuals are as deep as their policies
        return "a condition too deep to put in words"


def _words(node: Est, negated: bool) -> tuple[str, str, bool]:
    """(text, its top connective: "and", "or" or "", whether its last clause is about
    the step's time), negation pushed inwards."""
    neg = "not " if negated else ""
    if not isinstance(node, dict) or len(node) != 1:
        return f"{neg}{json.dumps(node)}", "", False
    ((op, arg),) = node.items()
    if op == "!":
        return _words(arg.get("arg"), not negated)
    if op in ("&&", "||"):
        # De Morgan: not (a and b) = not a or not b; reads better for humans.
        joined = "and" if (op == "&&") != negated else "or"
        left, left_conn, left_time = _words(arg.get("left"), negated)
        right, right_conn, right_time = _words(arg.get("right"), negated)
        if left_conn and left_conn != joined:
            left, left_time = f"({left})", False
        if right_conn and right_conn != joined:
            right, right_time = f"({right})", False
        elif left_time and right.startswith(_RUNS):
            right = right[len(_RUNS) :]  # "the step runs after 08:00 and before 18:00"
        return f"{left} {joined} {right}", joined, right_time
    if op == "has":
        verb = "has no" if negated else "has a"
        return f"{_noun(arg.get('left'))} {verb} {arg.get('attr')}", "", False
    if op == "like":
        pattern = "".join(
            "*" if p == "Wildcard" else str(p.get("Literal", "")) if isinstance(p, dict) else ""
            for p in arg.get("pattern") or []
        )
        verb = "does not match" if negated else "matches"
        return f'{_noun(arg.get("left"))} {verb} "{pattern}"', "", False
    if op in ("<", "<=", ">", ">="):
        left, right = arg.get("left"), arg.get("right")
        if _is_now_time(right) and not _is_now_time(left):
            left, right, op = right, left, _FLIP[op]
        if negated:
            op = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}[op]
        if _is_now_time(left):
            return _CMP_NOW[op].format(x=_noun(right)), "", True
        return f"{_noun(left)} {op} {_noun(right)}", "", False
    if op in ("==", "!="):
        same = (op == "==") != negated
        verb = "is" if same else "is not"
        return f"{_noun(arg.get('left'))} {verb} {_noun(arg.get('right'))}", "", False
    if op == "in":
        verb = "is not in" if negated else "is in"
        return f"{_noun(arg.get('left'))} {verb} {_noun(arg.get('right'))}", "", False
    if op == "contains":
        left, right = arg.get("left"), arg.get("right")
        if _is_date_of_now(right) and isinstance(left, dict) and "Set" in left:
            n = len(left["Set"])
            if negated:
                return f"the step runs on a business day (none of the {n} closed days)", "", True
            return f"the step runs on one of {n} closed days", "", True
        verb = "does not contain" if negated else "contains"
        return f"{_noun(left)} {verb} {_noun(right)}", "", False
    if op == "Value" and isinstance(arg, bool):
        return ("never" if arg == negated else "always"), "", False
    return f"{neg}{_noun(node)}", "", False


def _is_now_time(node: Est) -> bool:
    """`unknown("now")` itself, or `.toTime()` / `.toDate()` of it."""
    if unknown_name(node) is not None:
        return True
    if isinstance(node, dict) and len(node) == 1:
        ((op, arg),) = node.items()
        if op in ("toTime", "toDate") and isinstance(arg, list) and arg:
            return unknown_name(arg[0]) is not None
    return False


def _is_date_of_now(node: Est) -> bool:
    return isinstance(node, dict) and "toDate" in node and _is_now_time(node)


def _noun(node: Est) -> str:
    name = unknown_name(node)
    if name is not None:
        head, _, rest = name.partition(".")
        subject = _SUBJECT.get(head, f"context.{head}")
        return f"{subject}'s {rest}" if rest else subject
    if not isinstance(node, dict) or len(node) != 1:
        return json.dumps(node)
    ((op, arg),) = node.items()
    if op == "." and isinstance(arg, dict):
        return f"{_noun(arg.get('left'))}'s {arg.get('attr')}"
    if op == "toTime" and isinstance(arg, list) and arg:
        return f"the time of day of {_noun(arg[0])}"
    if op == "toDate" and isinstance(arg, list) and arg:
        return f"the date of {_noun(arg[0])}"
    value = lit(node)
    if isinstance(value, DUR) and 0 <= value.ms < _DAY_MS:
        minutes = value.ms // 60_000
        return f"{minutes // 60:02d}:{minutes % 60:02d} UTC"
    if isinstance(value, DT):
        rendered = est(value)
        if rendered is None:
            return str(value.ms)
        text = str(rendered["datetime"][0]["Value"])
        return (
            text[:10] if text.endswith("T00:00:00.000Z") else text[:16].replace("T", " ") + " UTC"
        )
    if isinstance(value, EntityUid):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool | int):
        return json.dumps(value)
    if op == "Set" and isinstance(arg, list):
        return "[" + ", ".join(_noun(x) for x in arg) + "]"
    return json.dumps(node, sort_keys=True)[:200]
