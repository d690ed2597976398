"""Running cases against a bundle: the Runner, which returns a Report and prints nothing.

Every case goes through the sidecar's own request path: the JSON request form
-> protobuf (`jsonreq`) -> `validate.request_from_proto` -> `engine.evaluate`,
so a passing case is what the server would answer. A plan case's step goes
through AuthorizePlan's path instead (`planreq` -> `plan.plan_step`). Bundles are loaded once per
policy directory (and per suite's fixture entities) and shared by the suites
that name it; coverage is counted per policy directory and policy text.
Progress is the caller's: `run_files` calls `on_suite` after each suite.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from sidecar.authoring.diagnose import Problem, check_directory, check_warnings
from sidecar.authoring.testing import cedarjson
from sidecar.authoring.testing.coverage import Coverage
from sidecar.authoring.testing.results import (
    ERROR,
    FAIL,
    PASS,
    CaseResult,
    InvalidPolicies,
    Report,
    SuiteResult,
    compare,
)
from sidecar.authoring.testing.suites import (
    CaseSpec,
    PlanCase,
    PlanExpect,
    SuiteError,
    SuiteSpec,
    is_suite,
    load_yaml,
    yaml_error,
)
from sidecar.core.bundle import Bundle, Source, build_bundle, load_bundle, visible_files
from sidecar.core.engine import evaluate
from sidecar.core.errors import BundleError, InvalidRequest, StepguardError
from sidecar.core.explain import explain
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import AuthzRequest, EntityUid, PolicyErrors, Result
from sidecar.core.plan import StepVerdict, plan_step
from sidecar.core.planreq import plan_from_json, plan_from_proto
from sidecar.core.validate import Limits, request_from_proto


@dataclass(slots=True)
class Runner:
    """Runs suites; bundles are loaded once per policy directory and shared."""

    policies_override: Path | None = None
    case_filter: re.Pattern[str] | None = None
    coverage: bool = False
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # The server's default unless asked (`--policy-errors cedar`): cases pass as it would answer.
    policy_errors: PolicyErrors = PolicyErrors.DENY
    _bundles: dict[tuple[Path, Source | None], Bundle | BundleError] = field(default_factory=dict)
    _coverage: dict[str, Coverage] = field(default_factory=dict)
    _invalid: dict[str, InvalidPolicies] = field(default_factory=dict)

    def run(self, paths: Sequence[Path]) -> Report:
        """Every suite found under `paths` (`discover`), run."""
        return self.run_files(list(discover(paths)))

    def run_files(
        self, found: Sequence[tuple[Path, str]], on_suite: Callable[[], None] | None = None
    ) -> Report:
        """The suites `discover` found, run in order; `on_suite` is called after each."""
        suites: list[SuiteResult] = []
        for path, kind in found:
            suite = self._run_yaml(path) if kind == "yaml" else self._run_cedar(path)
            if suite is not None:
                suites.append(suite)
            if on_suite is not None:
                on_suite()
        coverage = [self._coverage[k] for k in sorted(self._coverage)]
        report = Report(suites, coverage, self.policy_errors, self._warnings())
        report.invalid = [self._invalid[k] for k in sorted(self._invalid)]
        return report

    def _invalid_policies(self, directory: Path) -> InvalidPolicies:
        """Where `directory` fails to load, located as `validate` locates it (once per run)."""
        key = str(directory)
        if key not in self._invalid:
            _, problems = check_directory(directory)
            self._invalid[key] = InvalidPolicies(
                _display(directory), tuple(_shown_from(directory, p) for p in problems)
            )
        return self._invalid[key]

    def _warnings(self) -> list[Problem]:
        """validate's warnings for every policy directory that loaded (with coverage only)."""
        if not self.coverage:
            return []
        found: list[Problem] = []
        for (directory, fixtures), bundle in sorted(self._bundles.items(), key=lambda kv: kv[0][0]):
            if fixtures is not None or isinstance(bundle, BundleError):
                continue
            for warning in check_warnings(directory, bundle):
                found.append(replace(warning, file=_display(directory / warning.file)))
        return found

    def directories(self) -> list[Path]:
        """The policy directories the suites ran against (what `--watch` watches)."""
        return sorted({directory for directory, _ in self._bundles})

    def selected(self, suite: str, case: str) -> bool:
        return self.case_filter is None or bool(self.case_filter.search(f"{suite}: {case}"))

    def _bundle(self, directory: Path, fixtures: Source | None = None) -> Bundle | BundleError:
        """The directory's bundle (with a suite's fixture entities, when it has some)."""
        key = (directory.resolve(), fixtures)
        if key not in self._bundles:
            try:
                extra = [fixtures] if fixtures is not None else []
                self._bundles[key] = load_bundle(directory, extra_entities=extra)
            except BundleError as exc:
                self._bundles[key] = exc
        return self._bundles[key]

    def _record(self, label: str, bundle: Bundle, request: AuthzRequest, result: Result) -> None:
        """Coverage is kept per policy directory and policy text, whatever the fixtures."""
        if not self.coverage:
            return
        key = f"{label}\0{policy_digest(bundle)}"
        cov = self._coverage.get(key)
        if cov is None:
            cov = self._coverage[key] = Coverage.for_bundle(label, bundle)
        cov.record(explain(bundle, request, result))

    # YAML suites ------------------------------------------------------------------

    def _run_yaml(self, path: Path) -> SuiteResult | None:
        suite = SuiteResult(name=str(path), file=str(path), kind="yaml")
        try:
            doc = load_yaml(path)
            spec = SuiteSpec.parse(doc, path)
        except (SuiteError, yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            suite.error = yaml_error(exc)
            return suite if self.case_filter is None else None
        suite.name = spec.name or str(path)
        cases = [c for c in spec.cases if self.selected(str(path), c.name)]
        if not cases and self.case_filter is not None:
            return None
        directory = self.policies_override or spec.policies
        suite.policies = str(directory)
        base = self._bundle(directory)
        if isinstance(base, BundleError):
            suite.invalid_policies = True
            invalid = self._invalid_policies(directory)
            suite.error = f"policies in {invalid.directory} do not load (the problems are below)"
            return suite
        bundle = base
        if spec.entities:
            fixtures = Source(f"{path}#fixtures.entities", json.dumps(list(spec.entities)))
            loaded = self._bundle(directory, fixtures)
            if isinstance(loaded, BundleError):
                suite.error = f"fixtures.entities do not load with {directory}: {loaded.detail}"
                return suite
            bundle = loaded
        suite.revision = bundle.revision
        for case in cases:
            suite.cases.append(self._run_case(case, bundle, str(directory), spec.now))
        return suite

    def _run_case(
        self, case: CaseSpec, bundle: Bundle, label: str, suite_now: datetime | None
    ) -> CaseResult:
        if case.problem:
            return CaseResult(case.name, ERROR, case.line, (case.problem,))
        if case.plan is not None:
            return self._run_plan_step(case, case.plan, bundle)
        now = case.now or suite_now or self.clock()
        described = describe(case.request, now)
        try:
            request = request_from_proto(request_from_json(case.request), bundle, Limits(), now=now)
        except InvalidRequest as exc:
            problem = f"the server would refuse this request (INVALID_ARGUMENT): {exc}"
            return CaseResult(case.name, ERROR, case.line, (problem,), case.expect, None, described)
        result = evaluate(bundle, request, policy_errors=self.policy_errors)
        self._record(label, bundle, request, result)
        assert case.expect is not None
        problems = compare(case.expect, result)
        status = FAIL if problems else PASS
        return CaseResult(case.name, status, case.line, problems, case.expect, result, described)

    def _run_plan_step(self, case: CaseSpec, step: PlanCase, bundle: Bundle) -> CaseResult:
        """A planned step, pre-flighted as AuthorizePlan does (core/plan.py), not decided."""
        body: dict[str, Any] = {**case.request, "unknown": list(step.unknown)}
        if step.at is not None:
            body["at"] = step.at
        described = "plan: " + describe(case.request, None)
        try:
            plan = plan_from_proto(plan_from_json({"steps": [body]}), bundle, Limits())
        except InvalidRequest as exc:
            problem = f"the server would refuse this plan (INVALID_ARGUMENT): {exc}"
            return CaseResult(case.name, ERROR, case.line, (problem,), request=described)
        verdict = plan_step(bundle, plan.steps[0], self.policy_errors)
        problems = compare_plan(step.expect, verdict)
        status = FAIL if problems else PASS
        return CaseResult(case.name, status, case.line, problems, request=described)

    # Cedar's JSON tests -----------------------------------------------------------

    def _run_cedar(self, path: Path) -> SuiteResult | None:
        suite = SuiteResult(name=str(path), file=str(path), kind="cedar")
        try:
            test = cedarjson.read(path)
        except SuiteError as exc:
            suite.error = str(exc)
            return suite if self.case_filter is None else None
        selected = [r for r in test.requests if self.selected(str(path), cedarjson.description(r))]
        if not selected and self.case_filter is not None:
            return None
        suite.policies = test.policies.name
        suite.checks.append(cedarjson.validation_check(test))
        try:
            bundle = build_bundle([test.policies], test.schema, [test.entities], validate=False)
        except BundleError as exc:
            suite.invalid_policies = True
            suite.error = f"cannot load: {exc}"
            return suite
        suite.revision = bundle.revision
        for i, req in enumerate(selected):
            suite.cases.append(self._run_cedar_case(cedarjson.case(req, i), bundle, str(path)))
        return suite

    def _run_cedar_case(self, case: CaseSpec, bundle: Bundle, label: str) -> CaseResult:
        """Under Cedar's rules: its limits, no clock, request entities need not be stored."""
        if case.problem:
            return CaseResult(case.name, ERROR, 0, (case.problem,))
        described = describe(case.request, None)
        try:
            request = request_from_proto(
                request_from_json(case.request),
                bundle,
                cedarjson.CEDAR_LIMITS,
                now=None,
                cedar_entities=True,
            )
        except InvalidRequest as exc:
            problem = f"refused as INVALID_ARGUMENT: {exc}"
            return CaseResult(case.name, FAIL, 0, (problem,), case.expect, None, described)
        result = evaluate(bundle, request, policy_errors=self.policy_errors)
        self._record(label, bundle, request, result)
        assert case.expect is not None
        problems = compare(case.expect, result)
        status = FAIL if problems else PASS
        return CaseResult(case.name, status, 0, problems, case.expect, result, described)


def compare_plan(expect: PlanExpect, verdict: StepVerdict) -> tuple[str, ...]:
    """What differs between a plan step's expectation and its verdict (empty: it passes)."""
    problems: list[str] = []
    got_verdict = verdict.verdict.value
    if got_verdict != expect.verdict:
        problems.append(f"verdict is {got_verdict} ({verdict.reason}), expected {expect.verdict}")
    if expect.policies is not None:
        ids = verdict.determining if got_verdict != "DEPENDS" else verdict.residuals
        got = {p.id for p in ids}
        if got != expect.policies:
            missing, extra = sorted(expect.policies - got), sorted(got - expect.policies)
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unexpected {', '.join(extra)}" if extra else "",
                )
                if part
            )
            problems.append(f"policies differ: {detail}")
    for words in expect.words:
        if words not in verdict.reason:
            problems.append(f"the reason does not say {words!r}: {verdict.reason}")
    return tuple(problems)


