"""Reading Cedar's own JSON test format (cedar-integration-tests) into cases.

A test file names a policy file, a schema and an entity file (paths relative
to the test repository's root, found by walking up from the test), says
whether strict validation should pass (`shouldValidate`), and lists requests
with their expected decision, determining policies (`reason`) and erroring
policies (`errors`). The corpus in ../shared/conformance/cedar is of this
form. Its cases run under Cedar's rules (`CEDAR_LIMITS`, entities named in a
request need not be stored): the runner decides that; this module only reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.authoring.testing.results import Expect
from sidecar.authoring.testing.suites import CaseSpec, SuiteError, parse_decision
from sidecar.core.bundle import Source, build_bundle
from sidecar.core.errors import BundleError
from sidecar.core.limits import LimitError, check_json_text
from sidecar.core.validate import Limits

# The Cedar corpus nests deeper and carries larger requests than the server's defaults.
CEDAR_LIMITS = Limits(max_request_bytes=1 << 20, max_attribute_depth=64)
# How deep a Cedar JSON test file may nest (its entities and requests): far above
# any real test, far below the depth at which json.loads raises RecursionError.
CEDAR_TEST_DEPTH = 200


@dataclass(frozen=True, slots=True)
class CedarTest:
    """One Cedar JSON test file, read: the files it names and its raw requests."""

    policies: Source
    schema: Source
    entities: Source
    requests: Any  # the file's `requests` (each read by `case`)
    should_validate: bool


def read(path: Path) -> CedarTest:
    """The test in `path`, or SuiteError saying why it is not a readable Cedar test."""
    try:
        text = path.read_text(encoding="utf-8")
        # Bounded before the standard library's recursive parser sees it.
        check_json_text(text, max_depth=CEDAR_TEST_DEPTH)
        test = json.loads(text)
        if not isinstance(test, dict):
            raise SuiteError(
                "the top level must be an object (policies, schema, entities, requests)"
            )
        policies = _source(path, test, "policies")
        schema = _source(path, test, "schema")
        entities = _source(path, test, "entities")
        requests = test["requests"]
        if not isinstance(requests, list):
            raise SuiteError("requests: expected a list")
        should_validate = bool(test.get("shouldValidate", True))
    except LimitError as exc:
        raise SuiteError(
            f"not a readable Cedar test: line {exc.line}, column {exc.column}: {exc}"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, SuiteError) as exc:
        raise SuiteError(f"not a readable Cedar test: {exc}") from exc
    return CedarTest(policies, schema, entities, requests, should_validate)


def validation_check(test: CedarTest) -> tuple[str, bool]:
    """The suite-level check: does strict validation pass exactly when `shouldValidate` says?"""
    try:
        build_bundle([test.policies], test.schema, [test.entities])
        validated = True
    except BundleError:
        validated = False
    if validated == test.should_validate:
        return (f"strict validation {'passes' if validated else 'fails'}, as expected", True)
    return (
        f"strict validation {'passes' if validated else 'fails'}, "
        f"but shouldValidate is {str(test.should_validate).lower()}",
        False,
    )


def description(req: Any) -> str:
    """A request's description ('' for one without, or for a request that is no object)."""
    return str(req.get("description") or "") if isinstance(req, Mapping) else ""


def case(req: Any, index: int) -> CaseSpec:
    """One request of the file as a case (named by its description, else by its place)."""
    name = description(req) or f"request {index}"
    if not isinstance(req, Mapping):
        return CaseSpec(name, 0, {}, None, None, "malformed request: expected an object")
    try:
        expect = Expect(
            decision=parse_decision(req["decision"], "decision"),
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
        return CaseSpec(name, 0, {}, None, None, f"malformed request: {exc}")
    return CaseSpec(name, 0, data, None, expect)


def is_test(path: Path, *, explicit: bool) -> bool:
    """Whether a JSON file is a Cedar test: a mapping with `policies` and `requests`."""
    if explicit:
        return True
    try:
        text = path.read_text(encoding="utf-8")
        check_json_text(text, max_depth=CEDAR_TEST_DEPTH)
        doc = json.loads(text)
    except LimitError:
        # Too deep to parse: a file that looks like a Cedar test is reported, not skipped.
        return '"policies"' in text and '"requests"' in text
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and {"policies", "requests"} <= set(doc)


def _source(test_file: Path, test: Mapping[str, Any], key: str) -> Source:
    """A file a Cedar test names: its paths are relative to the test repository's root."""
    rel = test[key]
    if not isinstance(rel, str):
        raise SuiteError(f"{key}: expected a path")
    for base in (test_file.parent, *test_file.parents):
        candidate = base / rel
        if candidate.is_file():
            return Source(rel, candidate.read_text(encoding="utf-8"))
    raise SuiteError(f"{key}: {rel} not found relative to {test_file} or its parents")
