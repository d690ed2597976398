"""Test coverage of a policy set: which policies decided something, which clauses went both ways.

A policy is covered when at least one test case had it among the determining
policies. A `when` / `unless` clause is covered when, over the cases where its
policy applied, it was seen both true and false; each clause therefore has
two outcomes to cover. Clause values come from `explain`, which evaluates each
clause on its own, so a clause is measured even when an earlier one already
settled the policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.core.bundle import Bundle
from sidecar.core.explain import Explanation, Outcome, Value, condition_clauses


@dataclass(slots=True)
class ClauseCount:
    kind: str
    source: str  # file:line:column
    text: str
    true: int = 0
    false: int = 0
    error: int = 0

    @property
    def outcomes_seen(self) -> int:
        return (self.true > 0) + (self.false > 0)


@dataclass(slots=True)
class PolicyCount:
    id: str
    effect: str
    file: str
    line: int
    determining: int = 0
    applied: int = 0
    clauses: list[ClauseCount] = field(default_factory=list)

    @property
    def covered(self) -> bool:
        return self.determining > 0


@dataclass(slots=True)
class Coverage:
    """Counts for one bundle (one policy directory), filled case by case."""

    label: str  # the policy directory, as the user named it
    revision: str
    policies: dict[str, PolicyCount]
    cases: int = 0

    @classmethod
    def for_bundle(cls, label: str, bundle: Bundle) -> Coverage:
        conditions = condition_clauses(bundle)
        return cls(
            label,
            bundle.revision,
            {
                pid: PolicyCount(
                    pid,
                    info.effect,
                    info.file,
                    info.line,
                    clauses=[ClauseCount(c.kind, c.source, c.text) for c in conditions[pid]],
                )
                for pid, info in bundle.policies.items()
            },
        )

    def record(self, explanation: Explanation) -> None:
        """Count one case: who determined it, and each clause's value where its policy applied."""
        self.cases += 1
        for pol in explanation.policies:
            count = self.policies.get(pol.id)
            if count is None:
                continue
            count.determining += pol.determining
            if pol.outcome in (Outcome.NOT_APPLICABLE, Outcome.NOT_EVALUATED):
                continue
            count.applied += 1
            conditions = [c for c in pol.clauses if c.is_condition]
            for clause, seen in zip(count.clauses, conditions, strict=False):
                if seen.value is Value.TRUE:
                    clause.true += 1
                elif seen.value is Value.FALSE:
                    clause.false += 1
                elif seen.value is Value.ERROR:
                    clause.error += 1

    @property
    def policy_total(self) -> int:
        return len(self.policies)

    @property
    def policy_covered(self) -> int:
        return sum(p.covered for p in self.policies.values())

    @property
    def clause_outcomes_total(self) -> int:
        return sum(2 * len(p.clauses) for p in self.policies.values())

    @property
    def clause_outcomes_seen(self) -> int:
        return sum(c.outcomes_seen for p in self.policies.values() for c in p.clauses)

    @property
    def policy_percent(self) -> float:
        return percent(self.policy_covered, self.policy_total)

    @property
    def clause_percent(self) -> float:
        return percent(self.clause_outcomes_seen, self.clause_outcomes_total)

    def by_file(self) -> dict[str, list[PolicyCount]]:
        files: dict[str, list[PolicyCount]] = {}
        for count in sorted(self.policies.values(), key=lambda p: (p.file, p.line)):
            files.setdefault(count.file, []).append(count)
        return files

    def to_json(self) -> dict[str, Any]:
        return {
            "policies": self.label,
            "revision": self.revision,
            "cases": self.cases,
            "policy_coverage": {
                "covered": self.policy_covered,
                "total": self.policy_total,
                "percent": round(self.policy_percent, 2),
            },
            "clause_coverage": {
                "outcomes_seen": self.clause_outcomes_seen,
                "outcomes_total": self.clause_outcomes_total,
                "percent": round(self.clause_percent, 2),
            },
            "files": {
                name: [
                    {
                        "id": p.id,
                        "effect": p.effect,
                        "line": p.line,
                        "covered": p.covered,
                        "determining": p.determining,
                        "clauses": [
                            {
                                "kind": c.kind,
                                "source": c.source,
                                "text": c.text,
                                "true": c.true,
                                "false": c.false,
                                "error": c.error,
                            }
                            for c in p.clauses
                        ],
                    }
                    for p in policies
                ]
                for name, policies in self.by_file().items()
            },
        }


def percent(part: int, whole: int) -> float:
    """A share in percent; an empty whole counts as fully covered."""
    return 100.0 if whole == 0 else 100.0 * part / whole


def render(coverages: Iterable[Coverage], *, detail: bool) -> str:
    """Coverage per policy directory; with `detail`, per file, policy and clause."""
    lines: list[str] = []
    for cov in coverages:
        lines.append(
            f"coverage of {cov.label} (revision {cov.revision[:12]}, {cov.cases} cases): "
            f"policies {cov.policy_covered}/{cov.policy_total} "
            f"({cov.policy_percent:.1f}%), clause outcomes "
            f"{cov.clause_outcomes_seen}/{cov.clause_outcomes_total} "
            f"({cov.clause_percent:.1f}%)"
        )
        if not detail:
            continue
        for name, policies in cov.by_file().items():
            lines.append(f"  {name}")
            for p in policies:
                mark = "ok " if p.covered else "-- "
                used = "NEVER DETERMINING"
                if p.covered:
                    used = f"determining in {p.determining} case(s)"
                lines.append(f"    {mark}{p.line:>4}  {p.effect:<6} {p.id}  {used}")
                for c in p.clauses:
                    line = c.source.rsplit(":", 2)[-2]
                    missing = [name for name, n in (("true", c.true), ("false", c.false)) if not n]
                    mark = "ok " if not missing else "-- "
                    note = f"  never {' or '.join(missing)}" if missing else ""
                    err = f", error {c.error}" if c.error else ""
                    lines.append(
                        f"    {mark}{line:>4}    {c.kind:<6} true {c.true}, false {c.false}{err}"
                        f"{note}  {c.text[:60]}"
                    )
    return "\n".join(lines)
