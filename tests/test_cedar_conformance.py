"""The Cedar integration corpus through stepguard's own request path.

Each corpus request is turned into the JSON request form, then into protobuf,
validated by the servicer's translation (`request_from_proto`) and evaluated by
the engine: the exact path a gRPC call takes. Decision, reasons and errors must
match the corpus (reasons and errors as sets), and strict validation at load
must agree with `shouldValidate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.bundle import Bundle, Source, build_bundle
from sidecar.engine import evaluate
from sidecar.errors import BundleError
from sidecar.jsonreq import request_from_json
from sidecar.validate import Limits, request_from_proto
from tests.conftest import shared_dir

EXPECTED_REQUESTS = 7890
EXPECTED_FILES = 999


def _corpus_files() -> list[Path]:
    root = shared_dir("conformance", "cedar")
    files = sorted((root / "tests").rglob("*.json"))
    files += sorted(
        p for p in (root / "corpus-tests").glob("*.json") if not p.name.endswith(".entities.json")
    )
    return files


def _source(root: Path, rel: str) -> Source:
    return Source(rel, (root / rel).read_text())


def _check_file(path: Path) -> tuple[int, list[str]]:
    root = path.parent.parent if path.parent.name == "corpus-tests" else path.parents[2]
    test = json.loads(path.read_text())
    policies = [_source(root, test["policies"])]
    schema = _source(root, test["schema"])
    entities = [_source(root, test["entities"])]
    failures: list[str] = []
    try:
        build_bundle(policies, schema, entities)
        validated = True
    except BundleError:
        validated = False
    if validated != test["shouldValidate"]:
        failures.append(f"{path.name}: validation {validated}, expected {test['shouldValidate']}")
    bundle = build_bundle(policies, schema, entities, validate=False)
    limits = Limits(max_request_bytes=1 << 20, max_attribute_depth=64)
    for req in test["requests"]:
        got = _decide(bundle, limits, req)
        want = (req["decision"].upper(), set(req["reason"]), set(req["errors"]))
        if got != want:
            failures.append(f"{path.name} {req['description']!r}: got {got}, expected {want}")
    return len(test["requests"]), failures


def _decide(bundle: Bundle, limits: Limits, req: dict[str, Any]) -> tuple[str, set[str], set[str]]:
    message = request_from_json(
        {
            "principal": req["principal"],
            "action": req["action"],
            "resource": req["resource"],
            "context": {"attributes": req["context"]},
        }
    )
    request = request_from_proto(message, bundle, limits, now=None)
    result = evaluate(bundle, request)
    return (
        result.decision.value,
        {r.id for r in result.reasons},
        {e.policy_id for e in result.errors if e.policy_id},
    )


def test_corpus_matches_cedar() -> None:
    files = _corpus_files()
    assert len(files) == EXPECTED_FILES
    total, failures = 0, []
    for path in files:
        count, failed = _check_file(path)
        total += count
        failures.extend(failed)
    assert not failures, f"{len(failures)} mismatches, first: " + "\n".join(failures[:20])
    assert total == EXPECTED_REQUESTS


@pytest.mark.parametrize("name", ["multi/1.json", "decimal/1.json", "ip/1.json"])
def test_hand_written_tests_pass(name: str) -> None:
    path = shared_dir("conformance", "cedar", "tests") / name
    count, failures = _check_file(path)
    assert count > 0
    assert failures == []
