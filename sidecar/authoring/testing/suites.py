"""Reading YAML suites into cases (docs/policy-testing.md, "The YAML suite format").

A suite is a mapping beside the policies (`policies/tests/*.yaml`) with
fixtures, `cases`, `matrix` and `plans` entries (a plan's steps are
pre-flighted, docs/api.md "Plans", each step one case). About 570 lines, past
the 500 lines of issue 17: a plan case is read with the same fixtures, merging
and line-keeping as `cases` and `matrix`, by the same builder. Each case becomes a `CaseSpec`: the
JSON request form the server would receive, the time to decide at and the
`Expect`ation. A malformed case carries its problem (with the line it starts
on) and is reported as an error while the rest of the suite still runs; a
malformed suite raises `SuiteError` naming the line. Aliases are refused
(sidecar/core/safeyaml.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from sidecar.authoring.testing.results import Expect
from sidecar.core import safeyaml
from sidecar.core.errors import StepguardError
from sidecar.core.model import Decision, EntityUid
from sidecar.core.policyparse import parse_iso_duration

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
    "plans",
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
_PLAN_KEYS = {"name", "context", "unknown", "at", "steps"}
_PLAN_STEP_KEYS = {"id", "principal", "action", "resource", "context", "unknown", "at", "expect"}
_PLAN_EXPECT_KEYS = {"verdict", "policies", "words"}
VERDICTS = ("ALLOW", "DENY", "DEPENDS")
_OBLIGATION_KEYS = {"max_credential_ttl", "revoke_within"}


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


def load_yaml(path: Path) -> Any:
    return safeyaml.load_file(path, _Loader)


def yaml_error(exc: BaseException) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc)


@dataclass(frozen=True, slots=True)
class PlanExpect:
    """What a plan case expects of one planned step (docs/policy-testing.md, "Plans")."""

    verdict: str  # ALLOW | DENY | DEPENDS
    policies: frozenset[str] | None = None  # ALLOW/DENY: determining; DEPENDS: still open
    words: tuple[str, ...] = ()  # each part of the step's reason, in words


@dataclass(frozen=True, slots=True)
class PlanCase:
    """A step of a plan case: its unknown context paths, when it runs, what is expected."""

    unknown: tuple[str, ...]
    at: str | None
    expect: PlanExpect


@dataclass(frozen=True, slots=True)
class CaseSpec:
    name: str
    line: int
    request: Mapping[str, Any]
    now: datetime | None
    expect: Expect | None
    problem: str = ""  # the case is malformed; reported as an error, the rest still run
    plan: PlanCase | None = None  # a planned step: pre-flighted, not decided


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
        raw_plans = doc.get("plans") or []
        if not isinstance(raw_plans, list):
            raise SuiteError("plans: expected a list", _line(doc))
        for i, raw in enumerate(raw_plans):
            cases.extend(build.plan(raw, f"plans[{i}]"))
        name = doc.get("name") or ""
        return cls(str(name), policies, now, tuple(_plain(entities)), tuple(cases))


def _included(suite: Path, name: str) -> Any:
    """The `fixtures` of a file a suite includes (relative to the suite)."""
    path = suite.parent / name
    try:
        doc = load_yaml(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"include: cannot read {name}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SuiteError(f"include: {name}: {yaml_error(exc)}") from exc
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

    def plan(self, raw: Any, where: str) -> list[CaseSpec]:
        """A plan case: one case per planned step, named `plan name [step id]`."""
        line = _line(raw)
        label = str(raw.get("name") or where) if isinstance(raw, dict) else where
        try:
            if not isinstance(raw, dict):
                raise SuiteError(f"{where}: expected a mapping")
            _check_keys(raw, _PLAN_KEYS, where)
            steps = raw.get("steps")
            if not isinstance(steps, list) or not steps:
                raise SuiteError(f"{where}: `steps` must be a non-empty list", line)
        except SuiteError as exc:
            return [CaseSpec(label, line, {}, None, None, str(exc))]
        out: list[CaseSpec] = []
        for i, step in enumerate(steps):
            at = f"{where}.steps[{i}]"
            step_line = _line(step) or line
            sid = step.get("id") if isinstance(step, dict) else None
            name = f"{label} [{sid if sid else i}]"
            try:
                if not isinstance(step, dict):
                    raise SuiteError(f"{at}: expected a mapping", step_line)
                _check_keys(step, _PLAN_STEP_KEYS, at)
                for key in ("principal", "action", "resource", "expect"):
                    if key not in step:
                        raise SuiteError(f"{at}: `{key}` is required", step_line)
                context = step["context"] if "context" in step else raw.get("context")
                request = self._request(
                    step["principal"], step["action"], step["resource"], context, at
                )
                unknown = step.get("unknown", raw.get("unknown", []))
                if not isinstance(unknown, list) or not all(isinstance(u, str) for u in unknown):
                    raise SuiteError(f"{at}.unknown: expected a list of context paths", step_line)
                when = step.get("at", raw.get("at"))
                moment = _plain(_time(when, f"{at}.at")) if when is not None else None
                case = PlanCase(
                    tuple(unknown), moment, _plan_expect(step["expect"], f"{at}.expect")
                )
            except SuiteError as exc:
                out.append(CaseSpec(name, step_line, {}, None, None, str(exc)))
                continue
            out.append(CaseSpec(name, step_line, request, None, None, plan=case))
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
            uid = EntityUid.parse(value)
            if uid is not None:
                return uid.to_json()
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
            uid = EntityUid.parse(value)
            if uid is not None:
                return uid.to_json()
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
        return Expect(parse_decision(raw, where))
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected ALLOW, DENY or a mapping with `decision`")
    _check_keys(raw, _EXPECT_KEYS, where)
    if "decision" not in raw:
        raise SuiteError(f"{where}: `decision` is required", _line(raw))
    policies = _policy_ids(raw, where)
    errors = raw.get("errors", [])
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise SuiteError(f"{where}.errors: expected a list of strings", _line(raw))
    obligations = raw.get("obligations")
    parsed: dict[str, timedelta | None] | None = None
    if obligations is not None:
        if not isinstance(obligations, dict):
            raise SuiteError(f"{where}.obligations: expected a mapping", _line(raw))
        _check_keys(obligations, _OBLIGATION_KEYS, f"{where}.obligations")
        parsed = {
            name: _duration(obligations[name], f"{where}.obligations.{name}")
            for name in sorted(_OBLIGATION_KEYS)
            if name in obligations
        }
    return Expect(
        decision=parse_decision(raw["decision"], f"{where}.decision"),
        policies=policies,
        errors=tuple(errors),
        obligations=parsed,
    )


def _policy_ids(raw: dict[str, Any], where: str) -> frozenset[str] | None:
    """An expectation's `policies`: the ids it names, None when it names none."""
    policies = raw.get("policies")
    if policies is None:
        return None
    if not (isinstance(policies, list) and all(isinstance(p, str) for p in policies)):
        raise SuiteError(f"{where}.policies: expected a list of policy ids", _line(raw))
    return frozenset(policies)


