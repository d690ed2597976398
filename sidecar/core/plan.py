"""Pre-flight plans: what each planned step of a run will be answered, before it runs.

The one place Cedar's partial evaluation (`cedarpy.is_authorized_partial`,
experimental upstream) is called. A planned step is a request whose context
is known only in part: the fields known at run time only (the step's time
`now`, the ticket, the approval) are marked unknown. The answer per step:

- ALLOW: allowed whatever the unknowns turn out to be;
- DENY: denied whatever they turn out to be, with the policies that settle it;
- DEPENDS: the residual conditions, as Cedar and in plain words.

Fail safe: an error or surprise from partial evaluation (errors in its
diagnostics, a policy missing from its residuals, an exception) is DEPENDS
with the reason, never ALLOW. A plan never replaces the decision: every step
is still decided when it runs (docs/api.md, "Plans").

Cedar's answer is not taken as is: its residuals, one per policy, are
simplified further (core/residual.py) and the verdict is read from them
here, under the process's `policy_errors` semantics. Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cedarpy

from sidecar.core import residual, residualtext
from sidecar.core.bundle import Bundle
from sidecar.core.index import WHOLE_CONTEXT
from sidecar.core.model import (
    AuthzRequest,
    CedarJson,
    Decision,
    EntityUid,
    PolicyErrors,
    PolicyRef,
)
from sidecar.core.requestset import request_entities

CALLER = "caller"  # set by the server for an authenticated caller, never by a plan


class Verdict(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    DEPENDS = "DEPENDS"


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One step of a plan, validated (core/planreq.py).

    `request.context` holds what is known before the run; `unknown` names the
    context fields known only at run time, as paths under `context`
    (`now`, `approval`, `approval.ticket`). `now` is unknown unless the step
    says when it runs (then it is in the context).
    """

    step_id: str
    request: AuthzRequest
    unknown: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResidualPolicy:
    """A policy still open for a DEPENDS step."""

    id: str
    effect: str  # "permit" | "forbid"
    source: str  # file:line
    cedar: str  # the residual policy as Cedar text
    words: str  # for a permit: when it applies; for a forbid: what keeps it from denying
    description: str  # the policy's @description, when it has one
    est: Mapping[str, Any]  # the simplified residual (Cedar's JSON policy form)


@dataclass(frozen=True, slots=True)
class StepVerdict:
    step_id: str
    verdict: Verdict
    # ALLOW: the permits satisfied; DENY: the forbids satisfied (none when no permit can apply).
    determining: tuple[PolicyRef, ...]
    residuals: tuple[ResidualPolicy, ...]
    # DEPENDS: the permits already satisfied (they allow unless an open forbid holds).
    satisfied: tuple[str, ...]
    reason: str  # one line for humans: "allowed if the step runs before 18:00 UTC ..."
    unknown: tuple[str, ...]
    revision: str
    policy_errors: PolicyErrors


def unknown_value(path: str) -> dict[str, Any]:
    """The value partial evaluation reads as unknown, named by its context path."""
    return {"__extn": {"fn": "unknown", "arg": path}}


def plan_step(
    bundle: Bundle,
    step: PlannedStep,
    policy_errors: PolicyErrors = PolicyErrors.DENY,
    *,
    caller: bool = False,
) -> StepVerdict:
    """The verdict for one planned step. Never raises; any failure is DEPENDS saying why.

    `caller`: the action's context may carry `context.caller` when the step runs
    (the server adds it for an authenticated caller, where the schema declares
    it). When a policy may read it, the step is planned both ways, without it
    and with it unknown, and is certain only when both agree.
    """
    try:
        alone = _plan_step(bundle, step, policy_errors)
        if not caller or not reads_caller(bundle) or CALLER in step.unknown:
            return alone
        with_caller = _plan_step(
            bundle, replace(step, unknown=(*step.unknown, CALLER)), policy_errors
        )
        if alone.verdict is with_caller.verdict and alone.verdict is not Verdict.DEPENDS:
            return alone
        return _depends(
            bundle,
            step,
            policy_errors,
            "depends on whether the step's caller is authenticated (context.caller): "
            f"without it, {alone.reason}; with it, {with_caller.reason}",
        )
    except Exception as exc:  # noqa: BLE001 - fail safe: never ALLOW on a surprise
        return _depends(bundle, step, policy_errors, f"partial evaluation failed: {exc}")


def reads_caller(bundle: Bundle) -> bool:
    """Whether any policy may read `context.caller` (the index knows what they read)."""
    return CALLER in bundle.context_reads or WHOLE_CONTEXT in bundle.context_reads


def refused(
    bundle: Bundle, step: PlannedStep, policy_errors: PolicyErrors, reason: str
) -> StepVerdict:
    """A DENY the server gives without asking Cedar (a workload binding refusal)."""
    return StepVerdict(
        step.step_id,
        Verdict.DENY,
        (),
        (),
        (),
        f"denied: {reason}",
        step.unknown,
        bundle.revision,
        policy_errors,
    )


