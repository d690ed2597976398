"""Residual policies (Cedar's JSON policy form, EST) simplified, printed and put in words.

Cedar's partial evaluation (cedarpy 4.12.2) leaves much open that is already
settled: as soon as the context holds one unknown and any extension value, the
context is kept as a record literal and every `context has x` / `context.x`
above it stays residual (docs/partial-eval notes, pitfalls 2 and 3). This
module finishes the job on the residual's own literals: `has` and `.` on record
literals, entity attributes, `in` and `is` through the entity store, equality,
`like`, set membership, Long/datetime/duration comparisons and the boolean
operators, with Cedar's semantics. It is deliberately conservative: whatever
it does not understand, or what would raise an error in Cedar, stays residual,
so a simplification can only turn an open condition into the value Cedar would
give it (the plan's Hypothesis property checks that against real decisions).

Pure: no I/O. core/residualtext.py binds, prints and puts residuals in words.
About 520 lines, past the 500 lines of issue 17 on purpose: one case per Cedar
operator, and the literal values the cases read and write, are kept together
so that each case can be checked against Cedar's semantics in one place.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.core.model import EntityUid
from sidecar.core.validate import (
    datetime_text,
    from_ms,
)
from sidecar.core.validate import datetime_text_ms as _datetime_ms
from sidecar.core.validate import duration_text_ms as _duration_ms

# Residuals repeat the same literals (a calendar's closed days, in every step).
datetime_text_ms = functools.lru_cache(maxsize=4096)(_datetime_ms)
duration_text_ms = functools.lru_cache(maxsize=1024)(_duration_ms)

Est = Any
_DAY_MS = 86_400_000
_LONG = (-(2**63), 2**63 - 1)


class _No:
    """Not a value: the node stays residual."""


NO = _No()


@dataclass(frozen=True, slots=True)
class DT:
    ms: int


@dataclass(frozen=True, slots=True)
class DUR:
    ms: int


@dataclass(frozen=True, slots=True)
class SetV:
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class RecV:
    fields: tuple[tuple[str, Any], ...]


# A store lookup: uid -> (attrs as Cedar JSON, parent uids), None when unknown.
Lookup = Callable[[EntityUid], tuple[Mapping[str, Any], tuple[EntityUid, ...]] | None]


def condition_value(
    policy_est: Mapping[str, Any], lookup: Lookup, paths: frozenset[str] = frozenset()
) -> tuple[bool | None, Est]:
    """A residual policy's conditions simplified: (True/False when settled, else None; the
    simplified policy EST). The scope must be `All` (Cedar's residuals are); else None.

    `paths` are the step's own unknowns. Any other `unknown("Type::\"id\"")` is an
    entity the store lacks, which partial evaluation reads as unknown (pitfall 4)
    and a decision as absent: it is put back as that entity, which has no
    attributes and no parents, as `is_authorized` reads it. (cedarpy's
    `unknown_entities` diagnostic stays empty for them, so the residual is read.)
    """
    out = dict(policy_est)
    for part in ("principal", "action", "resource"):
        if (policy_est.get(part) or {}).get("op") != "All":
            return None, out
    simplifier = _Simplifier(lookup)
    conditions = []
    for c in policy_est.get("conditions") or []:
        body = c.get("body")
        if not (isinstance(body, dict) and isinstance(body.get("Value"), bool)):
            if _NAMED_UNKNOWN.search(json.dumps(body)):  # C speed; rarely true
                body = _absent_entities(body, paths)
            body = simplifier.simp(body)
        conditions.append({"kind": c.get("kind"), "body": body})
    out["conditions"] = conditions
    # Cedar joins the conditions with `&&`, in order: the first that certainly fails
    # settles the policy (the rest are never evaluated); an open one before it does not.
    for cond in conditions:
        value = lit(cond["body"])
        if not isinstance(value, bool) or cond["kind"] not in ("when", "unless"):
            return None, out
        if value is (cond["kind"] == "unless"):
            return False, out
    return True, out


_NAMED_UNKNOWN = re.compile(r'"unknown": \[\{"Value": "[^"]*::')


def _absent_entities(node: Est, paths: frozenset[str]) -> Est:
    """`unknown("Type::\"id\"")` (not one of the step's unknowns) -> that entity literal."""
    if isinstance(node, list):
        return [_absent_entities(x, paths) for x in node]
    if not isinstance(node, dict):
        return node
    name = unknown_name(node)
    if name is not None:
        uid = EntityUid.parse(name) if name not in paths else None
        if uid is not None:
            return {"Value": {"__entity": uid.to_json()}}
        return node
    return {k: _absent_entities(v, paths) for k, v in node.items()}


class _Simplifier:
    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self._lits: dict[int, Any] = {}  # by node id: a residual repeats big set literals

    def lit(self, node: Est) -> Any:
        """`lit(node)`, remembered for containers (the nodes live as long as this)."""
        if not isinstance(node, dict) or not ({"Set", "Record"} & node.keys()):
            return lit(node)
        key = id(node)
        if key not in self._lits:
            self._lits[key] = lit(node)
        return self._lits[key]

    def simp(self, node: Est) -> Est:
        if not isinstance(node, dict) or len(node) != 1:
            return node
        ((op, arg),) = node.items()
        if op in ("Value", "Var", "Slot", "unknown"):
            return node
        if op == "Set" and isinstance(arg, list):
            return {"Set": [self.simp(x) for x in arg]}
        if op == "Record" and isinstance(arg, dict):
            return {"Record": {k: self.simp(v) for k, v in arg.items()}}
        if op in ("datetime", "duration") and isinstance(arg, list):
            return node
        if op == "!" and isinstance(arg, dict):
            inner = self.simp(arg.get("arg"))
            v = self.lit(inner)
            return est(not v) if isinstance(v, bool) else {"!": {"arg": inner}}
        if op in ("&&", "||") and isinstance(arg, dict):
            return self._logic(op, arg)
        if op == "if-then-else" and isinstance(arg, dict):
            cond = self.simp(arg.get("if"))
            v = self.lit(cond)
            if isinstance(v, bool):
                return self.simp(arg.get("then") if v else arg.get("else"))
            return {"if-then-else": {**arg, "if": cond}}
        if op in ("==", "!=", "<", "<=", ">", ">=", "in", "contains", "containsAll", "containsAny"):
            if not isinstance(arg, dict):
                return node
            left, right = self.simp(arg.get("left")), self.simp(arg.get("right"))
            result = self._binary(op, self.lit(left), self.lit(right))
            return est(result) if result is not NO else {op: {"left": left, "right": right}}
        if op in ("has", ".") and isinstance(arg, dict):
            return self._attr(op, arg)
        if op == "is" and isinstance(arg, dict):
            left = self.simp(arg.get("left"))
            rest = {k: v for k, v in arg.items() if k != "left"}
            if "in" in rest:
                rest["in"] = self.simp(rest["in"])
            v = self.lit(left)
            if isinstance(v, EntityUid):
                if v.type != arg.get("entity_type"):
                    return est(False)
                if "in" not in rest:
                    return est(True)
                inside = self._binary("in", v, self.lit(rest["in"]))
                if inside is not NO:
                    return est(inside)
            return {"is": {"left": left, **rest}}
        if op == "like" and isinstance(arg, dict):
            left = self.simp(arg.get("left"))
            v = self.lit(left)
            pattern = arg.get("pattern")
            if isinstance(v, str) and isinstance(pattern, list):
                matched = _like(v, pattern)
                if matched is not None:
                    return est(matched)
            return {"like": {"left": left, "pattern": pattern}}
        if op == "isEmpty" and isinstance(arg, dict):
            inner = self.simp(arg.get("arg"))
            v = self.lit(inner)
            return est(not v.items) if isinstance(v, SetV) else {"isEmpty": {"arg": inner}}
        if op in ("toDate", "toTime", "offset") and isinstance(arg, list):
            args = [self.simp(a) for a in arg]
            values = [self.lit(a) for a in args]
            result = _ext_method(op, values)
            if result is not NO:
                rendered = est(result)
                if rendered is not None:
                    return rendered
            return {op: args}
        return node

    def _logic(self, op: str, arg: Mapping[str, Any]) -> Est:
        left = self.simp(arg.get("left"))
        lv = self.lit(left)
        short = op == "||"  # `true || x` is true, `false && x` is false, x never evaluated
        if isinstance(lv, bool):
            if lv is short:
                return est(short)
            right = self.simp(arg.get("right"))
            rv = self.lit(right)
            if isinstance(rv, bool):
                return est(rv)
            return right  # `true && x` and `false || x` are x (x is Bool: policies validate)
        right = self.simp(arg.get("right"))
        if lv is not NO:  # a literal that is not a Bool: Cedar errors here
            return {op: {"left": left, "right": right}}
        rv = self.lit(right)
        if rv is (not short):
            return left  # `x && true`, `x || false` are x (x is Bool: policies validate)
        if rv is short and error_free(left):
            return est(short)  # `x && false` is false, `x || true` true, unless x errors
        return {op: {"left": left, "right": right}}

    def _binary(self, op: str, a: Any, b: Any) -> Any:
        if a is NO or b is NO:
            return NO
        if op in ("==", "!="):
            if isinstance(a, RecV) or isinstance(b, RecV):
                return NO  # records compare field by field; not needed here
            same = _same(a, b)
            return same if op == "==" else not same
        if op in ("<", "<=", ">", ">="):
            pair = _comparable(a, b)
            if pair is None:
                return NO
            x, y = pair
            return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]
        if op == "in":
            if not isinstance(a, EntityUid):
                return NO
            targets = b.items if isinstance(b, SetV) else (b,)
            if not all(isinstance(t, EntityUid) for t in targets):
                return NO
            if a in targets:
                return True
            ancestors = self._ancestors(a)
            if ancestors is None:
                return False  # an entity the store lacks is in nothing but itself
            return any(t in ancestors for t in targets)
        if op == "contains":
            if not isinstance(a, SetV) or isinstance(b, RecV):
                return NO
            return any(_same(x, b) for x in a.items)
        if op in ("containsAll", "containsAny"):
            if not isinstance(a, SetV) or not isinstance(b, SetV):
                return NO
            hits = [any(_same(x, y) for x in a.items) for y in b.items]
            return all(hits) if op == "containsAll" else any(hits)
        return NO

    def _ancestors(self, uid: EntityUid) -> set[EntityUid] | None:
        """Every ancestor of a stored (or request-supplied) entity; None when not known."""
        if self.lookup(uid) is None:
            return None
        seen: set[EntityUid] = set()
        todo = [uid]
        while todo:
            data = self.lookup(todo.pop())
            if data is None:
                continue
            for parent in data[1]:
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return seen

    def _attr(self, op: str, arg: Mapping[str, Any]) -> Est:
        left = self.simp(arg.get("left"))
        attr = arg.get("attr")
        record = isinstance(left, dict) and set(left) == {"Record"}
        if record and isinstance(left["Record"], dict) and error_free(left):
            # Cedar builds the whole record first: only one that cannot error is read.
            fields = left["Record"]
            if op == "has":
                return est(attr in fields)
            if attr in fields:
                return self.simp(fields[attr])
        v = self.lit(left)
        if isinstance(v, EntityUid) and isinstance(attr, str):
            data = self.lookup(v)
            if data is None and op == "has":
                return est(False)  # Cedar: an entity the store lacks has no attribute
            if data is not None:
                attrs = data[0]
                if op == "has":
                    return est(attr in attrs)
                if attr in attrs:
                    value = _from_cedar_json(attrs[attr])
                    rendered = None if value is NO else est(value)
                    if rendered is not None:
                        return rendered
        return {op: {"left": left, "attr": attr}}


# Operators that never raise on operands of the types the schema gives them. An unknown
# is always well typed when the step runs: the decision validates the request against
# the schema, and `now` is the server's clock (far from the ends of Cedar's datetimes).
_SAFE_OPS = frozenset(
    {
        "!",
        "&&",
        "||",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "in",
        "contains",
        "containsAll",
        "containsAny",
        "isEmpty",
        "toTime",
        "toDate",
        "Set",
        "Record",
        "if-then-else",
    }
)


def error_free(node: Est) -> bool:
    """Whether evaluating `node` can never raise (so `node && false` is false).

    Conservative: attribute access (`.`) on anything but a literal record is not
    error free (the attribute may be absent), nor is any operator not listed,
    nor a literal operand of a type the operator refuses (`0 && x`, `1 < "a"`).
    A non-literal operand has the type the schema gives it: residuals come from
    policies validated against it, and the unknowns are validated when the
    step runs.
    """
    if not isinstance(node, dict) or len(node) != 1:
        return False
    ((op, arg),) = node.items()
    if op in ("Value", "unknown") or lit(node) is not NO:
        return True
    if op not in _SAFE_OPS and op not in ("has", "like", "is"):
        return False
    if isinstance(arg, list):
        operands = {str(i): x for i, x in enumerate(arg)}
    elif isinstance(arg, dict):
        if op == "Record":
            return all(error_free(x) for x in arg.values())
        names = {"!": ("arg",), "isEmpty": ("arg",), "if-then-else": ("if", "then", "else")}
        keys = names.get(op, ("left", "right") if op not in ("has", "like", "is") else ("left",))
        operands = {k: arg.get(k) for k in keys}
        if op == "is" and "in" in arg:
            operands["in"] = arg["in"]
    else:
        return False
    values = {k: lit(x) for k, x in operands.items()}
    if not all(_fits(op, k, v) for k, v in values.items()):
        return False
    comparison = op in ("<", "<=", ">", ">=")
    both = comparison and NO not in (values["left"], values["right"])
    if both and _comparable(values["left"], values["right"]) is None:
        return False
    return all(error_free(x) for x in operands.values())


def _fits(op: str, key: str, value: Any) -> bool:
    """Whether a literal operand has a type `op` takes at `key` (not literal: yes)."""
    if value is NO:
        return True
    if op in ("!", "&&", "||") or (op == "if-then-else" and key == "if"):
        return isinstance(value, bool)
    if op in ("<", "<=", ">", ">="):
        return isinstance(value, DT | DUR) or (
            isinstance(value, int) and not isinstance(value, bool)
        )
    if op == "in":
        items = value.items if isinstance(value, SetV) and key != "left" else (value,)
        return all(isinstance(x, EntityUid) for x in items)
    if op == "is":
        return isinstance(value, EntityUid)
    if op == "contains" and key == "right":
        return True  # any value may be looked for
    if op in ("contains", "containsAll", "containsAny", "isEmpty"):
        return isinstance(value, SetV)
    if op in ("toDate", "toTime"):
        return isinstance(value, DT)
    if op == "like":
        return isinstance(value, str)
    if op == "has":
        return isinstance(value, EntityUid | RecV)
    return True


def _same(a: Any, b: Any) -> bool:
    """Cedar equality of two values (different types are never equal)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, RecV):  # field by field: a field may hold a set (order-free)
        return [k for k, _ in a.fields] == [k for k, _ in b.fields] and all(
            _same(x, y) for (_, x), (_, y) in zip(a.fields, b.fields, strict=True)
        )
    if isinstance(a, SetV):
        return all(any(_same(x, y) for y in b.items) for x in a.items) and all(
            any(_same(x, y) for x in a.items) for y in b.items
        )  # sets: duplicates and order do not count
    return bool(a == b)


def _comparable(a: Any, b: Any) -> tuple[int, int] | None:
    if type(a) is not type(b):
        return None
    if isinstance(a, int) and not isinstance(a, bool):
        return a, b
    if isinstance(a, DT | DUR):
        return a.ms, b.ms
    return None


def _ext_method(op: str, values: list[Any]) -> Any:
    if op in ("toDate", "toTime") and len(values) == 1 and isinstance(values[0], DT):
        ms = values[0].ms
        day = ms - ms % _DAY_MS
        return DT(day) if op == "toDate" else DUR(ms - day)
    if op == "offset" and len(values) == 2:
        a, b = values
        if isinstance(a, DT) and isinstance(b, DUR) and _LONG[0] <= a.ms + b.ms <= _LONG[1]:
            return DT(a.ms + b.ms)
    return NO


def _like(text: str, pattern: list[Any]) -> bool | None:
    """Cedar `like`: literal characters and `*` wildcards (EST pattern elements)."""
    parts: list[str | None] = []
    for element in pattern:
        if element == "Wildcard":
            parts.append(None)
        elif isinstance(element, dict) and isinstance(element.get("Literal"), str):
            parts.append(element["Literal"])
        else:
            return None

    def match(i: int, j: int) -> bool:
        while j < len(parts):
            part = parts[j]
            if part is None:
                return any(match(k, j + 1) for k in range(i, len(text) + 1))
            if i >= len(text) or text[i] != part:
                return False
            i, j = i + 1, j + 1
        return i == len(text)

    if len(text) > 1000 or len(parts) > 1000:
        return None
    return match(0, 0)


def lit(node: Est) -> Any:
    """The value of a literal EST node, else NO."""
    if not isinstance(node, dict) or len(node) != 1:
        return NO
    ((op, arg),) = node.items()
    if op == "Value":
        return _from_cedar_json(arg)
    if op == "Set" and isinstance(arg, list):
        items = tuple(lit(x) for x in arg)
        return NO if any(i is NO for i in items) else SetV(items)
    if op == "Record" and isinstance(arg, dict):
        fields = tuple((k, lit(v)) for k, v in sorted(arg.items()))
        return NO if any(v is NO for _, v in fields) else RecV(fields)
    if op in ("datetime", "duration") and isinstance(arg, list) and len(arg) == 1:
        text = lit(arg[0])
        if isinstance(text, str):
            ms = datetime_text_ms(text) if op == "datetime" else duration_text_ms(text)
            if ms is not None:
                return DT(ms) if op == "datetime" else DUR(ms)
    return NO


def _from_cedar_json(value: Any) -> Any:
    """A value in Cedar's JSON form (entity store, EST `Value`), else NO when ambiguous."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        items = tuple(_from_cedar_json(x) for x in value)
        return NO if any(i is NO for i in items) else SetV(items)
    if isinstance(value, dict):
        if set(value) == {"__entity"} and isinstance(value["__entity"], dict):
            ref = value["__entity"]
            if isinstance(ref.get("type"), str) and isinstance(ref.get("id"), str):
                return EntityUid(ref["type"], ref["id"])
            return NO
        if set(value) == {"__extn"} and isinstance(value["__extn"], dict):
            ext = value["__extn"]
            if ext.get("fn") in ("datetime", "duration") and isinstance(ext.get("arg"), str):
                parse = datetime_text_ms if ext["fn"] == "datetime" else duration_text_ms
                ms = parse(ext["arg"])
                if ms is None:
                    return NO
                return DT(ms) if ext["fn"] == "datetime" else DUR(ms)
            return NO
        if set(value) <= {"type", "id"} or any(k.startswith("__") for k in value):
            return NO  # ambiguous: an entity reference without `__entity`, or an escape
        fields = tuple((k, _from_cedar_json(v)) for k, v in sorted(value.items()))
        return NO if any(v is NO for _, v in fields) else RecV(fields)
    return NO


def est(value: Any) -> Est:
    """A value as an EST literal (None when it cannot be written, e.g. a datetime out of range)."""
    if isinstance(value, bool | str) or (isinstance(value, int) and not isinstance(value, bool)):
        return {"Value": value}
    if isinstance(value, EntityUid):
        return {"Value": {"__entity": value.to_json()}}
    if isinstance(value, SetV):
        items = [est(x) for x in value.items]
        return None if any(i is None for i in items) else {"Set": items}
    if isinstance(value, RecV):
        fields = {k: est(v) for k, v in value.fields}
        return None if any(v is None for v in fields.values()) else {"Record": fields}
    if isinstance(value, DT):
        try:
            when = from_ms(value.ms)
        except (OverflowError, ValueError):
            return None
        if not 0 < when.year < 10000:
            return None
        return {"datetime": [{"Value": datetime_text(when)}]}
    if isinstance(value, DUR):
        return {"duration": [{"Value": f"{value.ms}ms"}]}
    return None


def unknown_name(node: Est) -> str | None:
    """`x` of an EST `unknown("x")` node, else None."""
    if isinstance(node, dict) and set(node) == {"unknown"}:
        arg = node["unknown"]
        if isinstance(arg, list) and len(arg) == 1 and isinstance(arg[0], dict):
            name = arg[0].get("Value")
            return name if isinstance(name, str) else None
    return None
