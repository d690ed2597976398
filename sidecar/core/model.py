"""Plain data that flows through the decision path: no protobuf, no I/O.

Cedar values are carried in Cedar's JSON form (`{"__entity": ...}`,
`{"__extn": ...}`), which is what cedarpy parses with the schema.

Time is resolved by validation (core/validate.py: the request's time bound
as Cedar reads it, and `context.now`), once, into the `AuthzRequest` the rest
of the decision path reads; nothing here computes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

# A Cedar value in Cedar's JSON entity/context format.
CedarJson = Any


# Cedar's string escapes for the characters an id may hold that are not printable.
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0"}
_ESCAPE = re.compile(r"\\(?:u\{([0-9a-fA-F]{1,6})\}|(.))", re.DOTALL)
# `Type::"id"` as Cedar writes a reference (the id still escaped).
_UID_TEXT = re.compile(r'(?P<type>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)::"(?P<id>(?:[^"\\]|\\.)*)"')


def cedar_unescape(text: str) -> str:
    """The id a Cedar string literal's body spells (`EntityUid.__str__` in reverse, and
    what Cedar prints): `\\n`, `\\r`, `\\t`, `\\0`, `\\u{hex}`; any other escaped
    character is itself (`\\"`, `\\\\`, `\\'`). A `\\u{...}` that names no character
    is left as written."""
    if "\\" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        if m[1] is not None:
            code = int(m[1], 16)
            return chr(code) if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else m[0]
        return _UNESCAPES.get(m[2], m[2])

    return _ESCAPE.sub(one, text)


@dataclass(frozen=True, slots=True)
class EntityUid:
    type: str
    id: str

    def __str__(self) -> str:
        """Cedar's text for the reference, `Type::"id"`: the id escaped as a Cedar string
        (a quote, a backslash, and every character that is not printable: a newline, a
        control or a bidi character from a request must not reach a message or a log
        line raw)."""
        escaped = self.id.replace("\\", "\\\\").replace('"', '\\"')
        if not escaped.isprintable():
            escaped = "".join(
                c if c.isprintable() else _ESCAPES.get(c) or f"\\u{{{ord(c):x}}}" for c in escaped
            )
        return f'{self.type}::"{escaped}"'

    @classmethod
    def parse(cls, text: str) -> EntityUid | None:
        """The reference `Type::"id"` names (Cedar's escapes undone), None when `text` is
        not one: what `str()` writes, read back."""
        m = _UID_TEXT.fullmatch(text)
        return cls(m["type"], cedar_unescape(m["id"])) if m else None

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id}


@dataclass(frozen=True, slots=True)
class EntityData:
    """Attributes and parents a request supplies for one entity, for that call only."""

    uid: EntityUid
    attrs: Mapping[str, CedarJson] = field(default_factory=dict)
    parents: tuple[EntityUid, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid.to_json(),
            "attrs": dict(self.attrs),
            "parents": [p.to_json() for p in self.parents],
        }


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """One Cedar request, ready for the engine.

    `denial` is set by validation for a request that is well formed but must be
    denied without asking Cedar (a resource the entity store lacks): the engine
    answers DENY with it as the diagnostic, and the decision is audited as usual.
    """

    principal: EntityUid
    action: EntityUid
    resource: EntityUid
    context: Mapping[str, CedarJson]
    entities: tuple[EntityData, ...] = ()
    denial: str = ""
    # The request's own time bound (`context.time_bound`) in ms, as validation read it:
    # `context.now` was resolved against it, and a cached ALLOW is served only inside it.
    not_before_ms: int | None = None
    not_after_ms: int | None = None
    # `context.now` in ms as validation resolved it (None when it set none): a
    # cache entry keyed on the raw bytes remembers the `now` it was decided at.
    now_ms: int | None = None


class Decision(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class PolicyErrors(enum.Enum):
    """What a policy that errors does to a decision (docs/api.md, "Policies that error").

    Cedar skips a policy whose evaluation errors, so a `forbid` that cannot be
    evaluated lets a permit through. stepguard's default refuses that: an
    ALLOW stands only when no evaluated policy errored. `CEDAR` keeps Cedar's
    own semantics (the Cedar conformance corpus runs with it).
    """

    DENY = "deny"  # any error in a policy that could apply: DENY (the default)
    CEDAR = "cedar"  # Cedar's semantics: the erroring policy is skipped

    @classmethod
    def parse(cls, text: str) -> PolicyErrors:
        """From a setting or flag (`deny` or `cedar`); ValueError names the choices."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"policy_errors must be one of {choices}, got {text!r}") from None


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """A policy that determined a decision."""

    id: str
    annotations: Mapping[str, str]
    source: str  # file:line


@dataclass(frozen=True, slots=True)
class EvalError:
    policy_id: str  # "" when not tied to one policy
    message: str


@dataclass(frozen=True, slots=True)
class Obligations:
    """What an ALLOW binds the step to: the smallest of each among the determining
    permits (docs/api.md). `revoke_within`: the access the step grants must be removed
    within this long of its end (docs/evidence.md)."""

    max_credential_ttl: timedelta | None = None
    revoke_within: timedelta | None = None

    def to_json(self) -> dict[str, float]:
        """`{"max_credential_ttl_s": 900.0, "revoke_within_s": 86400.0}`, set ones only:
        the audit event's and `check --json`'s `obligations`."""
        out: dict[str, float] = {}
        if self.max_credential_ttl is not None:
            out["max_credential_ttl_s"] = self.max_credential_ttl.total_seconds()
        if self.revoke_within is not None:
            out["revoke_within_s"] = self.revoke_within.total_seconds()
        return out


@dataclass(frozen=True, slots=True)
class Result:
    """What the engine decided, and why. `revision` names the bundle."""

    decision: Decision
    reasons: tuple[PolicyRef, ...]
    errors: tuple[EvalError, ...]
    obligations: Obligations
    revision: str
    # The semantics this decision was made under (fixed per server process).
    policy_errors: PolicyErrors = PolicyErrors.DENY

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW

    def summary(self) -> str:
        """One line for humans: why this decision."""
        ids = ", ".join(r.id for r in self.reasons)
        if self.allowed:
            return f"permitted by {ids}"
        if self.reasons:
            return f"forbidden by {ids}"
        if self.errors:
            return "denied: " + "; ".join(
                f"policy {e.policy_id} errored: {e.message}" if e.policy_id else e.message
                for e in self.errors
            )
        return "denied: no policy permits this request"


def result_json(result: Result) -> dict[str, Any]:
    """A Result as JSON: `stepguard check --json`, and each case's `actual` in `test --format json`.

    Here, beside the model, so both commands (and the test report) share one
    shape without the authoring tools importing the command line.
    """
    return {
        "decision": result.decision.value,
        "reason": result.summary(),
        "determining_policies": [
            {"id": r.id, "source": r.source, "annotations": dict(r.annotations)}
            for r in result.reasons
        ],
        "errors": [{"policy": e.policy_id, "message": e.message} for e in result.errors],
        "obligations": result.obligations.to_json(),
        "policy_revision": result.revision,
        "policy_errors": result.policy_errors.value,
    }
