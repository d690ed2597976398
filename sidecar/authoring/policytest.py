"""`stepguard test`: run policy test suites and Cedar's JSON tests, with coverage.

Two suite formats (docs/policy-testing.md):

- YAML suites beside the policies (`policies/tests/*.yaml`): fixtures, cases
  and matrices, each case with an expected decision and optionally the
  expected determining policies, obligations and errors;
- Cedar's own JSON test format (cedar-integration-tests), as in
  ../shared/conformance/cedar.

Every case goes through the sidecar's own request path: the JSON request form
-> protobuf (`jsonreq`) -> `validate.request_from_proto` -> `engine.evaluate`,
so a passing case is what the server would answer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from sidecar.authoring.coverage import Coverage
from sidecar.authoring.coverage import render as render_coverage
from sidecar.authoring.diagnose import Problem, check_warnings
from sidecar.cli.exitcodes import EXIT_COVERAGE, EXIT_EMPTY, EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.cli.progress import Progress
from sidecar.core import safeyaml
from sidecar.core.bundle import (
    Bundle,
    Source,
    build_bundle,
    load_bundle,
    parse_iso_duration,
    visible_files,
)
from sidecar.core.engine import evaluate
from sidecar.core.errors import BundleError, InvalidRequest, StepguardError
from sidecar.core.explain import explain
from sidecar.core.jsonreq import request_from_json
from sidecar.core.limits import LimitError, check_json_text
from sidecar.core.model import AuthzRequest, Decision, PolicyErrors, Result
from sidecar.core.textsafe import escape, escape_lines
from sidecar.core.validate import Limits, request_from_proto

PASS, FAIL, ERROR = "pass", "fail", "error"
_UID = re.compile(r'(?P<type>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)::"(?P<id>(?:[^"\\]|\\.)*)"')
_SUITE_KEYS = {
    "name",
    "description",
    "policies",
    "now",
    "action_type",
    "include",
    "fixtures",
    "cases",
    "matrix",
}
_FIXTURE_KEYS = {"principals", "resources", "actions", "contexts", "entities"}
_NAMED_FIXTURES = ("principals", "resources", "actions", "contexts")
_CASE_KEYS = {"name", "principal", "action", "resource", "context", "now", "expect"}
_MATRIX_KEYS = {
    "name",
    "principals",
    "actions",
    "resources",
    "context",
    "contexts",
    "now",
    "expect",
}
_EXPECT_KEYS = {"decision", "policies", "obligations", "errors"}
_OBLIGATION_KEYS = {"max_credential_ttl"}
# The Cedar corpus nests deeper and carries larger requests than the server's defaults.
CEDAR_LIMITS = Limits(max_request_bytes=1 << 20, max_attribute_depth=64)
# How deep a Cedar JSON test file may nest (its entities and requests): far above
# any real test, far below the depth at which json.loads raises RecursionError.
CEDAR_TEST_DEPTH = 200


# --- results -------------------------------------------------------------------


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


# --- running -------------------------------------------------------------------


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
        suites: list[SuiteResult] = []
        found = list(discover(paths))
        with Progress("test", total=len(found), unit="suites") as progress:  # a terminal only
            for path, kind in found:
                suite = self._run_yaml(path) if kind == "yaml" else self._run_cedar(path)
                if suite is not None:
                    suites.append(suite)
                progress.advance()
        coverage = [self._coverage[k] for k in sorted(self._coverage)]
        report = Report(suites, coverage, self.policy_errors, self._warnings())
        report.invalid = [self._invalid[k] for k in sorted(self._invalid)]
        return report

    def _invalid_policies(self, directory: Path) -> InvalidPolicies:
        """Where `directory` fails to load, located as `validate` locates it (once per run)."""
        from sidecar.authoring.diagnose import check_directory

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
            doc = _load_yaml(path)
            spec = SuiteSpec.parse(doc, path)
        except (SuiteError, yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            suite.error = _yaml_error(exc)
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
        now = case.now or suite_now or self.clock()
        described = _describe(case.request, now)
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

    # Cedar's JSON tests -----------------------------------------------------------

    def _run_cedar(self, path: Path) -> SuiteResult | None:
        suite = SuiteResult(name=str(path), file=str(path), kind="cedar")
        try:
            text = path.read_text(encoding="utf-8")
            # Bounded before the standard library's recursive parser sees it.
            check_json_text(text, max_depth=CEDAR_TEST_DEPTH)
            test = json.loads(text)
            policies = _cedar_source(path, test, "policies")
            schema = _cedar_source(path, test, "schema")
            entities = [_cedar_source(path, test, "entities")]
            requests = test["requests"]
            should_validate = bool(test.get("shouldValidate", True))
        except LimitError as exc:
            suite.error = f"not a readable Cedar test: line {exc.line}, column {exc.column}: {exc}"
            return suite if self.case_filter is None else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, SuiteError) as exc:
            suite.error = f"not a readable Cedar test: {exc}"
            return suite if self.case_filter is None else None
        selected = [r for r in requests if self.selected(str(path), str(r.get("description", "")))]
        if not selected and self.case_filter is not None:
            return None
        suite.policies = policies.name
        try:
            build_bundle([policies], schema, entities)
            validated = True
        except BundleError:
            validated = False
        suite.checks.append(
            (f"strict validation {'passes' if validated else 'fails'}, as expected", True)
            if validated == should_validate
            else (
                f"strict validation {'passes' if validated else 'fails'}, "
                f"but shouldValidate is {str(should_validate).lower()}",
                False,
            )
        )
        try:
            bundle = build_bundle([policies], schema, entities, validate=False)
        except BundleError as exc:
            suite.invalid_policies = True
            suite.error = f"cannot load: {exc}"
            return suite
        suite.revision = bundle.revision
        for i, req in enumerate(selected):
            suite.cases.append(self._run_cedar_case(req, i, bundle, str(path)))
        return suite

    def _run_cedar_case(
        self, req: Mapping[str, Any], index: int, bundle: Bundle, label: str
    ) -> CaseResult:
        name = str(req.get("description") or f"request {index}")
        try:
            expect = Expect(
                decision=_decision(req["decision"], "decision"),
                policies=frozenset(str(p) for p in req["reason"]),
                errors=tuple(sorted(str(e) for e in req["errors"])),
                errors_by_policy_id=True,
            )
            data = {
                "principal": req["principal"],
                "action": req["action"],
                "resource": req["resource"],
                "context": {"attributes": req.get("context", {})},
            }
        except (KeyError, TypeError, SuiteError) as exc:
            return CaseResult(name, ERROR, 0, (f"malformed request: {exc}",))
        described = _describe(data, None)
        try:
            request = request_from_proto(
                request_from_json(data), bundle, CEDAR_LIMITS, now=None, cedar_entities=True
            )
        except InvalidRequest as exc:
            problem = f"refused as INVALID_ARGUMENT: {exc}"
            return CaseResult(name, FAIL, 0, (problem,), expect, None, described)
        result = evaluate(bundle, request, policy_errors=self.policy_errors)
        self._record(label, bundle, request, result)
        problems = compare(expect, result)
        return CaseResult(name, FAIL if problems else PASS, 0, problems, expect, result, described)


def policy_digest(bundle: Bundle) -> str:
    """Identity of a bundle's policies alone (not its entities): coverage's key."""
    digest = hashlib.sha256()
    for pid, info in sorted(bundle.policies.items()):
        digest.update(json.dumps([pid, info.source, info.text]).encode())
    return digest.hexdigest()


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
            problems.append("unexpected error(s): " + "; ".join(_error_text(e) for e in unmatched))
        if unseen:
            problems.append("expected error(s) not reported: " + "; ".join(unseen))
    if expect.obligations is not None:
        ttl = result.obligations.max_credential_ttl
        if "max_credential_ttl" in expect.obligations:
            want = expect.obligations["max_credential_ttl"]
            if ttl != want:
                problems.append(
                    f"max_credential_ttl is {_ttl_text(ttl)}, expected {_ttl_text(want)}"
                )
    return tuple(problems)


def _error_matches(pattern: str, error: Any) -> bool:
    return bool(pattern) and (pattern == error.policy_id or pattern in error.message)


def _error_text(error: Any) -> str:
    return f"{error.policy_id}: {error.message}" if error.policy_id else error.message


def _ttl_text(ttl: timedelta | None) -> str:
    return "none" if ttl is None else f"{int(ttl.total_seconds())}s"


# --- discovery -----------------------------------------------------------------


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
        if explicit:
            return "yaml"
        try:
            doc = safeyaml.load_file(path)
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            # A broken file that looks like a suite is reported, not skipped.
            return "yaml" if _looks_like_suite(path) else ""
        return "yaml" if isinstance(doc, dict) and ("cases" in doc or "matrix" in doc) else ""
    if path.suffix == ".json" and not path.name.endswith(("entities.json", ".cedarschema.json")):
        if explicit:
            return "cedar"
        try:
            text = path.read_text(encoding="utf-8")
            check_json_text(text, max_depth=CEDAR_TEST_DEPTH)
            doc = json.loads(text)
        except LimitError:
            # Too deep to parse: a file that looks like a Cedar test is reported, not skipped.
            return "cedar" if '"policies"' in text and '"requests"' in text else ""
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            return ""
        return "cedar" if isinstance(doc, dict) and {"policies", "requests"} <= set(doc) else ""
    return ""


def _looks_like_suite(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return bool(re.search(r"^(cases|matrix)\s*:", text, re.MULTILINE))


def _cedar_source(test_file: Path, test: Mapping[str, Any], key: str) -> Source:
    """A file a Cedar test names: its paths are relative to the test repository's root."""
    rel = test[key]
    if not isinstance(rel, str):
        raise SuiteError(f"{key}: expected a path")
    for base in (test_file.parent, *test_file.parents):
        candidate = base / rel
        if candidate.is_file():
            return Source(rel, candidate.read_text(encoding="utf-8"))
    raise SuiteError(f"{key}: {rel} not found relative to {test_file} or its parents")