def plan_steps(
    bundle: Bundle,
    steps: Sequence[PlannedStep],
    policy_errors: PolicyErrors = PolicyErrors.DENY,
    *,
    callers: frozenset[EntityUid] = frozenset(),
) -> list[StepVerdict]:
    """Each step's verdict; `callers`: the actions whose context may carry `caller`."""
    return [plan_step(bundle, s, policy_errors, caller=s.request.action in callers) for s in steps]


def _depends(
    bundle: Bundle,
    step: PlannedStep,
    policy_errors: PolicyErrors,
    reason: str,
    *,
    residuals: tuple[ResidualPolicy, ...] = (),
    satisfied: tuple[str, ...] = (),
) -> StepVerdict:
    return StepVerdict(
        step.step_id,
        Verdict.DEPENDS,
        (),
        residuals,
        satisfied,
        reason,
        step.unknown,
        bundle.revision,
        policy_errors,
    )


def cedar_context(step: PlannedStep) -> dict[str, Any]:
    """The step's context with each unknown path holding an unknown value."""
    context: dict[str, Any] = json.loads(json.dumps(dict(step.request.context)))
    for path in step.unknown:
        *parents, leaf = path.split(".")
        target = context
        for name in parents:
            nxt = target.get(name)
            if not isinstance(nxt, dict) or set(nxt) & {"__entity", "__extn"}:
                raise ValueError(f"context.{name} is not a record in the planned step")
            target = nxt
        target[leaf] = unknown_value(path)
    return context


def _plan_step(bundle: Bundle, step: PlannedStep, policy_errors: PolicyErrors) -> StepVerdict:
    request = step.request
    if request.denial:  # validation's verdict (a resource the store lacks): no policy is asked
        return StepVerdict(
            step.step_id,
            Verdict.DENY,
            (),
            (),
            (),
            f"denied: {request.denial}",
            step.unknown,
            bundle.revision,
            policy_errors,
        )
    cedar_request = {
        "principal": str(request.principal),
        "action": str(request.action),
        "resource": str(request.resource),
        "context": cedar_context(step),
    }
    entities = request_entities(bundle, request)
    # No schema here: a schema makes Cedar refuse a context holding unknowns
    # (NoDecision, "Request validation failed"). The known part was validated by
    # core/planreq.py; the entities were built with the schema.
    answer = cedarpy.is_authorized_partial(cedar_request, bundle.policy_set, entities)
    errors = list(answer.diagnostics.errors)
    if errors:
        return _depends(
            bundle, step, policy_errors, "partial evaluation reported errors: " + "; ".join(errors)
        )
    residuals = answer.residuals
    missing = sorted(set(bundle.policies) - set(residuals))
    if missing:
        return _depends(
            bundle, step, policy_errors, f"partial evaluation gave no residual for {missing[0]}"
        )
    lookup = _lookup(bundle, request)
    paths = frozenset(step.unknown)
    settled: dict[str, bool | None] = {}
    simplified: dict[str, Mapping[str, Any]] = {}
    for pid in sorted(bundle.policies):
        est = residuals[pid]
        settled[pid], simplified[pid] = residual.condition_value(est, lookup, paths)
        if est.get("effect") not in ("permit", "forbid"):
            return _depends(bundle, step, policy_errors, f"residual of {pid} has no effect")
    return _verdict(bundle, step, policy_errors, settled, simplified)


def _verdict(
    bundle: Bundle,
    step: PlannedStep,
    policy_errors: PolicyErrors,
    settled: Mapping[str, bool | None],
    simplified: Mapping[str, Mapping[str, Any]],
) -> StepVerdict:
    def effect(pid: str) -> str:
        return str(simplified[pid].get("effect"))

    forbids_true = [p for p, v in settled.items() if v is True and effect(p) == "forbid"]
    permits_true = [p for p, v in settled.items() if v is True and effect(p) == "permit"]
    permits_open = [p for p, v in settled.items() if v is None and effect(p) == "permit"]
    forbids_open = [p for p, v in settled.items() if v is None and effect(p) == "forbid"]
    refs = bundle.refs

    def ref(pid: str) -> PolicyRef:
        return refs.get(pid) or PolicyRef(pid, {}, "")

    if forbids_true:
        return StepVerdict(
            step.step_id,
            Verdict.DENY,
            tuple(ref(p) for p in forbids_true),
            (),
            (),
            "denied whatever the unknowns are: forbidden by " + ", ".join(forbids_true),
            step.unknown,
            bundle.revision,
            policy_errors,
        )
    if not permits_true and not permits_open:
        return StepVerdict(
            step.step_id,
            Verdict.DENY,
            (),
            (),
            (),
            "denied whatever the unknowns are: no policy permits this step",
            step.unknown,
            bundle.revision,
            policy_errors,
        )
    # Under `policy_errors: deny` an open permit could still error at run time and
    # turn the ALLOW into a DENY; under Cedar's semantics it could not.
    open_permits_matter = policy_errors is PolicyErrors.DENY and permits_open
    if permits_true and not forbids_open and not open_permits_matter:
        return StepVerdict(
            step.step_id,
            Verdict.ALLOW,
            tuple(ref(p) for p in permits_true),
            (),
            (),
            "allowed whatever the unknowns are: permitted by " + ", ".join(permits_true),
            step.unknown,
            bundle.revision,
            policy_errors,
        )
    open_ids = [*permits_open, *forbids_open]
    out = tuple(_residual(bundle, pid, simplified[pid]) for pid in open_ids)
    return _depends(
        bundle,
        step,
        policy_errors,
        _summary(out, bool(permits_true)),
        residuals=out,
        satisfied=tuple(permits_true),
    )


