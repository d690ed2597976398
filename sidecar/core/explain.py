"""Why a request got its decision: every policy, and the clause that settled it.

Cedar reports only the determining policies and the ones that errored. To say
why every other policy did or did not fire, each policy is taken apart into
probes that are evaluated on their own, all in one extra Cedar call:

- `applies`: the policy's scope alone (does it apply to this request?);
- one probe per scope constraint that is not `principal`/`action`/`resource`;
- one probe per `when` / `unless` clause, under the policy's scope, so its
  value is the clause's own value for a request the policy applies to;
- `whole`: the policy as written, as a permit (was it satisfied?).

Every probe is a permit, so a satisfied probe shows up in Cedar's reasons and
a failing one in its errors. Cedar evaluates a policy as `scope && when_1 &&
!unless_1 && ...` left to right, so the deciding clause is the first one that
is false (a `when`) or true (an `unless`), or that errors.

This is pure (no I/O, clock or logging) and never changes a decision: the
decision always comes from `engine.evaluate`; an explanation is computed
beside it. Probe sets are parsed once per bundle revision and kept in a small
memo, so asking for explanations costs one extra evaluation, not a re-parse.
"""

from __future__ import annotations

import enum
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import cedarpy

from sidecar.core.bundle import Bundle
from sidecar.core.cedartext import SCOPE_KINDS, Part, one_line, policy_parts, position
from sidecar.core.model import AuthzRequest, Result
from sidecar.core.policyparse import PolicyInfo
from sidecar.core.requestset import request_entities
from sidecar.core.textsafe import escape

_MEMO_SIZE = 8


class Outcome(enum.Enum):
    NOT_APPLICABLE = "not-applicable"  # its scope did not match the request
    SATISFIED = "satisfied"  # scope matched and every condition held
    NOT_SATISFIED = "not-satisfied"  # a `when` was false or an `unless` true
    ERRORED = "errored"  # evaluating it failed; Cedar skips it (fail closed)
    NOT_EVALUATED = "not-evaluated"  # Cedar refused the request before any policy ran


class Value(enum.Enum):
    TRUE = "true"
    FALSE = "false"
    ERROR = "error"
    UNKNOWN = "unknown"  # not evaluated: the policy does not apply


@dataclass(frozen=True, slots=True)
class Clause:
    """One scope constraint or condition clause, and its value for this request."""

    kind: str  # principal | action | resource | when | unless
    index: int  # position among the policy's parts, in source order
    source: str  # file:line:column
    text: str  # the source, on one line
    value: Value
    error: str = ""

    @property
    def is_condition(self) -> bool:
        return self.kind in ("when", "unless")


@dataclass(frozen=True, slots=True)
class PolicyExplanation:
    id: str
    effect: str
    source: str  # file:line where the policy starts
    outcome: Outcome
    determining: bool
    deciding: Clause | None  # the clause that made the outcome; None when satisfied
    clauses: tuple[Clause, ...]
    errors: tuple[str, ...]
    max_credential_ttl: timedelta | None


@dataclass(frozen=True, slots=True)
class Explanation:
    result: Result
    policies: tuple[PolicyExplanation, ...]
    request_errors: tuple[str, ...]  # errors not tied to a policy (the request itself)


@dataclass(frozen=True, slots=True)
class _Probe:
    id: str
    part: Part | None  # None for `applies` and `whole`


@dataclass(frozen=True, slots=True)
class _PolicyProbes:
    info: PolicyInfo
    applies: str
    whole: str
    parts: tuple[_Probe, ...]  # scope constraints and conditions, source order
    broken: str  # why this policy could not be taken apart, or ""


@dataclass(frozen=True, slots=True)
class _ProbeSet:
    policy_set: cedarpy.PolicySet | None
    policies: tuple[_PolicyProbes, ...]


_memo: OrderedDict[str, _ProbeSet] = OrderedDict()
_memo_lock = threading.Lock()