def _plan_expect(raw: Any, where: str) -> PlanExpect:
    if isinstance(raw, str):
        return PlanExpect(_verdict(raw, where))
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected ALLOW, DENY, DEPENDS or a mapping with `verdict`")
    _check_keys(raw, _PLAN_EXPECT_KEYS, where)
    if "verdict" not in raw:
        raise SuiteError(f"{where}: `verdict` is required", _line(raw))
    policies = _policy_ids(raw, where)
    words = raw.get("words", [])
    words = [words] if isinstance(words, str) else words
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise SuiteError(f"{where}.words: expected text or a list of texts", _line(raw))
    return PlanExpect(
        _verdict(raw["verdict"], f"{where}.verdict"),
        policies,
        tuple(words),
    )


def _verdict(value: Any, where: str) -> str:
    text = str(value).strip().upper()
    if text not in VERDICTS:
        raise SuiteError(f"{where}: {value!r} is not ALLOW, DENY or DEPENDS")
    return text


def parse_decision(value: Any, where: str) -> Decision:
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
        return str(EntityUid(str(value["type"]), str(value["id"])))
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


def is_suite(path: Path, *, explicit: bool) -> bool:
    """Whether a YAML file is a suite: a mapping with `cases` or `matrix` (or named by the user)."""
    if explicit:
        return True
    try:
        doc = safeyaml.load_file(path)
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        # A broken file that looks like a suite is reported, not skipped.
        return _looks_like_suite(path)
    return isinstance(doc, dict) and ("cases" in doc or "matrix" in doc or "plans" in doc)


def _looks_like_suite(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return bool(re.search(r"^(cases|matrix|plans)\s*:", text, re.MULTILINE))
