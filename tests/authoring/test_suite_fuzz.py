"""Hypothesis: `stepguard test` on suite files holding anything at all.

Policy authors write suites by hand; a wrong one must be a clear error in the
report (its file, its case), never a traceback. Property: for suites whose
keys hold any YAML value, and real-looking suites with odd values, the CLI
ends with one of its exit codes (0 passed, 3 a case failed or the suite could
not run, 5 nothing ran; `stepguard test --help`) and says why on a non-zero
exit, in text and JSON form.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar.cli.main import main
from tests.helpers import POLICIES

texts = st.one_of(
    st.sampled_from(
        ["provisioner", "notifier", "grant_access", "notify", "jira", "slack", "onboarding"]
    ),
    st.sampled_from(["ALLOW", "DENY", "allow", "2026-11-25T10:00:00Z", "PT24H", "", "x::y"]),
    st.text(max_size=8),
)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
expects = st.one_of(
    values,
    st.fixed_dictionaries(
        {"decision": st.one_of(st.sampled_from(["ALLOW", "DENY"]), values)},
        optional={
            "policies": st.one_of(values, st.lists(texts, max_size=2)),
            "obligations": st.one_of(values, st.dictionaries(texts, values, max_size=2)),
            "errors": values,
        },
    ),
)
cases = st.one_of(
    values,
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.one_of(texts, values),
            "principal": st.one_of(texts, values),
            "action": st.one_of(texts, values),
            "resource": st.one_of(texts, values),
            "context": st.one_of(texts, values, st.lists(texts, max_size=2)),
            "now": st.one_of(texts, values),
            "expect": expects,
        },
    ),
)
suites = st.one_of(
    values,
    st.fixed_dictionaries(
        {"include": st.just("fixtures.yaml")},
        optional={
            "name": texts,
            "now": st.one_of(st.just("2026-11-25T10:00:00Z"), texts, values),
            "cases": st.one_of(values, st.lists(cases, max_size=3)),
            "matrix": st.one_of(
                values,
                st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "principals": st.one_of(values, st.lists(texts, max_size=2)),
                            "actions": st.one_of(values, st.lists(texts, max_size=2)),
                            "resources": st.one_of(values, st.lists(texts, max_size=2)),
                            "contexts": st.one_of(values, st.lists(texts, max_size=2)),
                            "expect": expects,
                        },
                    ),
                    max_size=2,
                ),
            ),
            "plans": st.one_of(values, st.lists(values, max_size=2)),
            "fixtures": values,
            "action_type": st.one_of(st.just("Action"), values),
        },
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(doc=suites, as_json=st.booleans())
def test_any_suite_is_run_or_refused_with_a_reason(
    doc: Any, as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(POLICIES / "tests" / "fixtures.yaml", Path(tmp) / "fixtures.yaml")
        suite = Path(tmp) / "suite_test.yaml"
        suite.write_text(yaml.safe_dump(doc, allow_unicode=True))
        args = ["test", str(suite), "--policies", str(POLICIES)]
        capsys.readouterr()
        code = main([*args, "--format", "json", "--fail-on-empty"] if as_json else args)
        out = capsys.readouterr()
    assert code in (0, 3, 5), (code, out.out, out.err)
    event(f"exit {code}")
    if as_json and out.out.strip():
        json.loads(out.out)
    if code != 0:
        assert (out.out + out.err).strip()
