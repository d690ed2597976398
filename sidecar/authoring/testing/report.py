"""A run's Report as text, JSON or JUnit XML; the `stepguard test` command picks one.

Every name, request and message in a report comes from suites and policy
files, so the text and JUnit forms escape them (sidecar/core/textsafe.py): a
case name cannot forge a PASS line, and the XML parses. A case's `actual` in
the JSON form is `result_json`, the shape of `stepguard check --json`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from sidecar.authoring.testing.coverage import render as render_coverage
from sidecar.authoring.testing.results import (
    FAIL,
    PASS,
    Expect,
    Report,
    SuiteResult,
    error_text,
    ttl_text,
)
from sidecar.core.model import Result, result_json
from sidecar.core.textsafe import escape, escape_lines


def render_text(
    report: Report,
    *,
    verbose: bool = False,
    collapse_after: int = 20,
    coverage: bool = False,
    coverage_detail: bool = False,
) -> str:
    """The text report: suites (passing ones collapsed past `collapse_after` unless
    `verbose`), the policy directories that do not load, the summary line; with
    `coverage`, the coverage summary (per file, policy and clause with
    `coverage_detail`); then any warnings of validate."""
    text = _results_text(report, verbose, collapse_after)
    if coverage:
        text += "\n" + escape_lines(render_coverage(report.coverage, detail=coverage_detail))
    if report.warnings:
        text += "\n" + "\n".join(w.render() for w in report.warnings)
        text += f"\n{len(report.warnings)} warning(s): policies that can error at run time"
    return text


def _results_text(report: Report, verbose: bool, collapse_after: int) -> str:
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
    for name, want in sorted((expect.obligations or {}).items()):
        text += f", {name} {ttl_text(want)}"
    return text


def _actual_lines(result: Result) -> list[str]:
    by = ", ".join(f"{r.id} ({r.source})" if r.source else r.id for r in result.reasons)
    text = result.decision.value + (" by " + by if by else " (no determining policy)")
    for name in ("max_credential_ttl", "revoke_within"):
        value = getattr(result.obligations, name)
        if value is not None:
            text += f", {name} {ttl_text(value)}"
    lines = [f"        actual:   {escape(text)}"]
    for err in result.errors:
        lines.append(f"        error:    {escape(error_text(err))}")
    return lines


def render_json(report: Report) -> str:
    """The whole report; a case's `actual` has the shape of `stepguard check --json`."""
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