def explain(bundle: Bundle, request: AuthzRequest, result: Result) -> Explanation:
    """Explain `result`, the engine's decision of `request` on `bundle`. Never raises."""
    try:
        probes = _probes(bundle)
    except Exception as exc:  # noqa: BLE001 - an explanation must never fail a decision
        return Explanation(result, (), (f"explanation unavailable: {type(exc).__name__}: {exc}",))
    satisfied: set[str] = set()
    errored: dict[str, list[str]] = {}
    request_errors: list[str] = [e.message for e in result.errors if not e.policy_id]
    if probes.policy_set is not None and not request.denial:  # denied before Cedar: none ran
        try:
            satisfied, errored, unbound = _run(bundle, probes.policy_set, request)
        except Exception as exc:  # noqa: BLE001 - an explanation must never fail a decision
            request_errors.append(f"explanation unavailable: {type(exc).__name__}: {exc}")
        else:
            request_errors.extend(m for m in unbound if m not in request_errors)
    cedar_refused = bool(request_errors) and not satisfied and not result.reasons
    reasons = {r.id for r in result.reasons}
    policy_errors: dict[str, list[str]] = {}
    for err in result.errors:
        if err.policy_id:
            policy_errors.setdefault(err.policy_id, []).append(err.message)
    out = [
        _explain_policy(
            p,
            satisfied=satisfied,
            errored=errored,
            reasons=reasons,
            policy_errors=policy_errors,
            cedar_refused=cedar_refused,
        )
        for p in probes.policies
    ]
    return Explanation(result, tuple(out), tuple(request_errors))


def condition_clauses(bundle: Bundle) -> dict[str, tuple[Clause, ...]]:
    """Each policy's `when` / `unless` clauses, located, with no value yet (for coverage)."""
    return {
        p.info.id: tuple(
            _clause(p.info, probe.part, k, Value.UNKNOWN, "")
            for k, probe in enumerate(p.parts)
            if probe.part is not None and probe.part.kind not in SCOPE_KINDS
        )
        for p in _probes(bundle).policies
    }


def _explain_policy(
    probes: _PolicyProbes,
    *,
    satisfied: set[str],
    errored: dict[str, list[str]],
    reasons: set[str],
    policy_errors: dict[str, list[str]],
    cedar_refused: bool,
) -> PolicyExplanation:
    info = probes.info
    errors = tuple(policy_errors.get(info.id, ()))
    applies = probes.applies in satisfied
    clauses: list[Clause] = []
    for k, probe in enumerate(probes.parts):
        assert probe.part is not None
        value, error = _value(probe.id, satisfied, errored)
        if probe.part.kind not in SCOPE_KINDS and not applies:
            value, error = Value.UNKNOWN, ""
        clauses.append(_clause(info, probe.part, k, value, error))
    deciding: Clause | None = None
    if cedar_refused or probes.broken:
        outcome = Outcome.NOT_EVALUATED
        errors = errors or ((probes.broken,) if probes.broken else ())
    elif not applies:
        outcome = Outcome.NOT_APPLICABLE
        deciding = next((c for c in clauses if not c.is_condition and c.value is Value.FALSE), None)
    else:
        for clause in clauses:
            if not clause.is_condition:
                continue
            if clause.value is Value.ERROR:
                deciding = clause
                break
            if (clause.kind == "when") == (clause.value is Value.FALSE):
                deciding = clause
                break
        if errors or probes.whole in errored or (deciding and deciding.value is Value.ERROR):
            outcome = Outcome.ERRORED
            errors = errors or tuple(errored.get(probes.whole, ()))
        elif probes.whole in satisfied:
            outcome, deciding = Outcome.SATISFIED, None
        else:
            outcome = Outcome.NOT_SATISFIED
    return PolicyExplanation(
        id=info.id,
        effect=info.effect,
        source=info.source,
        outcome=outcome,
        determining=info.id in reasons,
        deciding=deciding,
        clauses=tuple(clauses),
        errors=errors,
        max_credential_ttl=info.max_credential_ttl,
    )


def _value(pid: str, satisfied: set[str], errored: dict[str, list[str]]) -> tuple[Value, str]:
    if pid in errored:
        return Value.ERROR, "; ".join(errored[pid])
    return (Value.TRUE, "") if pid in satisfied else (Value.FALSE, "")


