"""Explanations and coverage agree with Cedar: on the whole corpus, and on hand-made cases."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sidecar.authoring.testing.coverage import Coverage
from sidecar.core.bundle import Bundle, Source, build_bundle
from sidecar.core.engine import evaluate
from sidecar.core.explain import Outcome, Value, explain
from sidecar.core.model import AuthzRequest, EntityUid, PolicyErrors
from tests.corpus import EXPECTED_REQUESTS, CorpusFile, corpus_files

SCHEMA = """
entity User = { level: Long, tags?: Set<String> };
entity Doc;
action read, write appliesTo { principal: User, resource: Doc, context: { n?: Long } };
"""
POLICIES = """@id("readers")
permit (principal, action == Action::"read", resource)
when { principal.level > 1 }
unless { context has n && context.n == 7 };

@id("no-writes")
forbid (principal, action == Action::"write", resource);

@id("fragile")
permit (principal is User, action, resource is Doc)
when { principal.tags.contains("x") };
"""


def bundle_of(policies: str = POLICIES) -> Bundle:
    """Not strictly validated: `fragile` is meant to fail at evaluation time."""
    return build_bundle(
        [Source("p.cedar", policies)], Source("s.cedarschema", SCHEMA), validate=False
    )


def request(level: int, action: str = "read", n: int | None = None) -> AuthzRequest:
    from sidecar.core.model import EntityData

    context: dict[str, Any] = {} if n is None else {"n": n}
    user = EntityData(EntityUid("User", "u"), {"level": level})
    return AuthzRequest(
        EntityUid("User", "u"), EntityUid("Action", action), EntityUid("Doc", "d"), context, (user,)
    )


def test_outcomes_and_deciding_clauses() -> None:
    bundle = bundle_of()
    req = request(level=1)
    result = evaluate(bundle, req)
    assert not result.allowed
    by_id = {p.id: p for p in explain(bundle, req, result).policies}

    readers = by_id["readers"]
    assert readers.outcome is Outcome.NOT_SATISFIED
    assert readers.deciding is not None and readers.deciding.kind == "when"
    assert readers.deciding.value is Value.FALSE
    assert readers.deciding.source == "p.cedar:3:1"
    assert readers.deciding.text == "when { principal.level > 1 }"
    # Each clause has its own value: the unless was evaluated too, and is false.
    assert [(c.kind, c.value) for c in readers.clauses] == [
        ("action", Value.TRUE),
        ("when", Value.FALSE),
        ("unless", Value.FALSE),
    ]

    writes = by_id["no-writes"]
    assert writes.outcome is Outcome.NOT_APPLICABLE
    assert writes.deciding is not None and writes.deciding.kind == "action"
    assert writes.deciding.source == "p.cedar:7:20"

    fragile = by_id["fragile"]  # `tags` is absent: the clause errors, Cedar skips the policy
    assert fragile.outcome is Outcome.ERRORED
    assert fragile.deciding is not None and fragile.deciding.value is Value.ERROR
    assert fragile.errors and "tags" in fragile.errors[0]
    assert {e.policy_id for e in result.errors} == {"fragile"}


def test_unless_true_decides_and_satisfied_policies_have_no_deciding_clause() -> None:
    bundle = bundle_of()
    req = request(level=5, n=7)
    by_id = {p.id: p for p in explain(bundle, req, evaluate(bundle, req)).policies}
    assert by_id["readers"].outcome is Outcome.NOT_SATISFIED
    assert by_id["readers"].deciding is not None
    assert by_id["readers"].deciding.kind == "unless"
    assert by_id["readers"].deciding.value is Value.TRUE
    req = request(level=5, n=1)
    # `fragile` errors on every request: under Cedar's semantics it is skipped and
    # `readers` decides; under the default the error makes it a DENY nobody determined.
    result = evaluate(bundle, req, policy_errors=PolicyErrors.CEDAR)
    explained = explain(bundle, req, result)
    readers = next(p for p in explained.policies if p.id == "readers")
    assert result.allowed and readers.outcome is Outcome.SATISFIED
    assert readers.deciding is None and readers.determining
    assert explained.policies[0].id in {r.id for r in result.reasons}
    strict = evaluate(bundle, req)
    explained = explain(bundle, req, strict)
    readers = next(p for p in explained.policies if p.id == "readers")
    assert not strict.allowed and readers.outcome is Outcome.SATISFIED
    assert not readers.determining and strict.reasons == ()


def test_a_request_cedar_refuses_is_not_evaluated_by_any_policy() -> None:
    bundle = bundle_of()
    req = AuthzRequest(
        EntityUid("User", "u"),
        EntityUid("Action", "read"),
        EntityUid("Doc", "d"),
        {"n": "not a long"},
        (),
    )
    result = evaluate(bundle, req)
    explained = explain(bundle, req, result)
    assert not result.allowed and explained.request_errors
    assert {p.outcome for p in explained.policies} == {Outcome.NOT_EVALUATED}


def test_coverage_counts_determining_policies_and_both_clause_outcomes() -> None:
    bundle = bundle_of()
    cov = Coverage.for_bundle("p", bundle)
    assert cov.policy_total == 3 and cov.clause_outcomes_total == 2 * 3
    assert cov.policy_percent == 0.0
    for req in (request(1), request(5), request(5, n=7), request(5, action="write")):
        # Under Cedar's semantics, so the permit beside the erroring one determines an ALLOW.
        result = evaluate(bundle, req, policy_errors=PolicyErrors.CEDAR)
        cov.record(explain(bundle, req, result))
    readers, writes, fragile = (cov.policies[k] for k in ("readers", "no-writes", "fragile"))
    assert readers.determining == 1 and writes.determining == 1 and fragile.determining == 0
    when, unless = readers.clauses
    # Three read requests applied (level 1, 5, 5 with n=7); the write did not.
    assert (when.true, when.false) == (2, 1)
    assert (unless.true, unless.false) == (1, 2)
    (tags,) = fragile.clauses
    assert (tags.true, tags.false, tags.error) == (0, 0, 4)
    assert cov.policy_covered == 2
    assert cov.clause_outcomes_seen == 4  # the fragile clause was never true or false
    data = cov.to_json()
    assert data["policy_coverage"]["covered"] == 2
    assert data["files"]["p.cedar"][0]["clauses"][0]["source"] == "p.cedar:3:1"


def test_explanations_agree_with_cedar_on_the_whole_corpus() -> None:
    """For every corpus request: the satisfied policies of the winning effect are exactly
    Cedar's reasons, the errored ones exactly Cedar's errors, and every policy that is not
    satisfied names the clause that decided it."""
    checked, outcomes, problems = 0, Counter[Outcome](), []
    for path in corpus_files():
        case = CorpusFile(path)
        bundle = case.bundle()
        for req, model in case.requests(bundle):
            result = evaluate(bundle, model)
            explained = explain(bundle, model, result)
            checked += 1
            outcomes.update(p.outcome for p in explained.policies)
            problems.extend(_disagreements(path, req, result, explained))
    assert not problems, f"{len(problems)} disagreements, first: {problems[:5]}"
    assert checked == EXPECTED_REQUESTS
    # The corpus exercises every outcome but NOT_EVALUATED (its requests all validate).
    assert all(outcomes[o] > 100 for o in Outcome if o is not Outcome.NOT_EVALUATED)


def _disagreements(path: Path, req: dict[str, Any], result: Any, explained: Any) -> list[str]:
    where = f"{path.name} {req['description']!r}"
    satisfied = {p.id: p for p in explained.policies if p.outcome is Outcome.SATISFIED}
    permits = {pid for pid, p in satisfied.items() if p.effect == "permit"}
    forbids = set(satisfied) - permits
    reasons = {r.id for r in result.reasons}
    out = []
    if result.allowed and (permits != reasons or forbids):
        out.append(f"{where}: ALLOW by {reasons}, satisfied {sorted(satisfied)}")
    if not result.allowed and reasons and forbids != reasons:
        out.append(f"{where}: DENY by {reasons}, satisfied forbids {sorted(forbids)}")
    if not result.allowed and not reasons and permits and not forbids:
        out.append(f"{where}: default DENY but permits {sorted(permits)} satisfied")
    errored = {p.id for p in explained.policies if p.outcome is Outcome.ERRORED}
    if errored != {e.policy_id for e in result.errors if e.policy_id}:
        out.append(f"{where}: errored {sorted(errored)}, Cedar: {result.errors}")
    for p in explained.policies:
        if p.determining != (p.id in reasons):
            out.append(f"{where}: {p.id} determining={p.determining}")
        if p.outcome in (Outcome.NOT_SATISFIED, Outcome.NOT_APPLICABLE, Outcome.ERRORED) and (
            p.deciding is None
        ):
            out.append(f"{where}: {p.id} is {p.outcome.value} with no deciding clause")
        if p.outcome is Outcome.NOT_APPLICABLE and p.deciding and p.deciding.is_condition:
            out.append(f"{where}: {p.id} not applicable, decided by a condition")
    return out


def test_policy_ttl_is_reported_per_policy() -> None:
    bundle = build_bundle(
        [
            Source(
                "p.cedar",
                '@id("short")\n@max_credential_ttl("PT5M")\npermit (principal, action, resource);',
            )
        ],
        Source("s.cedarschema", SCHEMA),
    )
    req = request(1)
    (pol,) = explain(bundle, req, evaluate(bundle, req)).policies
    assert pol.outcome is Outcome.SATISFIED and pol.max_credential_ttl == timedelta(minutes=5)
    assert pol.clauses == ()  # an unconstrained policy has nothing to take apart