# --- the YAML format -----------------------------------------------------------


class SuiteError(StepguardError):
    """A suite file that does not follow the format; names the line when known."""

    def __init__(self, message: str, line: int = 0) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class _Map(dict[str, Any]):
    """A YAML mapping that remembers the line it started on."""

    line = 0


class _Loader(safeyaml.SafeLoader):
    """Refuses aliases (sidecar/core/safeyaml.py); mappings remember their line."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map({str(k): v for k, v in loader.construct_mapping(node).items()})
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


def _load_yaml(path: Path) -> Any:
    return safeyaml.load_file(path, _Loader)


def _yaml_error(exc: BaseException) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc)


@dataclass(frozen=True, slots=True)
class CaseSpec:
    name: str
    line: int
    request: Mapping[str, Any]
    now: datetime | None
    expect: Expect | None
    problem: str = ""  # the case is malformed; reported as an error, the rest still run


@dataclass(frozen=True, slots=True)
class SuiteSpec:
    name: str
    policies: Path
    now: datetime | None
    entities: tuple[Any, ...]
    cases: tuple[CaseSpec, ...]

    @classmethod
    def parse(cls, doc: Any, path: Path) -> SuiteSpec:
        if not isinstance(doc, dict):
            raise SuiteError("a suite is a mapping with `cases` and/or `matrix`")
        _check_keys(doc, _SUITE_KEYS, "suite")
        policies = _policy_dir(path, doc.get("policies"))
        now = _time(doc["now"], "now") if "now" in doc else None
        names: dict[str, dict[str, Any]] = {k: {} for k in _NAMED_FIXTURES}
        entities: list[Any] = []
        includes = doc.get("include") or []
        for name in [includes] if isinstance(includes, str) else includes:
            if not isinstance(name, str):
                raise SuiteError("include: expected a file name or a list of them", _line(doc))
            _add_fixtures(names, entities, _included(path, name), f"{name}: fixtures")
        _add_fixtures(names, entities, doc.get("fixtures") or {}, "fixtures")
        action_type = doc.get("action_type", "Action")
        if not isinstance(action_type, str):
            raise SuiteError("action_type: expected an entity type name such as Action")
        build = _Builder(names, action_type)
        cases: list[CaseSpec] = []
        raw_cases = doc.get("cases") or []
        if not isinstance(raw_cases, list):
            raise SuiteError("cases: expected a list", _line(doc))
        for i, raw in enumerate(raw_cases):
            cases.append(build.case(raw, f"cases[{i}]"))
        raw_matrix = doc.get("matrix") or []
        if not isinstance(raw_matrix, list):
            raise SuiteError("matrix: expected a list", _line(doc))
        for i, raw in enumerate(raw_matrix):
            cases.extend(build.matrix(raw, f"matrix[{i}]"))
        name = doc.get("name") or ""
        return cls(str(name), policies, now, tuple(_plain(entities)), tuple(cases))


def _included(suite: Path, name: str) -> Any:
    """The `fixtures` of a file a suite includes (relative to the suite)."""
    path = suite.parent / name
    try:
        doc = _load_yaml(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"include: cannot read {name}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SuiteError(f"include: {name}: {_yaml_error(exc)}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("fixtures"), dict):
        raise SuiteError(f"include: {name} has no `fixtures` mapping")
    return doc["fixtures"]


def _add_fixtures(
    names: dict[str, dict[str, Any]], entities: list[Any], fixtures: Any, where: str
) -> None:
    """Merge one `fixtures` mapping in; later names win (a suite's own over an include's)."""
    if not isinstance(fixtures, dict):
        raise SuiteError(f"{where}: expected a mapping", _line(fixtures))
    _check_keys(fixtures, _FIXTURE_KEYS, where)
    for kind in _NAMED_FIXTURES:
        group = fixtures.get(kind) or {}
        if not isinstance(group, dict):
            raise SuiteError(f"{where}.{kind}: expected a mapping of names", _line(group))
        names[kind].update(group)
    more = fixtures.get("entities") or []
    if not isinstance(more, list):
        raise SuiteError(f"{where}.entities: expected a list of Cedar entities", _line(fixtures))
    entities.extend(more)


@dataclass(frozen=True, slots=True)
class _Builder:
    fixtures: Mapping[str, Mapping[str, Any]]
    action_type: str

    def case(self, raw: Any, where: str) -> CaseSpec:
        line = _line(raw)
        name = raw.get("name") if isinstance(raw, dict) else None
        label = str(name) if name else where
        try:
            if not isinstance(raw, dict):
                raise SuiteError(f"{where}: expected a mapping")
            _check_keys(raw, _CASE_KEYS, where)
            for key in ("principal", "action", "resource", "expect"):
                if key not in raw:
                    raise SuiteError(f"{where}: `{key}` is required", line)
            request = self._request(
                raw["principal"], raw["action"], raw["resource"], raw.get("context"), where
            )
            now = _time(raw["now"], f"{where}.now") if "now" in raw else None
            expect = _expect(raw["expect"], f"{where}.expect")
        except SuiteError as exc:
            return CaseSpec(label, line, {}, None, None, str(exc))
        return CaseSpec(label, line, request, now, expect)

    def matrix(self, raw: Any, where: str) -> list[CaseSpec]:
        line = _line(raw)
        label = str(raw.get("name") or where) if isinstance(raw, dict) else where
        try:
            if not isinstance(raw, dict):
                raise SuiteError(f"{where}: expected a mapping")
            _check_keys(raw, _MATRIX_KEYS, where)
            for key in ("principals", "actions", "resources", "expect"):
                if not isinstance(raw.get(key), list) and key != "expect":
                    raise SuiteError(f"{where}: `{key}` must be a list", line)
            if "context" in raw and "contexts" in raw:
                raise SuiteError(f"{where}: give `context` or `contexts`, not both", line)
            contexts = raw["contexts"] if "contexts" in raw else [raw.get("context")]
            if not isinstance(contexts, list) or not contexts:
                raise SuiteError(f"{where}: `contexts` must be a non-empty list", line)
            now = _time(raw["now"], f"{where}.now") if "now" in raw else None
            expect = _expect(raw["expect"], f"{where}.expect")
        except SuiteError as exc:
            return [CaseSpec(label, line, {}, None, None, str(exc))]
        out: list[CaseSpec] = []
        for p in raw["principals"]:
            for a in raw["actions"]:
                for r in raw["resources"]:
                    for c in contexts:
                        parts = [_label(p), _label(a), _label(r)]
                        if len(contexts) > 1:
                            parts.append(_label(c))
                        name = f"{label} [{' '.join(parts)}]"
                        try:
                            request = self._request(p, a, r, c, where)
                        except SuiteError as exc:
                            out.append(CaseSpec(name, line, {}, None, None, str(exc)))
                            continue
                        out.append(CaseSpec(name, line, request, now, expect))
        return out

    def _request(
        self, principal: Any, action: Any, resource: Any, context: Any, where: str
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "principal": self._entity(principal, "principals", f"{where}.principal"),
            "action": self._action(action, f"{where}.action"),
            "resource": self._entity(resource, "resources", f"{where}.resource"),
        }
        if context is not None:
            request["context"] = self._context(context, f"{where}.context")
        plain: dict[str, Any] = _plain(request)
        return plain

    def _entity(self, value: Any, kind: str, where: str, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(value, str):
            m = _UID.fullmatch(value)
            if m:
                return {"type": m["type"], "id": re.sub(r"\\(.)", r"\1", m["id"])}
            _no_cycle(kind, value, seen, where)
            found = self.fixtures[kind].get(value)
            if found is None:
                known = ", ".join(sorted(self.fixtures[kind])) or "none"
                raise SuiteError(
                    f"{where}: {value!r} is neither a fixture in fixtures.{kind} (known: {known}) "
                    'nor an entity reference like Type::"id"',
                    _line(value),
                )
            return self._entity(found, kind, where, (*seen, value))
        if isinstance(value, dict):
            return value
        raise SuiteError(f'{where}: expected a fixture name, Type::"id" or a mapping')

    def _action(self, value: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(value, str):
            if value in self.fixtures["actions"]:
                _no_cycle("actions", value, seen, where)
                return self._action(self.fixtures["actions"][value], where, (*seen, value))
            m = _UID.fullmatch(value)
            if m:
                return {"type": m["type"], "id": re.sub(r"\\(.)", r"\1", m["id"])}
            return {"type": self.action_type, "id": value}
        if isinstance(value, dict):
            return value
        raise SuiteError(f'{where}: expected an action name, Type::"id" or a mapping')

    def _context(self, value: Any, where: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        if isinstance(value, str):
            _no_cycle("contexts", value, seen, where)
            found = self.fixtures["contexts"].get(value)
            if found is None:
                known = ", ".join(sorted(self.fixtures["contexts"])) or "none"
                raise SuiteError(
                    f"{where}: no context fixture {value!r} (known: {known})", _line(value)
                )
            return self._context(found, where, (*seen, value))
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, list):
            merged: dict[str, Any] = {}
            for i, item in enumerate(value):
                merged = _merge(merged, self._context(item, f"{where}[{i}]", seen))
            return merged
        raise SuiteError(f"{where}: expected a fixture name, a mapping or a list of them")


def _no_cycle(kind: str, name: str, seen: tuple[str, ...], where: str) -> None:
    """Fixtures may name other fixtures, but not in a circle (that recursed until it crashed)."""
    if name in seen:
        chain = " -> ".join((*seen[seen.index(name) :], name))
        raise SuiteError(f"{where}: fixtures.{kind} refer to each other in a cycle: {chain}")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; a `null` in `over` removes the key."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _expect(raw: Any, where: str) -> Expect:
    if isinstance(raw, str):
        return Expect(_decision(raw, where))
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected ALLOW, DENY or a mapping with `decision`")
    _check_keys(raw, _EXPECT_KEYS, where)
    if "decision" not in raw:
        raise SuiteError(f"{where}: `decision` is required", _line(raw))
    policies = raw.get("policies")
    if policies is not None and not (
        isinstance(policies, list) and all(isinstance(p, str) for p in policies)
    ):
        raise SuiteError(f"{where}.policies: expected a list of policy ids", _line(raw))
    errors = raw.get("errors", [])
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise SuiteError(f"{where}.errors: expected a list of strings", _line(raw))
    obligations = raw.get("obligations")
    parsed: dict[str, timedelta | None] | None = None
    if obligations is not None:
        if not isinstance(obligations, dict):
            raise SuiteError(f"{where}.obligations: expected a mapping", _line(raw))
        _check_keys(obligations, _OBLIGATION_KEYS, f"{where}.obligations")
        parsed = {}
        if "max_credential_ttl" in obligations:
            parsed["max_credential_ttl"] = _duration(
                obligations["max_credential_ttl"], f"{where}.obligations.max_credential_ttl"
            )
    return Expect(
        decision=_decision(raw["decision"], f"{where}.decision"),
        policies=frozenset(policies) if policies is not None else None,
        errors=tuple(errors),
        obligations=parsed,
    )


def _decision(value: Any, where: str) -> Decision:
    text = str(value).strip().upper()
    if text not in ("ALLOW", "DENY"):
        raise SuiteError(f"{where}: {value!r} is not ALLOW or DENY")
    return Decision(text)


def _duration(value: Any, where: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    try:
        return parse_iso_duration(str(value))
    except ValueError as exc:
        raise SuiteError(f"{where}: {exc} (or null for none)") from exc


def _time(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise SuiteError(f"{where}: {value!r} is not an RFC 3339 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _policy_dir(suite: Path, given: Any) -> Path:
    """`policies:` relative to the suite, else the nearest ancestor holding a schema."""
    if given is not None:
        if not isinstance(given, str):
            raise SuiteError("policies: expected a directory path")
        return suite.parent / given
    for directory in suite.parents:
        if any(directory.glob("*.cedarschema")) or any(directory.glob("*.cedarschema.json")):
            return directory
    raise SuiteError(
        "no policy directory: give `policies:` (relative to this file) "
        "or put the suite under a directory holding a *.cedarschema"
    )


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise SuiteError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
            _line(raw),
        )


def _line(value: Any) -> int:
    return getattr(value, "line", 0)


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "type" in value and "id" in value:
        return f'{value["type"]}::"{value["id"]}"'
    if isinstance(value, list):
        return "+".join(_label(v) for v in value)
    text = json.dumps(_plain(value), separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain(value: Any) -> Any:
    """YAML values as JSON: dates and times become RFC 3339 strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _describe(request: Mapping[str, Any], now: datetime | None) -> str:
    def uid(value: Any) -> str:
        if isinstance(value, dict):
            inner = value.get("__entity", value)
            if isinstance(inner, dict):
                return f'{inner.get("type")}::"{inner.get("id")}"'
        return str(value)

    text = " ".join(uid(request.get(k)) for k in ("principal", "action", "resource"))
    if now is not None:
        text += " at " + now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text