def policy_digest(bundle: Bundle) -> str:
    """Identity of a bundle's policies alone (not its entities): coverage's key."""
    digest = hashlib.sha256()
    for pid, info in sorted(bundle.policies.items()):
        digest.update(json.dumps([pid, info.source, info.text]).encode())
    return digest.hexdigest()


def discover(paths: Sequence[Path]) -> Iterator[tuple[Path, str]]:
    """(file, "yaml" | "cedar") for every suite under `paths`, in path order.

    A YAML file is a suite when it is a mapping with `cases` or `matrix`; a
    JSON file when it is a Cedar test (a mapping with `policies` and
    `requests`). Dot-directories (a ConfigMap's `..data`) are skipped.
    """
    seen: set[Path] = set()
    for root in paths:
        if not root.exists():
            raise StepguardError(f"{root}: no such file or directory")
        files = [root] if root.is_file() else visible_files(root)
        for path in files:
            key = path.resolve()
            if key in seen:
                continue
            kind = _suite_kind(path, explicit=path == root)
            if kind:
                seen.add(key)
                yield path, kind


def _suite_kind(path: Path, *, explicit: bool) -> str:
    if path.suffix in (".yaml", ".yml"):
        return "yaml" if is_suite(path, explicit=explicit) else ""
    if path.suffix == ".json" and not path.name.endswith(("entities.json", ".cedarschema.json")):
        return "cedar" if cedarjson.is_test(path, explicit=explicit) else ""
    return ""


def describe(request: Mapping[str, Any], now: datetime | None) -> str:
    def uid(value: Any) -> str:
        if isinstance(value, dict):
            inner = value.get("__entity", value)
            if isinstance(inner, dict):
                return str(EntityUid(str(inner.get("type")), str(inner.get("id"))))
        return str(value)

    text = " ".join(uid(request.get(k)) for k in ("principal", "action", "resource"))
    if now is not None:
        text += " at " + now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text


def _display(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _shown_from(directory: Path, problem: Problem) -> Problem:
    """A problem of `directory` with its file as the user would type it."""
    if problem.file in ("", str(directory)):
        return replace(problem, file=_display(directory))
    return replace(problem, file=_display(directory / problem.file))
