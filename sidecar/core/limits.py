"""What the loader refuses before cedarpy (or `json`) ever sees it.

cedarpy 4.12.2's parser recurses without a depth limit on the thread's native
stack: about 650 nested brackets, or a chain of about 16,000 `||` / `+` / `.`
terms, overflow the 8 MiB stack and the process dies with SIGSEGV (measured
in a child process per shape; see docs/deployment.md). Shorter chains still
hurt: the policy's JSON form nests two levels per operator, and past about
500 operators `json.loads` raises `RecursionError`, past about 60 Cedar's own
JSON reader refuses the policy set. `has a.b.c...` takes time quadratic in the
path. So every input is scanned first, in linear time, respecting string
literals and comments, and refused with file, line and column when it nests
deeper than these limits, which sit far below the crash thresholds:

- `MAX_NESTING`: brackets `(` `[` `{` open at once inside one policy, or in a
  schema (where `<` of `Set<...>` counts too).
- `MAX_EXPRESSION_DEPTH`: an upper bound of the depth of a policy's expression
  tree: per bracket level, the operators (`||`, `&&`, comparisons, `+`, `-`,
  `*`, `!`, `.`, `if`, `has`, `like`, `is`, `in`) plus the deepest nested level.
- `MAX_JSON_DEPTH`: arrays and objects open at once in an entities file or a
  JSON schema.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_NESTING = 64
MAX_EXPRESSION_DEPTH = 200
MAX_JSON_DEPTH = 64


class LimitError(ValueError):
    """Input refused before parsing: what is wrong and where (1-based line and column)."""

    def __init__(self, message: str, line: int, column: int) -> None:
        self.line = line
        self.column = column
        super().__init__(message)


_CEDAR_TOKEN = re.compile(
    r"""
    (?P<str>"(?:[^"\\\n]|\\.)*"?)
   |(?P<com>//[^\n]*)
   |(?P<open>[(\[{])
   |(?P<close>[)\]}])
   |(?P<sep>[,;])
   |(?P<angle>[<>])
   |(?P<op>\|\||&&|==|!=|<=|>=|[+\-*!.]|\b(?:if|has|like|is|in)\b)
    """,
    re.VERBOSE,
)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def check_cedar_text(text: str, *, schema: bool = False) -> None:
    """Raise `LimitError` if a policy (or, `schema=True`, a schema) nests too deeply.

    Linear in the text; string literals and `//` comments are skipped whole.
    Each frame of the stack is one open bracket: [operators in the current
    comma-separated segment, deepest closed child in it, deepest segment].
    """
    stack: list[list[int]] = [[0, 0, 0]]
    for m in _CEDAR_TOKEN.finditer(text):
        kind = m.lastgroup
        if kind in ("str", "com"):
            continue
        if kind == "open" or (schema and kind == "angle" and m.group() == "<"):
            stack.append([0, 0, 0])
            if len(stack) - 1 > MAX_NESTING:
                line, col = _position(text, m.start())
                what = "schema" if schema else "policy"
                raise LimitError(
                    f"{what} nests more than {MAX_NESTING} brackets deep; "
                    "cedarpy's parser crashes on deep nesting, so this is refused",
                    line,
                    col,
                )
        elif kind == "close" or (schema and kind == "angle"):
            if len(stack) == 1:
                continue  # unbalanced: Cedar reports it
            ops, child, seg = stack.pop()
            depth = max(seg, ops + child) + 1
            top = stack[-1]
            top[1] = max(top[1], depth)
            _check_depth(text, m.start(), depth + top[0])
        elif kind == "sep":
            top = stack[-1]
            top[2] = max(top[2], top[0] + top[1])
            top[0] = top[1] = 0
            if m.group() == ";" and len(stack) > 1:
                stack[1:] = []  # a `;` inside brackets: Cedar reports the imbalance
                stack[0] = [0, 0, 0]
        elif not schema and kind in ("op", "angle"):
            top = stack[-1]
            top[0] += 1
            if top[0] + top[1] > MAX_EXPRESSION_DEPTH:
                _check_depth(text, m.start(), top[0] + top[1])


def _check_depth(text: str, offset: int, depth: int) -> None:
    if depth > MAX_EXPRESSION_DEPTH:
        line, col = _position(text, offset)
        raise LimitError(
            f"expression nests more than {MAX_EXPRESSION_DEPTH} operators deep "
            "(a chain of `||`, `&&`, `+`, `.` ... counts each term); split the policy "
            "or use a set and `.contains` / `in` instead of long chains",
            line,
            col,
        )


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (string contents skipped).

    Done with regular expressions and `accumulate`, not a Python loop per
    character, so a large entities file costs little.
    """
    brackets = re.sub(r"[^\[\]{}]+", "", _JSON_STRING.sub("", text))
    if not brackets:
        return 0
    return max(accumulate(1 if b in "[{" else -1 for b in brackets))


def check_json_text(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `LimitError` at the first array or object nested deeper than `max_depth`."""
    if json_depth(text) <= max_depth:
        return
    depth = 0
    for m in _JSON_BRACKET.finditer(text):
        ch = m.group()
        if ch in "[{":
            depth += 1
            if depth > max_depth:
                line, col = _position(text, m.start())
                raise LimitError(f"JSON nests more than {max_depth} arrays/objects deep", line, col)
        elif ch in "]}":
            depth -= 1


class DuplicateKey(ValueError):
    """A JSON object names the same key twice (found by `loads_unique`)."""

    def __init__(self, key: str, line: int = 0, column: int = 0) -> None:
        self.key = key
        self.line = line
        self.column = column
        super().__init__(f"duplicate key {key!r}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return out


def loads_unique(text: str) -> Any:
    """`json.loads`, but an object naming a key twice raises `DuplicateKey` with its place.

    The standard library keeps the last value silently; for entity data that
    turned `"shared": false, "shared": true` into a different decision.
    Other errors are `json.JSONDecodeError` as usual.
    """
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except DuplicateKey as exc:
        line, column = _duplicate_position(text, exc.key)
        raise DuplicateKey(exc.key, line, column) from None


_JSON_TOKEN = re.compile(
    r'(?P<key>"(?:[^"\\]|\\.)*"(?=\s*:))|"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL
)


def _duplicate_position(text: str, key: str) -> tuple[int, int]:
    """Where `key` is named a second time in one object (the failure path only)."""
    objects: list[set[str] | None] = []
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok in "{[":
            objects.append(set() if tok == "{" else None)
        elif tok in "}]":
            if objects:
                objects.pop()
        elif m.group("key") and objects and objects[-1] is not None:
            name = json.loads(tok)
            if name in objects[-1] and name == key:
                return _position(text, m.start())
            objects[-1].add(name)
    return 0, 0