def _condition(est: Mapping[str, Any]) -> Any:
    """A residual's conditions as one expression (`when` a, `unless` b: a && !b)."""
    parts = []
    for cond in est.get("conditions") or []:
        body = cond.get("body")
        parts.append(body if cond.get("kind") == "when" else {"!": {"arg": body}})
    if not parts:
        return {"Value": True}
    expr = parts[0]
    for part in parts[1:]:
        expr = {"&&": {"left": expr, "right": part}}
    return expr


def _residual(bundle: Bundle, pid: str, est: Mapping[str, Any]) -> ResidualPolicy:
    info = bundle.policies.get(pid)
    effect = str(est.get("effect"))
    condition = _condition(est)
    words = (
        residualtext.words(condition)
        if effect == "permit"
        else residualtext.negated_words(condition)
    )
    annotations = info.annotations if info is not None else {}
    return ResidualPolicy(
        pid,
        effect,
        info.source if info is not None else "",
        residualtext.cedar_text(pid, est),
        words,
        str(annotations.get("description", "")),
        est,
    )


def _summary(out: tuple[ResidualPolicy, ...], permitted: bool) -> str:
    """ "allowed if <a permit's condition> and <each forbid kept off>"."""
    parts: list[str] = []
    permits = [r.words for r in out if r.effect == "permit"]
    if permits and not permitted:
        parts.append(" or ".join(f"({w})" if " and " in w else w for w in permits))
    for r in out:
        if r.effect == "forbid":
            parts.append(f"({r.words})" if " or " in r.words and len(out) > 1 else r.words)
    return "allowed if " + " and ".join(parts)


def _lookup(bundle: Bundle, request: AuthzRequest) -> residual.Lookup:
    supplied = {d.uid: d for d in request.entities if d.uid not in bundle.entity_json}

    def lookup(uid: EntityUid) -> tuple[Mapping[str, Any], tuple[EntityUid, ...]] | None:
        data = supplied.get(uid)
        if data is not None:
            return data.attrs, data.parents
        stored = bundle.entity_json.get(uid)
        if stored is None:
            return None
        attrs = stored.get("attrs") or {}
        parents = []
        for p in stored.get("parents") or []:
            ref = p.get("__entity", p) if isinstance(p, dict) else None
            if not isinstance(ref, dict) or not isinstance(ref.get("type"), str):
                return None
            parents.append(EntityUid(ref["type"], str(ref.get("id"))))
        return attrs, tuple(parents)

    return lookup


def decide_bound(
    bundle: Bundle,
    verdict: StepVerdict,
    step: PlannedStep,
    values: Mapping[str, CedarJson],
    policy_errors: PolicyErrors = PolicyErrors.DENY,
) -> Decision:
    """The decision a step's plan gives once its unknowns have `values` (path -> Cedar JSON).

    A certain verdict is its own answer. A DEPENDS step's residuals, with the
    values put in place of the unknowns, are decided by Cedar (`is_authorized`),
    with the permits the plan found satisfied; under `policy_errors: deny` an
    ALLOW with errors is a DENY, as in the engine. This is what the plan
    predicts, for checking it against the decision the step really gets.
    """
    if verdict.verdict is Verdict.ALLOW:
        return Decision.ALLOW
    if verdict.verdict is Verdict.DENY:
        return Decision.DENY
    if not verdict.residuals and not verdict.satisfied:
        raise ValueError(f"step {verdict.step_id}: {verdict.reason}")
    bound = {name: residualtext.est_from_cedar_json(v) for name, v in values.items()}
    static: dict[str, Any] = {}
    for r in verdict.residuals:
        static[r.id] = residualtext.bind(dict(r.est), bound)
    for pid in verdict.satisfied:
        static[pid] = {
            "effect": "permit",
            "principal": {"op": "All"},
            "action": {"op": "All"},
            "resource": {"op": "All"},
            "conditions": [],
        }
    policies = cedarpy.PolicySet.from_json_str(
        json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})
    )
    request = step.request
    answer = cedarpy.is_authorized(
        {
            "principal": str(request.principal),
            "action": str(request.action),
            "resource": str(request.resource),
            "context": {},
        },
        policies,
        request_entities(bundle, request),
    )
    if answer.decision is cedarpy.Decision.Allow:
        if answer.diagnostics.errors and policy_errors is PolicyErrors.DENY:
            return Decision.DENY
        return Decision.ALLOW
    return Decision.DENY