# --- output --------------------------------------------------------------------


def render_text(report: Report, *, verbose: bool = False, collapse_after: int = 20) -> str:
    """The text report. Names, requests and messages come from suites and policy files,
    so each is escaped (sidecar/core/textsafe.py): a case name cannot forge a PASS line."""
    lines: list[str] = []
    passing = [s for s in report.suites if s.ok]
    show_passing = verbose or len(passing) <= collapse_after
    width = min(60, max((len(escape(s.file)) for s in report.suites), default=0))
    for suite in report.suites:
        if suite.ok and not show_passing:
            continue
        lines.extend(_suite_lines(suite, width, verbose))
    if not show_passing:
        cases = sum(len(s.cases) for s in passing)
        lines.append(f"PASS  {len(passing):,} suites ({cases:,} cases; -v lists them)")
    for invalid in report.invalid:  # once per directory, however many suites use it
        lines.append("")
        lines.append(invalid.render())
    lines.append("")
    lines.append(summary_line(report))
    return escape_lines("\n".join(lines))


def summary_line(report: Report) -> str:
    parts = [f"{report.passed:,} passed"]
    if report.failed:
        parts.append(f"{report.failed:,} failed")
    if report.errored:
        parts.append(f"{report.errored:,} errors")
    broken = [s for s in report.suites if s.error]
    if broken:
        parts.append(f"{len(broken)} suites could not run")
    checks = [ok for s in report.suites for _, ok in s.checks]
    if checks:
        parts.append(f"{sum(checks):,}/{len(checks):,} validation checks agree")
    verdict = "OK" if all(s.ok for s in report.suites) else "FAILED"
    if verdict == "OK" and report.cases == 0:
        verdict = "NO TESTS"
    return (
        f"{verdict}: {len(report.suites):,} suites, {report.cases:,} cases: "
        + ", ".join(parts)
        + f" (policy errors: {report.policy_errors.value})"
    )


