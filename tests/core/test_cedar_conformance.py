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

import pytest

from sidecar.core.engine import evaluate
from sidecar.core.errors import BundleError
from sidecar.core.model import PolicyErrors
from tests.conftest import shared_dir
from tests.corpus import EXPECTED_FILES, EXPECTED_REQUESTS, CorpusFile, corpus_files


def _check_file(path: Path) -> tuple[int, list[str]]:
    case = CorpusFile(path)
    failures: list[str] = []
    try:
        case.bundle(validate=True)
        validated = True
    except BundleError:
        validated = False
    if validated != case.should_validate:
        failures.append(f"{path.name}: validation {validated}, expected {case.should_validate}")
    bundle = case.bundle()
    count = 0
    for req, request in case.requests(bundle):
        result = evaluate(bundle, request, policy_errors=PolicyErrors.CEDAR)
        got = (
            result.decision.value,
            {r.id for r in result.reasons},
            {e.policy_id for e in result.errors if e.policy_id},
        )
        want = (req["decision"].upper(), set(req["reason"]), set(req["errors"]))
        if got != want:
            failures.append(f"{case.where(req)}: got {got}, expected {want}")
        count += 1
    return count, failures


def test_corpus_matches_cedar() -> None:
    files = corpus_files()
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


def test_the_corpus_has_no_allow_with_errors() -> None:
    """Why the corpus also passes under the default: no request of it is an ALLOW with errors.

    So it cannot tell the two semantics apart; tests/core/test_policy_errors.py does.
    """
    allowed_with_errors = [
        (path.name, req.get("description"))
        for path in corpus_files()
        for req in json.loads(path.read_text())["requests"]
        if req["decision"] == "allow" and req["errors"]
    ]
    assert allowed_with_errors == []
