"""Policy files in Cedar's canonical format: what `stepguard fmt` does (sidecar/cli/fmt.py).

Formatting is Cedar's own (`cedarpy.format_policies`). A file is rewritten
only when the formatted text means the same policies (same Cedar JSON) and
keeps every comment, and the rewrite is atomic (a temporary file renamed over
the original), so a policy directory being watched never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cedarpy

from sidecar.core.bundle import visible_files
from sidecar.core.cedartext import comments, locate_error, position, split_policies
from sidecar.core.errors import StepguardError
from sidecar.core.limits import LimitError, check_cedar_text


@dataclass(frozen=True, slots=True)
class Formatted:
    path: Path
    original: str
    formatted: str
    error: str = ""  # the file could not be formatted (does not parse)

    @property
    def changed(self) -> bool:
        return not self.error and self.formatted != self.original


def policy_files(paths: list[Path]) -> list[Path]:
    """Every *.cedar file under `paths`, skipping dot-directories, in path order."""
    out: list[Path] = []
    for root in paths:
        if root.is_file():
            out.append(root)
        elif root.is_dir():
            out.extend(p for p in visible_files(root) if p.suffix == ".cedar")
        else:
            raise StepguardError(f"{root}: no such file or directory")
    return out


def format_text(text: str, line_width: int = 80, indent_width: int = 2) -> str:
    """Cedar's canonical format of `text`; ValueError if it does not parse or would lose meaning."""
    formatted = cedarpy.format_policies(text, line_width, indent_width)
    if not formatted.endswith("\n"):
        formatted += "\n"
    if _meaning(formatted) != _meaning(text):  # pragma: no cover - a formatter bug
        raise ValueError("the formatter changed what the policies mean; file left as is")
    if sorted(comments(formatted)) != sorted(comments(text)):  # pragma: no cover - a formatter bug
        raise ValueError("the formatter dropped a comment; file left as is")
    return formatted


def _meaning(text: str) -> Any:
    return json.loads(cedarpy.policies_to_json_str(text))


def format_file(path: Path, line_width: int = 80, indent_width: int = 2) -> Formatted:
    text = path.read_text(encoding="utf-8")
    try:
        check_cedar_text(text)  # cedarpy's parser crashes on what this refuses
    except LimitError as exc:
        return Formatted(path, text, text, f"{path}:{exc.line}:{exc.column}: {exc}")
    try:
        return Formatted(path, text, format_text(text, line_width, indent_width))
    except ValueError as exc:
        return Formatted(path, text, text, _where(path, text, str(exc)))


def _where(path: Path, text: str, message: str) -> str:
    for span in split_policies(text):
        try:
            cedarpy.policies_to_json_str(span.text)
        except ValueError as exc:
            local = locate_error(span.text, str(exc), parse=True) or 0
            line, column = position(span.text, local)
            column = column + span.column - 1 if line == 1 else column
            return f"{path}:{span.line + line - 1}:{column}: syntax error: {exc}"
    return f"{path}: {message}"


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, keeping its permissions."""
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