def _suite_lines(suite: SuiteResult, width: int, verbose: bool) -> list[str]:
    file = escape(suite.file)
    if suite.invalid_policies:
        return [f"INVALID  {file}: {escape_lines(suite.error)}"]
    if suite.error:
        return [f"ERROR {file}: {escape_lines(suite.error)}"]
    counts = [f"{suite.passed} passed"]
    if suite.failed:
        counts.append(f"{suite.failed} failed")
    if suite.errored:
        counts.append(f"{suite.errored} errors")
    head = "PASS " if suite.ok else "FAIL "
    title = f" ({escape(suite.name)})" if suite.name != suite.file else ""
    lines = [f"{head} {file:<{width}}  {', '.join(counts)}{title}"]
    for name, ok in suite.checks:
        if not ok or verbose:
            lines.append(f"  {'ok  ' if ok else 'FAIL'}  {escape(name)}")
    for case in suite.cases:
        if case.status == PASS:
            if verbose:
                lines.append(f"  pass  {escape(case.name)}")
            continue
        where = f"  ({escape(Path(suite.file).name)}:{case.line})" if case.line else ""
        lines.append(f"  {case.status.upper():<4}  {escape(case.name)}{where}")
        if case.request:
            lines.append(f"        request:  {escape(case.request)}")
        if case.expected is not None:
            lines.append(f"        expected: {escape(_expected_text(case.expected))}")
        if case.actual is not None:
            lines.extend(_actual_lines(case.actual))
        for problem in case.problems:
            lines.append(f"        - {escape_lines(problem)}")
    return lines


