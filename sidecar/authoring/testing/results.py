"""What a test run found, as data: expectations, case and suite results, the whole report.

The runner fills these in and never prints; the report module (text, JSON,
JUnit) and the `stepguard test` command (exit codes) only read them. `compare`
lives here because it is what "pass" means: the difference between an
expectation and the engine's Result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sidecar.authoring.diagnose import Problem
from sidecar.authoring.testing.coverage import Coverage
from sidecar.core.model import Decision, PolicyErrors, Result
from sidecar.core.textsafe import escape

PASS, FAIL, ERROR = "pass", "fail", "error"


@dataclass(frozen=True, slots=True)
class Expect:
    decision: Decision
    policies: frozenset[str] | None = None  # exactly these determining policies
    errors: tuple[str, ...] = ()  # each matches an error's policy id or part of its message
    errors_by_policy_id: bool = False  # Cedar's format: compare the sets of policy ids
    obligations: Mapping[str, timedelta | None] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": self.decision.value}
        if self.policies is not None:
            out["policies"] = sorted(self.policies)
        out["errors"] = list(self.errors)
        if self.obligations is not None:
            out["obligations"] = {
                k: (v.total_seconds() if v is not None else None)
                for k, v in self.obligations.items()
            }
        return out


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    status: str  # pass | fail | error
    line: int = 0
    problems: tuple[str, ...] = ()  # what differs from the expectation, or why it could not run
    expected: Expect | None = None
    actual: Result | None = None
    request: str = ""  # one line: principal, action, resource, time


@dataclass(slots=True)
class SuiteResult:
    name: str
    file: str
    kind: str  # "yaml" | "cedar"
    policies: str = ""  # the policy directory (or file) the suite ran against
    revision: str = ""
    cases: list[CaseResult] = field(default_factory=list)
    error: str = ""  # the suite could not run at all
    invalid_policies: bool = False
    checks: list[tuple[str, bool]] = field(default_factory=list)  # suite-level checks

    @property
    def passed(self) -> int:
        return sum(c.status == PASS for c in self.cases)

    @property
    def failed(self) -> int:
        return sum(c.status == FAIL for c in self.cases)

    @property
    def errored(self) -> int:
        return sum(c.status == ERROR for c in self.cases)

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and not self.invalid_policies
            and self.passed == len(self.cases)
            and all(ok for _, ok in self.checks)
        )


@dataclass(frozen=True, slots=True)
class InvalidPolicies:
    """A policy directory that does not load, and why (reported once, not per suite)."""

    directory: str
    problems: tuple[Problem, ...]

    def render(self) -> str:
        head = f"policies in {escape(self.directory)} do not load:"
        return "\n".join([head, *(p.render() for p in self.problems)])

    def to_json(self) -> dict[str, Any]:
        return {"directory": self.directory, "problems": [p.to_json() for p in self.problems]}


@dataclass(slots=True)
class Report:
    suites: list[SuiteResult]
    coverage: list[Coverage]
    # What a policy that errors did to every case (`--policy-errors`).
    policy_errors: PolicyErrors = PolicyErrors.DENY
    # With coverage: reads that can error at run time (authoring/failopen.py), as validate warns.
    warnings: list[Problem] = field(default_factory=list)
    # Policy directories that do not load: each once, with validate's located problems.
    invalid: list[InvalidPolicies] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(len(s.cases) for s in self.suites)

    @property
    def passed(self) -> int:
        return sum(s.passed for s in self.suites)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.suites)

    @property
    def errored(self) -> int:
        return sum(s.errored for s in self.suites)


def compare(expect: Expect, result: Result) -> tuple[str, ...]:
    """What differs between the expectation and the result (empty when it passes)."""
    problems: list[str] = []
    if result.decision is not expect.decision:
        problems.append(f"decision is {result.decision.value}, expected {expect.decision.value}")
    got = {r.id for r in result.reasons}
    if expect.policies is not None and got != expect.policies:
        missing, extra = sorted(expect.policies - got), sorted(got - expect.policies)
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
            )
            if part
        )
        problems.append(f"determining policies differ: {detail}")
    if expect.errors_by_policy_id:
        ids = {e.policy_id for e in result.errors if e.policy_id}
        if ids != set(expect.errors):
            problems.append(
                f"errors in policies {sorted(ids) or 'none'}, "
                f"expected {list(expect.errors) or 'none'}"
            )
    else:
        unmatched = [
            e for e in result.errors if not any(_error_matches(p, e) for p in expect.errors)
        ]
        unseen = [p for p in expect.errors if not any(_error_matches(p, e) for e in result.errors)]
        if unmatched:
            problems.append("unexpected error(s): " + "; ".join(error_text(e) for e in unmatched))
        if unseen:
            problems.append("expected error(s) not reported: " + "; ".join(unseen))
    for name, want in (expect.obligations or {}).items():
        got = getattr(result.obligations, name)
        if got != want:
            problems.append(f"{name} is {ttl_text(got)}, expected {ttl_text(want)}")
    return tuple(problems)


def _error_matches(pattern: str, error: Any) -> bool:
    return bool(pattern) and (pattern == error.policy_id or pattern in error.message)


def error_text(error: Any) -> str:
    return f"{error.policy_id}: {error.message}" if error.policy_id else error.message


def ttl_text(ttl: timedelta | None) -> str:
    return "none" if ttl is None else f"{int(ttl.total_seconds())}s"