def _clause(info: PolicyInfo, part: Part, index: int, value: Value, error: str) -> Clause:
    line, column = position(info.text, part.offset)
    # The policy text starts at `info.line`, column 1 of its first line at the earliest.
    source = f"{info.file}:{info.line + line - 1}:{column}"
    return Clause(part.kind, index, source, one_line(part.text), value, error)


def _run(
    bundle: Bundle, policy_set: cedarpy.PolicySet, request: AuthzRequest
) -> tuple[set[str], dict[str, list[str]], list[str]]:
    entities = request_entities(bundle, request)
    answer = cedarpy.is_authorized(
        {
            "principal": request.principal.to_json(),
            "action": request.action.to_json(),
            "resource": request.resource.to_json(),
            "context": dict(request.context),
        },
        policy_set,
        entities,
        bundle.schema,
    )
    satisfied = set(answer.diagnostics.reasons)
    errored: dict[str, list[str]] = {}
    unbound: list[str] = []
    for message in answer.diagnostics.errors:
        pid, sep, rest = _split_policy_error(message)
        if sep:
            errored.setdefault(pid, []).append(rest)
        else:
            unbound.append(message)
    return satisfied, errored, unbound


def _split_policy_error(message: str) -> tuple[str, bool, str]:
    prefix = "error while evaluating policy `"
    if message.startswith(prefix):
        pid, sep, rest = message[len(prefix) :].partition("`: ")
        if sep:
            return pid, True, rest
    return "", False, message


def _probes(bundle: Bundle) -> _ProbeSet:
    key = bundle.revision
    with _memo_lock:
        found = _memo.get(key)
        if found is not None:
            _memo.move_to_end(key)
            return found
    built = _build_probes(bundle)
    with _memo_lock:
        _memo[key] = built
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)
    return built


def _build_probes(bundle: Bundle) -> _ProbeSet:
    static: dict[str, Any] = {}
    policies: list[_PolicyProbes] = []
    for n, info in enumerate(bundle.policies.values()):
        prefix = f"p{n}"
        try:
            body, parts = _take_apart(info)
        except ValueError as exc:
            policies.append(_PolicyProbes(info, "", "", (), f"cannot explain this policy: {exc}"))
            continue
        base = {**body, "effect": "permit", "annotations": {}}
        all_scope = {"op": "All"}
        static[f"{prefix}.applies"] = {**base, "conditions": []}
        static[f"{prefix}.whole"] = base
        probes: list[_Probe] = []
        conditions = iter(body.get("conditions", []))
        for k, part in enumerate(parts):
            pid = f"{prefix}.{k}.{part.kind}"
            if part.kind in SCOPE_KINDS:
                scope = {kind: all_scope for kind in SCOPE_KINDS}
                scope[part.kind] = body[part.kind]
                static[pid] = {**base, **scope, "conditions": []}
            else:
                condition = next(conditions)
                static[pid] = {**base, "conditions": [{"kind": "when", "body": condition["body"]}]}
            probes.append(_Probe(pid, part))
        policies.append(
            _PolicyProbes(info, f"{prefix}.applies", f"{prefix}.whole", tuple(probes), "")
        )
    if not static:
        return _ProbeSet(None, tuple(policies))
    document = {"staticPolicies": static, "templates": {}, "templateLinks": []}
    try:
        policy_set = cedarpy.PolicySet.from_json_str(json.dumps(document))
    except ValueError as exc:  # pragma: no cover - each probe is a policy Cedar already parsed
        broken = f"cannot explain these policies: {exc}"
        return _ProbeSet(None, tuple(_PolicyProbes(p.info, "", "", (), broken) for p in policies))
    return _ProbeSet(policy_set, tuple(policies))


