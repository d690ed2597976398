"""Policy test suites: read them, run them against a bundle, report what they found.

- `suites`: YAML suites (fixtures, cases, matrices) into cases, errors with lines;
- `cedarjson`: Cedar's own JSON test format (cedar-integration-tests) into cases;
- `runner`: the `Runner`, which runs cases through the server's request path
  and returns a `Report` (it prints nothing);
- `results`: what a run found, as data, and `compare` (expected vs decided);
- `coverage`: which policies and clauses the cases exercised;
- `report`: a `Report` as text, JSON or JUnit XML.

The `stepguard test` command (flags, progress, exit codes, `--watch`) is
sidecar/cli/test.py; nothing here imports the command line.
"""

from sidecar.authoring.testing.coverage import Coverage
from sidecar.authoring.testing.report import render_json, render_junit, render_text, summary_line
from sidecar.authoring.testing.results import (
    ERROR,
    FAIL,
    PASS,
    CaseResult,
    Expect,
    InvalidPolicies,
    Report,
    SuiteResult,
    compare,
)
from sidecar.authoring.testing.runner import Runner, discover
from sidecar.authoring.testing.suites import CaseSpec, SuiteError, SuiteSpec, load_yaml

__all__ = [
    "ERROR",
    "FAIL",
    "PASS",
    "CaseResult",
    "CaseSpec",
    "Coverage",
    "Expect",
    "InvalidPolicies",
    "Report",
    "Runner",
    "SuiteError",
    "SuiteResult",
    "SuiteSpec",
    "compare",
    "discover",
    "load_yaml",
    "render_json",
    "render_junit",
    "render_text",
    "summary_line",
]
