"""Just enough lexing of Cedar text to give errors a file and line.

cedarpy reports parse and validation errors without source positions; policies
are numbered in file order, so knowing where each policy starts is enough to
point an author at it. Policies end at a top-level `;`, which can otherwise
only appear inside string literals and comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """One policy's text and the 1-based line and column where it starts."""

    text: str
    line: int
    column: int


def split_policies(text: str) -> list[Span]:
    spans: list[Span] = []
    start: int | None = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "/" and text.startswith("//", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if ch.isspace():
            i += 1
            continue
        if start is None:
            start = i
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if ch == ";":
            spans.append(_span(text, start, i + 1))
            start = None
        i += 1
    if start is not None:
        spans.append(_span(text, start, n))
    return spans


def _span(text: str, start: int, end: int) -> Span:
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    return Span(text[start:end], line, column)


_NAMESPACE = re.compile(r"^namespace\s+([A-Za-z_][\w:]*)\s*\{\s*$")
_ENTITY = re.compile(r"^\s*entity\s+([A-Za-z_]\w*)\b")


def schema_entity_types(rendered_schema: str) -> frozenset[str]:
    """Entity type names declared by a schema in cedarpy's normalized rendering.

    `str(cedarpy.Schema)` prints one `entity Name ...` declaration per line
    inside `namespace X { ... }` blocks, which makes a line scan reliable.
    """
    types: set[str] = set()
    namespace = ""
    for line in rendered_schema.splitlines():
        m = _NAMESPACE.match(line)
        if m:
            namespace = m.group(1)
            continue
        if line.startswith("}"):
            namespace = ""
            continue
        m = _ENTITY.match(line)
        if m:
            types.add(f"{namespace}::{m.group(1)}" if namespace else m.group(1))
    return frozenset(types)