def _expected_text(expect: Expect) -> str:
    text = expect.decision.value
    if expect.policies is not None:
        text += " by " + (", ".join(sorted(expect.policies)) or "no policy")
    if expect.errors:
        text += f" with errors {list(expect.errors)}"
    if expect.obligations and "max_credential_ttl" in expect.obligations:
        text += f", max_credential_ttl {_ttl_text(expect.obligations['max_credential_ttl'])}"
    return text


def _actual_lines(result: Result) -> list[str]:
    by = ", ".join(f"{r.id} ({r.source})" if r.source else r.id for r in result.reasons)
    text = result.decision.value + (" by " + by if by else " (no determining policy)")
    ttl = result.obligations.max_credential_ttl
    if ttl is not None:
        text += f", max_credential_ttl {_ttl_text(ttl)}"
    lines = [f"        actual:   {escape(text)}"]
    for err in result.errors:
        lines.append(f"        error:    {escape(_error_text(err))}")
    return lines


def render_json(report: Report) -> str:
    """The whole report; a case's `actual` has the shape of `stepguard check --json`."""
    from sidecar.cli.main import result_json  # the CLI's one JSON form of a result

    return json.dumps(
        {
            "ok": all(s.ok for s in report.suites),
            "policy_errors": report.policy_errors.value,
            "summary": {
                "suites": len(report.suites),
                "cases": report.cases,
                "passed": report.passed,
                "failed": report.failed,
                "errors": report.errored,
                "suites_not_run": sum(bool(s.error) for s in report.suites),
            },
            "suites": [
                {
                    "file": s.file,
                    "name": s.name,
                    "format": s.kind,
                    "policies": s.policies,
                    "revision": s.revision,
                    "ok": s.ok,
                    "error": s.error or None,
                    "invalid_policies": s.invalid_policies,
                    "checks": [{"check": name, "ok": ok} for name, ok in s.checks],
                    "passed": s.passed,
                    "failed": s.failed,
                    "errors": s.errored,
                    "cases": [
                        {
                            "name": c.name,
                            "status": c.status,
                            "line": c.line or None,
                            "request": c.request,
                            "problems": list(c.problems),
                            "expected": c.expected.to_json() if c.expected else None,
                            "actual": result_json(c.actual) if c.actual else None,
                        }
                        for c in s.cases
                    ],
                }
                for s in report.suites
            ],
            "coverage": [c.to_json() for c in report.coverage],
            "warnings": [w.to_json() for w in report.warnings],
            "invalid_policies": [i.to_json() for i in report.invalid],
        },
        indent=2,
    )


