"""Warnings for policies that can error at run time in a way that fails open.

Cedar skips a policy whose evaluation errors. For a `forbid` that means the
restriction silently stops applying: under Cedar's semantics
(`policy_errors: cedar`) a permit then answers ALLOW; under stepguard's
default (`deny`) every request the forbid could apply to is denied until the
cause is fixed. Either way the policy does not say what its author meant, so
`stepguard validate` (and `stepguard test --coverage`) point at it.

What is detected, on the policy's JSON form (`cedarpy.policies_to_json_str`)
typed with the schema: in a `forbid`'s `when` / `unless` clauses, and in the
`unless` clauses of a `permit` (whose exception is then not decided and the
permit is skipped), an attribute read (`e.attr`, `e["attr"]`) or tag read
(`e.getTag(..)`) of an *entity* that may be absent from the entity store:
`principal`, `resource`, an entity-typed attribute (`context.workflow`,
`resource.owner`) or an entity literal the store does not hold. Such a read
is guarded, and not reported, when on every path to it the same expression
was tested with `has` (`e has a && e.attr`, `!(e has a) || e.attr`, `if e has
a then e.attr else ..`), or its attributes were read successfully before it.

Not detected (documented limits): arithmetic overflow, extension-function
errors (`datetime`, `decimal` out of range), guards the analysis cannot see
through (`e in G`, equality with a stored entity, a guard in another policy),
and reads whose entity type the schema does not determine. Reading an
optional attribute (schema `attr?`) without `has` needs no warning: Cedar's
strict validation already refuses it, with its position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy

from sidecar.authoring.schematypes import Type, Types, union
from sidecar.core.cedartext import Part, blank, policy_parts, position, split_policies
from sidecar.core.model import EntityUid

# --- the analysis -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One read that can error: its clause, what is read, and its place in the clause."""

    clause: int  # index into the policy's conditions
    text: str  # e.g. "resource.sensitivity"
    attr: str  # the attribute (or "getTag") read
    ordinal: int  # how many reads of `attr` come before it in the clause
    why: str


class _Walker:
    def __init__(self, types: Types | None, stored: frozenset[tuple[str, str]]) -> None:
        self.types = types
        self.stored = stored
        self.findings: list[Finding] = []
        self.clause = 0
        self.report = False
        self.seen: dict[str, int] = {}

    def type_of(self, e: Any) -> Type | None:
        if not isinstance(e, dict) or len(e) != 1:
            return None
        ((op, arg),) = e.items()
        t = self.types
        if op == "Var":
            if arg == "principal":
                return ("entity", t.principals if t else frozenset())
            if arg == "resource":
                return ("entity", t.resources if t else frozenset())
            if arg == "context" and t is not None:
                return ("record", t.context)
            return None
        if op == "Value" and isinstance(arg, dict) and "__entity" in arg:
            return ("entity", frozenset({str(arg["__entity"].get("type"))}))
        if op == "." and t is not None:
            base = self.type_of(arg["left"])
            if base is None:
                return None
            if base[0] == "record":
                attr_type: Type | None = base[1].get(arg["attr"])
                return attr_type
            if base[0] == "entity":
                found: Type | None = None
                for name in base[1]:
                    attr = t.entity_attrs.get(name, {}).get(arg["attr"])
                    if attr is not None:
                        found = union(found, attr)
                return found
        return None

    def may_be_absent(self, e: Any) -> str:
        """Why the entity `e` may be missing from the store, or "" when it cannot be."""
        t = self.type_of(e)
        if t is None or t[0] != "entity":
            return ""
        ((op, arg),) = e.items()
        if op == "Var":
            return f"the {arg} may not be in the entity store" if arg != "action" else ""
        if op == "Value":
            uid = arg["__entity"]
            if (str(uid.get("type")), str(uid.get("id"))) in self.stored:
                return ""
            return (
                f"{EntityUid(str(uid.get('type')), str(uid.get('id')))} is not in the entity store"
            )
        names = " or ".join(sorted(t[1])) or "an entity"
        return f"{_text(e)} is a {names} that may not be in the entity store"

    def walk(self, e: Any, facts: frozenset[str]) -> frozenset[str]:
        """Walk `e` in evaluation order; return the entities it reads (so they exist after it)."""
        if isinstance(e, list):
            acc: frozenset[str] = frozenset()
            for item in e:
                acc |= self.walk(item, facts | acc)
            return acc
        if not isinstance(e, dict) or len(e) != 1:
            return frozenset()
        ((op, arg),) = e.items()
        if op in ("Var", "Value", "Slot", "Unknown"):
            return frozenset()
        if op in {"&&", "||"}:
            left = self.walk(arg["left"], facts)
            known = _true(arg["left"]) if op == "&&" else _false(arg["left"])
            self.walk(arg["right"], facts | left | known)
            return left
        if op == "if-then-else":
            cond = self.walk(arg["if"], facts)
            self.walk(arg["then"], facts | cond | _true(arg["if"]))
            self.walk(arg["else"], facts | cond | _false(arg["if"]))
            return cond
        if op in (".", "getTag"):
            base = arg["left"]
            acc = self.walk(base, facts)
            attr = arg["attr"] if op == "." else "getTag"
            ordinal = self.seen.get(attr, 0)
            self.seen[attr] = ordinal + 1
            key = _key(base)
            why = self.may_be_absent(base)
            if why and key not in facts and key not in acc and self.report:
                text = f"{_text(base)}.{attr}" if op == "." else f"{_text(base)}.getTag(..)"
                self.findings.append(Finding(self.clause, text, attr, ordinal, why))
            if op == "getTag":
                acc |= self.walk(arg["right"], facts | acc)
            return acc | ({key} if why else frozenset())
        acc = frozenset()
        values = arg.values() if isinstance(arg, dict) else arg if isinstance(arg, list) else []
        for child in values:
            if isinstance(child, dict | list):
                acc |= self.walk(child, facts | acc)
        return acc