def _take_apart(info: PolicyInfo) -> tuple[dict[str, Any], list[Part]]:
    """The policy's Cedar JSON and its non-trivial scope constraints and clauses."""
    est = json.loads(cedarpy.policies_to_json_str(info.text))
    bodies = list(est.get("staticPolicies", {}).values())
    if len(bodies) != 1:
        raise ValueError(f"expected one policy in its source text, found {len(bodies)}")
    body: dict[str, Any] = bodies[0]
    parts = policy_parts(info.text)
    conditions = [p for p in parts if p.kind not in SCOPE_KINDS]
    if len(conditions) != len(body.get("conditions", [])):
        raise ValueError("its when/unless clauses could not be located in the source")
    kept = [p for p in parts if p.kind not in SCOPE_KINDS or body[p.kind].get("op") != "All"]
    return body, kept


# --- presenting an explanation ------------------------------------------------

_ORDER = {
    Outcome.SATISFIED: 0,
    Outcome.ERRORED: 1,
    Outcome.NOT_SATISFIED: 2,
    Outcome.NOT_APPLICABLE: 3,
    Outcome.NOT_EVALUATED: 4,
}


def ordered(explanation: Explanation) -> list[PolicyExplanation]:
    """Determining policies first, then by outcome, then in source order."""
    position = {id(p): n for n, p in enumerate(explanation.policies)}
    return sorted(
        explanation.policies,
        key=lambda p: (not p.determining, _ORDER[p.outcome], position[id(p)]),
    )


def deciding_text(policy: PolicyExplanation) -> str:
    """Why the policy has its outcome, in one line."""
    clause = policy.deciding
    if policy.outcome is Outcome.SATISFIED:
        return "scope matched and every condition held"
    if policy.outcome is Outcome.NOT_EVALUATED:
        return "not evaluated: " + ("; ".join(policy.errors) or "the request was refused")
    if clause is None:
        return "; ".join(policy.errors) or "no single clause decided it"
    if clause.value is Value.ERROR:
        return f"{clause.kind} clause at {clause.source} failed: {clause.error}"
    if clause.kind in SCOPE_KINDS:
        return f"{clause.kind} does not match: {clause.text} ({clause.source})"
    verb = "is false" if clause.kind == "when" else "is true"
    return f"{clause.kind} clause at {clause.source} {verb}: {clause.text}"


def render_text(explanation: Explanation) -> str:
    """The explanation as text; ids, sources, clauses and errors escaped (core/textsafe.py)."""
    lines = [f"policies ({len(explanation.policies)}):"]
    for pol in ordered(explanation):
        flag = "  DETERMINING" if pol.determining else ""
        lines.append(
            f"  {pol.outcome.value.upper():<15}{pol.effect:<7}{escape(pol.id)}  "
            f"({escape(pol.source)}){flag}"
        )
        why = escape(deciding_text(pol))
        if pol.outcome is Outcome.SATISFIED and not pol.determining and pol.effect == "permit":
            why += "; overridden: a forbid was satisfied too, and forbid wins"
        lines.append(f"  {'':<15}{why}")
        if pol.outcome is Outcome.ERRORED:
            for err in pol.errors:
                lines.append(f"  {'':<15}error: {escape(err)}")
        if pol.max_credential_ttl is not None and pol.outcome is Outcome.SATISFIED:
            ttl = int(pol.max_credential_ttl.total_seconds())
            lines.append(f"  {'':<15}obligation: max_credential_ttl {ttl}s")
    for err in explanation.request_errors:
        lines.append(f"request error: {escape(err)}")
    return "\n".join(lines)


def to_json(explanation: Explanation) -> dict[str, Any]:
    return {
        "policies": [
            {
                "id": p.id,
                "effect": p.effect,
                "source": p.source,
                "outcome": p.outcome.value,
                "determining": p.determining,
                "why": deciding_text(p),
                "deciding_clause": _clause_json(p.deciding) if p.deciding else None,
                "clauses": [_clause_json(c) for c in p.clauses],
                "errors": list(p.errors),
                "obligations": (
                    {"max_credential_ttl_s": p.max_credential_ttl.total_seconds()}
                    if p.max_credential_ttl is not None
                    else {}
                ),
            }
            for p in ordered(explanation)
        ],
        "request_errors": list(explanation.request_errors),
    }


def _clause_json(clause: Clause) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": clause.kind,
        "source": clause.source,
        "text": clause.text,
        "value": clause.value.value,
    }
    if clause.error:
        out["error"] = clause.error
    return out