def render_junit(report: Report) -> str:
    root = ET.Element(
        "testsuites",
        name="stepguard",
        tests=str(report.cases),
        failures=str(report.failed),
        errors=str(report.errored + sum(bool(s.error) for s in report.suites)),
    )
    for suite in report.suites:
        node = ET.SubElement(
            root,
            "testsuite",
            name=suite.name,
            file=suite.file,
            tests=str(len(suite.cases) + len(suite.checks) + bool(suite.error)),
            failures=str(suite.failed + sum(not ok for _, ok in suite.checks)),
            errors=str(suite.errored + bool(suite.error)),
        )
        if suite.error:
            case = ET.SubElement(node, "testcase", classname=suite.file, name="(load suite)")
            kind = "invalid policies" if suite.invalid_policies else "suite error"
            ET.SubElement(case, "error", message=kind).text = suite.error
        for name, ok in suite.checks:
            case = ET.SubElement(node, "testcase", classname=suite.file, name=name)
            if not ok:
                ET.SubElement(case, "failure", message=name)
        for c in suite.cases:
            attrs = {"classname": suite.file, "name": c.name}
            if c.line:
                attrs["line"] = str(c.line)
            case = ET.SubElement(node, "testcase", attrs)
            if c.status == PASS:
                continue
            detail = [f"request: {c.request}"] if c.request else []
            if c.expected is not None:
                detail.append(f"expected: {_expected_text(c.expected)}")
            if c.actual is not None:
                detail.extend(line.strip() for line in _actual_lines(c.actual))
            detail.extend(f"- {p}" for p in c.problems)
            tag = "failure" if c.status == FAIL else "error"
            message = c.problems[0] if c.problems else c.status
            ET.SubElement(case, tag, message=message).text = "\n".join(detail)
    ET.indent(root)
    # XML 1.0 cannot hold most control characters at all (names and messages come
    # from suites): shown escaped, as in the text report, so the document parses.
    return escape_lines(ET.tostring(root, encoding="unicode", xml_declaration=True))


