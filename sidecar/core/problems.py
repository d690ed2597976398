"""Every problem of a policy directory the loader refuses, each at its file, line and column.

The loader (`bundle.load_bundle`) is the verdict: what it accepts, the server
accepts. It stops at the first problem and knows only the line where a policy
starts, so when it refuses a directory this module looks again, file by file
and policy by policy, to list every parse and validation error at the token
it is about (see `cedartext.locate_error`). It reads the directory as the
loader does, so `stepguard validate` (sidecar/authoring/diagnose.py) and the
watcher's reload error (sidecar/serving/watch.py) name the same place.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from sidecar.core import lifecycle
from sidecar.core.bundle import Bundle, load_bundle, schema_actions, visible_files
from sidecar.core.bundlefiles import LIFECYCLE_FILE, read_text
from sidecar.core.cedartext import Span, locate_error, position, split_policies
from sidecar.core.errors import BundleError
from sidecar.core.limits import LimitError, check_cedar_text, check_json_text
from sidecar.core.textsafe import escape, escape_lines

_POLICY_REF = re.compile(r"policy(\d+)")


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int  # 0 when unknown
    column: int  # 0 when unknown
    message: str
    source_line: str = ""  # the text of `line`, for the snippet
    level: str = "error"  # or "warning" (the directory loads; --strict refuses it)

    @property
    def where(self) -> str:
        parts = [self.file] + [str(n) for n in (self.line, self.column) if n]
        return ":".join(parts)

    def render(self) -> str:
        """`file:line: message`, then where exactly and the offending line, rustc-style.

        Names, messages and the snippet are escaped (sidecar/core/textsafe.py): a
        bidi override or escape sequence in a policy file shows as `\u202e`,
        and the caret still points at the right character.
        """
        head = f"{self.file}:{self.line}" if self.line else self.file
        label = "warning: " if self.level == "warning" else ""
        lines = [f"{escape(head)}: {label}{escape_lines(self.message)}"]
        if self.source_line and self.line:
            gutter = " " * len(str(self.line))
            lines.append(f"{gutter}--> {escape(self.where)}")
            lines.append(f"{self.line} | {escape(self.source_line.rstrip())}")
            if self.column:
                pad = " " * len(escape(self.source_line[: self.column - 1]))
                lines.append(f"{gutter} | {pad}^")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "snippet": self.source_line.rstrip(),
            "level": self.level,
        }


def check_directory(directory: Path) -> tuple[Bundle | None, list[Problem]]:
    """The loaded bundle and no problems, or no bundle and every problem found."""
    try:
        return load_bundle(directory), []
    except BundleError as exc:
        verdict = exc
    problems = _look_closer(directory)
    # The loader's verdict stays, unless a closer look located it in its file already.
    if not (verdict.file and any(p.file == verdict.file for p in problems)):
        problems.insert(0, _from_bundle_error(directory, verdict))
    return None, in_reading_order(problems)


def in_reading_order(problems: list[Problem]) -> list[Problem]:
    """By file, line and column (directory-wide ones first): how `--json` and text list them."""
    return sorted(problems, key=lambda p: (p.line > 0, p.file, p.line, p.column))


def _look_closer(directory: Path) -> list[Problem]:
    if not directory.is_dir():
        return []
    files = visible_files(directory)
    schema_files = [p for p in files if p.name.endswith((".cedarschema", ".cedarschema.json"))]
    problems: list[Problem] = []
    schema: cedarpy.Schema | None = None
    if len(schema_files) == 1:
        schema, found = _check_schema(directory, schema_files[0])
        problems.extend(found)
    for path in files:
        if path.suffix == ".cedar":
            problems.extend(_check_policy_file(directory, path, schema))
        elif path.name == LIFECYCLE_FILE and schema is not None:
            problems.extend(_check_lifecycle(directory, path, schema))
    return _merge_per_action(problems)


def _check_lifecycle(directory: Path, path: Path, schema: cedarpy.Schema) -> list[Problem]:
    """Every problem of `lifecycle.yaml` (the loader stops at the first)."""
    text = readable_text(path)
    if text is None:
        return []
    name = path.relative_to(directory).as_posix()
    _, findings = lifecycle.check(text, *schema_actions(schema))
    return [_at_line(name, text, f.line, f.column, f.message) for f in findings]


_ACTION_NAME = re.compile(r'\b(\w+::)*Action::"(?:[^"\\]|\\.)*"')


def _merge_per_action(problems: list[Problem]) -> list[Problem]:
    """One problem per place and message: Cedar repeats a context error for every action."""
    merged: dict[tuple[str, int, int, str], list[Problem]] = {}
    for problem in problems:
        key = (problem.file, problem.line, problem.column, _ACTION_NAME.sub("A", problem.message))
        merged.setdefault(key, []).append(problem)
    out: list[Problem] = []
    for group in merged.values():
        first = group[0]
        if len(group) > 1:
            more = len(group) - 1
            first = dataclasses.replace(
                first, message=f"{first.message} (and for {more} more action(s))"
            )
        out.append(first)
    return out


def readable_text(path: Path) -> str | None:
    """The text of a bundle file, or None when it cannot be read (the loader says why)."""
    try:
        return read_text(path, path.name)  # non-blocking, regular files only
    except BundleError:
        return None


def _check_schema(directory: Path, path: Path) -> tuple[cedarpy.Schema | None, list[Problem]]:
    text = readable_text(path)
    if text is None:
        return None, []  # the loader's own message covers unreadable files
    name = str(path.relative_to(directory))
    try:
        if path.name.endswith(".json"):
            check_json_text(text)
        else:
            check_cedar_text(text, schema=True)
    except LimitError as exc:
        return None, [_at_line(name, text, exc.line, exc.column, f"invalid schema: {exc}")]
    try:
        if path.name.endswith(".json"):
            return cedarpy.Schema.from_json_str(text), []
        return cedarpy.Schema.from_str(text), []
    except ValueError as exc:
        offset = None if path.name.endswith(".json") else locate_error(text, str(exc), parse=False)
        return None, [_at(name, text, offset, f"invalid schema: {exc}")]


def _check_policy_file(directory: Path, path: Path, schema: cedarpy.Schema | None) -> list[Problem]:
    text = readable_text(path)
    if text is None:
        return []
    name = str(path.relative_to(directory))
    try:
        check_cedar_text(text)  # cedarpy crashes on what this refuses
    except LimitError as exc:
        return [_at_line(name, text, exc.line, exc.column, str(exc))]
    spans = split_policies(text)
    offsets = _span_offsets(text, spans)
    problems: list[Problem] = []
    for span, start in zip(spans, offsets, strict=True):
        try:
            cedarpy.policies_to_json_str(span.text)
        except ValueError as exc:
            local = locate_error(span.text, str(exc), parse=True)
            offset = start + (local if local is not None else 0)
            problems.append(_at(name, text, offset, f"syntax error: {exc}"))
    if problems or schema is None:
        return problems
    result = cedarpy.validate_policies(text, schema)
    for err in result.errors:
        m = _POLICY_REF.fullmatch(err.policy_id)
        index = int(m.group(1)) if m else -1
        if 0 <= index < len(spans):
            local = locate_error(spans[index].text, err.error, parse=False)
            offset = offsets[index] + (local if local is not None else 0)
            message = _named(err.error, err.policy_id, spans[index].text)
            problems.append(_at(name, text, offset, f"validation error: {message}"))
        else:
            problems.append(Problem(name, 0, 0, f"validation error: {err.error}"))
    return problems


def _named(message: str, positional: str, policy_text: str) -> str:
    """Cedar's message with the policy's `@id` for the positional `policyN` it uses.

    Cedar numbers the policies of the text it validates (`policy0` is the file's
    first), which names nothing the author wrote. Without an `@id`, the
    position is said in words.
    """
    try:
        doc = json.loads(cedarpy.policies_to_json_str(policy_text))
        annotations = next(iter(doc["staticPolicies"].values())).get("annotations") or {}
    except (ValueError, KeyError, StopIteration, AttributeError):
        annotations = {}
    policy_id = annotations.get("id")
    if isinstance(policy_id, str):
        named = f"policy {json.dumps(policy_id)}"
    else:
        m = _POLICY_REF.fullmatch(positional)
        named = f"the policy without an @id (number {int(m.group(1)) + 1} in its file)" if m else ""
    if not named:
        return message
    return message.replace(f"for policy `{positional}`", f"for {named}", 1)


def _span_offsets(text: str, spans: list[Span]) -> list[int]:
    """Where each span starts in the file (spans carry line and column)."""
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    return [starts[s.line - 1] + s.column - 1 for s in spans]


def _at(name: str, text: str, offset: int | None, message: str) -> Problem:
    if offset is None:
        return Problem(name, 0, 0, message)
    line, column = position(text, offset)
    return Problem(name, line, column, message, _line_text(text, line))


def _at_line(name: str, text: str, line: int, column: int, message: str) -> Problem:
    return Problem(name, line, column, message, _line_text(text, line))


def _line_text(text: str, line: int) -> str:
    lines = text.split("\n")
    return lines[line - 1] if 0 < line <= len(lines) else ""


def _from_bundle_error(directory: Path, exc: BundleError) -> Problem:
    """The loader's error, with a column and snippet when it names a line of a file."""
    if not exc.file:
        return Problem(str(directory), 0, 0, exc.detail)
    path = directory / exc.file
    text = (
        readable_text(path)
        if exc.file in {p.relative_to(directory).as_posix() for p in visible_files(directory)}
        else None
    )
    if text is None or not exc.line:
        return Problem(exc.file, exc.line, 0, exc.detail)
    line_text = _line_text(text, exc.line)
    column = exc.column or (len(line_text) - len(line_text.lstrip()) + 1 if line_text else 0)
    return Problem(exc.file, exc.line, column, exc.detail, line_text)
