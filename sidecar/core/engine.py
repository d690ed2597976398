"""Pure evaluation: (bundle, request) -> Result. No I/O, no clock, never raises.

Anything that goes wrong while deciding, in cedarpy or here, becomes a DENY
whose diagnostics say what happened. Only a Cedar `Allow` is ever an ALLOW,
and under the default `PolicyErrors.DENY` only one with no policy errors:
Cedar skips a policy whose evaluation errors, so a `forbid` that errors would
otherwise let a permit through (docs/api.md, "Policies that error").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import cedarpy
import orjson

from sidecar.core.bundle import Bundle
from sidecar.core.model import (
    AuthzRequest,
    Decision,
    EntityData,
    EvalError,
    Obligations,
    PolicyErrors,
    PolicyRef,
    Result,
)

_POLICY_ERROR = re.compile(r"error while evaluating policy `(?P<id>[^`]*)`: (?P<msg>.*)", re.DOTALL)


def evaluate(
    bundle: Bundle,
    request: AuthzRequest,
    *,
    indexed: bool = True,
    policy_errors: PolicyErrors = PolicyErrors.DENY,
) -> Result:
    """Decide `request`. `indexed=False` evaluates every policy (the index's reference).

    `policy_errors` says what an erroring policy does: under `DENY` (the
    default) Cedar's ALLOW stands only when no evaluated policy errored. The
    index leaves out only policies whose scope cannot match, and Cedar never
    evaluates the conditions of those, so the errors are the same either way.
    """
    try:
        return _evaluate(bundle, request, indexed, policy_errors)
    except Exception as exc:  # noqa: BLE001 - fail closed on anything
        message = f"evaluation failed: {type(exc).__name__}: {exc}"
        return deny(bundle.revision, message, policy_errors)


def deny(revision: str, message: str, policy_errors: PolicyErrors = PolicyErrors.DENY) -> Result:
    """A DENY carrying one diagnostic and no determining policy."""
    return Result(
        Decision.DENY, (), (EvalError("", message),), Obligations(), revision, policy_errors
    )


def _evaluate(
    bundle: Bundle, request: AuthzRequest, indexed: bool, policy_errors: PolicyErrors
) -> Result:
    if request.denial:  # validation's verdict (an unknown resource): no policy is asked
        return deny(bundle.revision, request.denial, policy_errors)
    try:
        entities = _entities_for(bundle, request.entities)
    except ValueError as exc:
        return deny(bundle.revision, f"request entities rejected: {exc}", policy_errors)
    cedar_request = {
        "principal": request.principal.to_json(),
        "action": request.action.to_json(),
        "resource": request.resource.to_json(),
        "context": dict(request.context),
    }
    policy_set = bundle.policy_set
    if indexed and bundle.index is not None:
        policy_set = bundle.index.policy_set_for(request)
    answer = _is_authorized(cedar_request, policy_set, entities, bundle.schema)
    diagnostics = answer.diagnostics
    errors = tuple(_eval_error(e) for e in diagnostics.errors)
    reasons = tuple(_policy_ref(bundle, pid) for pid in diagnostics.reasons)
    if answer.decision is cedarpy.Decision.Allow:
        if errors and policy_errors is PolicyErrors.DENY:
            # A policy that could apply errored (a forbid, or another permit):
            # the permits alone do not make this an ALLOW. No policy determined
            # the DENY, so none is named; the errors say why.
            return Result(Decision.DENY, (), errors, Obligations(), bundle.revision, policy_errors)
        return Result(
            Decision.ALLOW,
            reasons,
            errors,
            _obligations(bundle, reasons),
            bundle.revision,
            policy_errors,
        )
    if answer.decision is not cedarpy.Decision.Deny and not errors:
        errors = (EvalError("", f"no decision from Cedar ({answer.decision.value})"),)
    return Result(Decision.DENY, reasons, errors, Obligations(), bundle.revision, policy_errors)


def _is_authorized(
    request: dict[str, Any],
    policy_set: cedarpy.PolicySet,
    entities: cedarpy.Entities,
    schema: cedarpy.Schema,
) -> cedarpy.AuthzResult:
    """cedarpy.is_authorized for one request with parsed handles, JSON done by orjson.

    cedarpy's wrapper encodes the context and decodes the answer with the
    standard library (about a tenth of a miss); this calls the same extension
    function with the same arguments (cedarpy 4.12.2, pinned) and falls back to
    the wrapper for what orjson cannot encode. The Cedar corpus test runs
    every request through here.
    """
    try:
        context = orjson.dumps(request["context"]).decode()
    except TypeError:
        return cedarpy.is_authorized(request, policy_set, entities, schema)
    answers = cedarpy._internal.is_authorized_batch(
        [{**request, "context": context}],
        policy_set,
        entities._inner,
        schema,
        False,
    )
    return cedarpy.AuthzResult(orjson.loads(answers[0]))


def request_entities(bundle: Bundle, request: AuthzRequest) -> cedarpy.Entities:
    """The entity set `evaluate` decides `request` with (for explanations); may raise ValueError."""
    return _entities_for(bundle, request.entities)


def _entities_for(bundle: Bundle, supplied: Iterable[EntityData]) -> cedarpy.Entities:
    """The store plus the entities a request supplies, for this call only.

    Validation admits supplied data only for entities the store does not hold,
    so they are added to the parsed store without re-parsing it.
    """
    added = [d.to_json() for d in supplied if d.uid not in bundle.entity_json]
    if added:
        return bundle.entities.with_added_json_str(json.dumps(added), bundle.schema)
    return bundle.entities


def _eval_error(message: str) -> EvalError:
    m = _POLICY_ERROR.match(message)
    if m:
        return EvalError(m["id"], m["msg"])
    return EvalError("", message)


def _policy_ref(bundle: Bundle, pid: str) -> PolicyRef:
    info = bundle.policies.get(pid)
    if info is None:
        return PolicyRef(pid, {}, "")
    return PolicyRef(pid, info.annotations, info.source)


def _obligations(bundle: Bundle, reasons: tuple[PolicyRef, ...]) -> Obligations:
    """The smallest of each obligation among the determining permits: each permit's
    bound holds."""
    infos = [info for ref in reasons if (info := bundle.policies.get(ref.id))]
    ttls = [i.max_credential_ttl for i in infos if i.max_credential_ttl is not None]
    revokes = [i.revoke_within for i in infos if i.revoke_within is not None]
    return Obligations(
        max_credential_ttl=min(ttls) if ttls else None,
        revoke_within=min(revokes) if revokes else None,
    )