# --- the command ---------------------------------------------------------------


def register(sub: Any) -> None:
    """Add `stepguard test` to the CLI."""
    cmd = sub.add_parser(
        "test",
        help="run policy test suites (YAML, and Cedar's JSON tests) with coverage",
        description="Run test suites against policies. Exit codes: 0 all passed, "
        "3 a case failed or a suite could not run, 4 policies do not load, "
        "5 no tests found (with --fail-on-empty), 6 coverage below --coverage-min.",
    )
    cmd.add_argument("paths", nargs="*", type=Path, help="suite files or directories (policies)")
    cmd.add_argument(
        "--policies", type=Path, help="run every YAML suite against this directory instead"
    )
    cmd.add_argument(
        "--format", choices=("text", "json", "junit"), default="text", help="report format"
    )
    cmd.add_argument("--output", "-o", type=Path, help="write the report here (default stdout)")
    cmd.add_argument("--filter", help="only cases whose 'suite-file: case name' matches this regex")
    cmd.add_argument("--fail-on-empty", action="store_true", help="exit 5 when no case ran")
    cmd.add_argument("--coverage", action="store_true", help="report coverage per file and line")
    cmd.add_argument(
        "--coverage-min",
        type=float,
        metavar="N",
        help="exit 6 when policy coverage of any policy directory is below N percent",
    )
    cmd.add_argument(
        "--clause-coverage-min",
        type=float,
        metavar="N",
        help="exit 6 when when/unless clause coverage is below N percent",
    )
    cmd.add_argument(
        "--policy-errors",
        choices=[m.value for m in PolicyErrors],
        default=PolicyErrors.DENY.value,
        help="what a policy that errors does: deny (default, as the server: any error "
        "of a policy that could apply makes the case a DENY) or cedar (Cedar's "
        "semantics: the erroring policy is skipped)",
    )
    cmd.add_argument("-v", "--verbose", action="store_true", help="list every suite and case")
    cmd.add_argument(
        "--watch",
        action="store_true",
        help="run again whenever the policies, entities or suites change (Ctrl-C stops: exit 0)",
    )
    cmd.add_argument(
        "--watch-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="--watch: poll period in seconds (default 1)",
    )
    cmd.add_argument(
        "--watch-rounds",
        type=int,
        metavar="N",
        help="--watch: stop after N runs with the last run's exit code (for scripts and tests)",
    )
    cmd.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    if getattr(args, "watch", False):
        return watch_command(args)
    return _run_once(args)[0]