def _key(e: Any) -> str:
    return json.dumps(e, sort_keys=True)


def _true(e: Any) -> frozenset[str]:
    """Entities known to exist when `e` is true (a `has` on them held)."""
    if not isinstance(e, dict) or len(e) != 1:
        return frozenset()
    ((op, arg),) = e.items()
    if op == "has":
        return frozenset({_key(arg["left"])})
    if op == "&&":
        return _true(arg["left"]) | _true(arg["right"])
    if op == "!":
        return _false(arg["arg"])
    return frozenset()


def _false(e: Any) -> frozenset[str]:
    """Entities known to exist when `e` is false."""
    if not isinstance(e, dict) or len(e) != 1:
        return frozenset()
    ((op, arg),) = e.items()
    if op == "||":
        return _false(arg["left"]) | _false(arg["right"])
    if op == "!":
        return _true(arg["arg"])
    return frozenset()


def _text(e: Any) -> str:
    """A short source form of a simple expression, for messages."""
    if isinstance(e, dict) and len(e) == 1:
        ((op, arg),) = e.items()
        if op == "Var":
            return str(arg)
        if op == "Value" and isinstance(arg, dict) and "__entity" in arg:
            ref = arg["__entity"]
            return str(EntityUid(str(ref.get("type")), str(ref.get("id"))))
        if op == ".":
            return f"{_text(arg['left'])}.{arg['attr']}"
    return "(expression)"


def policy_findings(
    body: Mapping[str, Any], types: Types | None, stored: frozenset[tuple[str, str]]
) -> list[Finding]:
    """The reads in one policy (its JSON form) that can error and fail open."""
    walker = _Walker(types, stored)
    forbid = body.get("effect") == "forbid"
    facts: frozenset[str] = frozenset()
    for i, cond in enumerate(body.get("conditions") or []):
        walker.clause = i
        walker.seen = {}
        walker.report = forbid or cond.get("kind") == "unless"
        read = walker.walk(cond["body"], facts)
        known = _true(cond["body"]) if cond.get("kind") == "when" else _false(cond["body"])
        facts = facts | read | known
    return walker.findings


# --- positions and messages ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Risk:
    """A warning: where the read is, and what it risks."""

    file: str
    line: int
    column: int
    message: str
    source_line: str


def file_warnings(
    name: str, text: str, types: Types | None, stored: frozenset[tuple[str, str]]
) -> list[Risk]:
    """Warnings for one policy file (already known to parse), with line and column."""
    out: list[Risk] = []
    lines = text.split("\n")
    for span, start in _spans(text):
        try:
            est = json.loads(cedarpy.policies_to_json_str(span.text))
        except ValueError:
            continue
        bodies = list(est.get("staticPolicies", {}).values())
        if len(bodies) != 1:
            continue
        body = bodies[0]
        findings = policy_findings(body, types, stored)
        if not findings:
            continue
        clauses = [p for p in policy_parts(span.text) if p.kind in ("when", "unless")]
        pid = (body.get("annotations") or {}).get("id") or ""
        effect = str(body.get("effect"))
        label = f'{effect} "{pid}"' if pid else f"this {effect}"
        for f in findings:
            offset = start + _locate(span.text, clauses, f)
            line, column = position(text, offset)
            kind = body["conditions"][f.clause].get("kind", "when")
            if effect == "forbid":
                effect_text = (
                    "Cedar then skips the forbid, so a permit answers ALLOW under "
                    "policy_errors: cedar; under the default (deny) every request it could "
                    "apply to is denied"
                )
            else:
                effect_text = (
                    "the exception cannot be decided and the permit is skipped; under the "
                    "default (policy_errors: deny) the request is denied"
                )
            base = f.text.removesuffix(f".{f.attr}").removesuffix(".getTag(..)")
            guard = f"{base}.hasTag(..)" if f.attr == "getTag" else f"{base} has {f.attr}"
            message = (
                f"`{f.text}` in the `{kind}` of {label} errors at run time when {f.why}: "
                f"{effect_text}. Guard it: `{guard} && ...`"
            )
            source = lines[line - 1] if 0 < line <= len(lines) else ""
            out.append(Risk(name, line, column, message, source))
    return out


def _spans(text: str) -> Iterator[tuple[Any, int]]:
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    for span in split_policies(text):
        yield span, starts[span.line - 1] + span.column - 1


def _locate(policy: str, clauses: list[Part], f: Finding) -> int:
    """Offset in the policy text of the attribute name that `f` reads."""
    if f.clause >= len(clauses):
        return 0
    part = clauses[f.clause]
    code = blank(part.text, strings=True)
    attr = re.escape(f.attr)
    call = "" if f.attr == "getTag" else r"(?!\s*\()"  # `.attr`, not a method call
    dotted = re.finditer(rf"\.\s*{attr}\b{call}", code)
    hits = [m.start() + m.group(0).index(f.attr) for m in dotted]
    hits += [m.start() + 1 for m in re.finditer(rf'\[\s*"{attr}"\s*\]', blank(part.text))]
    hits.sort()
    if not hits:
        return part.offset
    return part.offset + hits[min(f.ordinal, len(hits) - 1)]