def watch_command(args: argparse.Namespace) -> int:
    """Run, then run again each time the watched files change; Ctrl-C ends it with 0.

    Watched: the directories of the given paths (suites and their fixtures) and
    every policy directory a suite ran against, fingerprinted as the sidecar's
    hot reload does (`bundlefiles.fingerprint`: names and contents, through symlinks).
    Like hot reload, a change is acted on once it has held still for one
    interval, so a half-saved file is not run.
    """
    from sidecar.core.bundlefiles import fingerprint

    interval = max(0.01, float(args.watch_interval))
    rounds: int | None = args.watch_rounds
    runs = 0

    def snapshot(directories: Sequence[Path]) -> dict[Path, str]:
        return {d: fingerprint(d) for d in directories}

    directories = _watched(args, None)
    try:
        while True:
            # Taken before the run, so a change made while it runs is seen afterwards.
            before = snapshot(directories)
            code, runner = _run_once(args)
            runs += 1
            directories = _watched(args, runner)
            seen = {d: before.get(d) or fingerprint(d) for d in directories}
            if rounds is not None and runs >= rounds:
                return code
            print(
                f"watching {len(directories)} director{'y' if len(directories) == 1 else 'ies'} "
                "for changes (Ctrl-C stops)",
                file=sys.stderr,
                flush=True,
            )
            while True:
                time.sleep(interval)
                changed = snapshot(directories)
                if changed == seen:
                    continue
                time.sleep(interval)
                if snapshot(directories) == changed:  # held still: run it
                    break
            print("\nchanged: running the suites again\n", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        return EXIT_OK


def _watched(args: argparse.Namespace, runner: Runner | None) -> list[Path]:
    """The given paths' directories, and the policy directories the suites ran against."""
    paths: list[Path] = list(args.paths or [Path("policies")])
    found = {(p if p.is_dir() else p.parent).resolve() for p in paths}
    if runner is not None:
        found.update(runner.directories())
    if args.policies is not None:
        found.add(args.policies.resolve())
    return sorted(found)


def _run_once(args: argparse.Namespace) -> tuple[int, Runner]:
    pattern = None
    if args.filter:
        try:
            pattern = re.compile(args.filter, re.IGNORECASE)
        except re.error as exc:
            raise StepguardError(f"--filter: not a regular expression: {exc}") from exc
    wants_coverage = bool(
        args.coverage or args.coverage_min is not None or args.clause_coverage_min is not None
    )
    runner = Runner(
        policies_override=args.policies,
        case_filter=pattern,
        coverage=wants_coverage,
        policy_errors=PolicyErrors(args.policy_errors),
    )
    report = runner.run(args.paths or [Path("policies")])
    if args.format == "json":
        text = render_json(report)
    elif args.format == "junit":
        text = render_junit(report)
    else:
        text = render_text(report, verbose=args.verbose)
        if wants_coverage:
            text += "\n" + escape_lines(render_coverage(report.coverage, detail=args.coverage))
        if report.warnings:
            text += "\n" + "\n".join(w.render() for w in report.warnings)
            text += f"\n{len(report.warnings)} warning(s): policies that can error at run time"
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
        print(summary_line(report), file=sys.stderr)
    else:
        print(text, flush=True)
    code = exit_code(report, args.fail_on_empty, args.coverage_min, args.clause_coverage_min)
    return code, runner


def exit_code(
    report: Report,
    fail_on_empty: bool,
    coverage_min: float | None = None,
    clause_coverage_min: float | None = None,
) -> int:
    """The first that applies: 4 invalid policies, 3 failures, 5 empty, 6 low coverage, 0."""
    if any(s.invalid_policies for s in report.suites):
        return EXIT_INVALID
    if not all(s.ok for s in report.suites):
        return EXIT_FAILED
    if fail_on_empty and report.cases == 0:
        return EXIT_EMPTY
    if coverage_min is not None and _below(
        (c.policy_percent for c in report.coverage), coverage_min
    ):
        return EXIT_COVERAGE
    if clause_coverage_min is not None and _below(
        (c.clause_percent for c in report.coverage), clause_coverage_min
    ):
        return EXIT_COVERAGE
    return EXIT_OK


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


def _below(values: Iterable[float], minimum: float) -> bool:
    found = list(values)
    return not found or min(found) + 1e-9 < minimum
