"""Just enough lexing of Cedar text to give errors a file and line.

cedarpy reports parse and validation errors without source positions; policies
are numbered in file order, so knowing where each policy starts is enough to
point an author at it. Policies end at a top-level `;`, which can otherwise
only appear inside string literals and comments.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """One policy's text and the 1-based line and column where it starts."""

    text: str
    line: int
    column: int


_PIECE = re.compile(r'//[^\n]*|"(?:[^"\\]|\\.)*"?|;|[^\s"/;]+|/', re.DOTALL)


def split_policies(text: str) -> list[Span]:
    """Each policy's text and where it starts: policies end at a `;` outside strings and comments.

    Linear in the text (a regular expression walks it, and line numbers are
    counted on from the previous policy): counting from the top of the file
    for every policy made a 2.7 MB file take seconds.
    """
    spans: list[Span] = []
    start: int | None = None
    line, line_start, counted = 1, 0, 0

    def span(begin: int, end: int) -> Span:
        nonlocal line, line_start, counted
        newlines = text.count("\n", counted, begin)
        if newlines:
            line += newlines
            line_start = text.rfind("\n", counted, begin) + 1
        counted = begin
        return Span(text[begin:end], line, begin - line_start + 1)

    for m in _PIECE.finditer(text):
        piece = m.group()
        if piece.startswith("//"):
            continue
        if start is None:
            start = m.start()
        if piece == ";":
            spans.append(span(start, m.end()))
            start = None
    if start is not None:
        spans.append(span(start, len(text)))
    return spans


_NAMESPACE = re.compile(r"^namespace\s+([A-Za-z_][\w:]*)\s*\{\s*$")
_ENTITY = re.compile(r"^\s*entity\s+([A-Za-z_]\w*)\b")
_MEMBER_OF = re.compile(r"^\s*entity\s+([A-Za-z_]\w*)\s+in\s+\[([^\]]*)\]")


def _schema_lines(rendered_schema: str) -> Iterator[tuple[str, str]]:
    """(namespace, line) for each declaration line of cedarpy's normalized rendering.

    `str(cedarpy.Schema)` prints one declaration per line inside
    `namespace X { ... }` blocks, which makes a line scan reliable.
    """
    namespace = ""
    for line in rendered_schema.splitlines():
        m = _NAMESPACE.match(line)
        if m:
            namespace = m.group(1)
        elif line.startswith("}"):
            namespace = ""
        else:
            yield namespace, line


def schema_entity_types(rendered_schema: str) -> frozenset[str]:
    """Entity type names declared by a schema in cedarpy's normalized rendering."""
    return frozenset(
        f"{namespace}::{m.group(1)}" if namespace else m.group(1)
        for namespace, line in _schema_lines(rendered_schema)
        if (m := _ENTITY.match(line))
    )


def schema_member_of(rendered_schema: str) -> dict[str, frozenset[str]]:
    """Entity type -> the types its entities may be in (`entity Name in [A, B] ...`),
    names qualified within their namespace."""
    types = schema_entity_types(rendered_schema)

    def qualified(namespace: str, name: str) -> str:
        local = f"{namespace}::{name}" if namespace else name
        return local if local in types else name

    out: dict[str, frozenset[str]] = {}
    for namespace, line in _schema_lines(rendered_schema):
        m = _MEMBER_OF.match(line)
        if m:
            names = [p.strip() for p in m.group(2).split(",") if p.strip()]
            out[qualified(namespace, m.group(1))] = frozenset(
                qualified(namespace, n) for n in names
            )
    return out


# --- where things are inside one policy ---------------------------------------
#
# Explanations and coverage name a policy's scope constraints and its `when` /
# `unless` clauses by file, line and column; validation errors point at the
# offending token. Cedar gives neither, so they are found here in the text.

SCOPE_KINDS = ("principal", "action", "resource")


@dataclass(frozen=True, slots=True)
class Part:
    """A scope constraint or a condition clause of one policy.

    `kind` is "principal", "action", "resource", "when" or "unless"; `offset`
    is where it starts in the policy text; `text` is its source (a clause
    includes its keyword and braces).
    """

    kind: str
    offset: int
    text: str


def policy_parts(text: str) -> list[Part]:
    """The scope constraints and condition clauses of one policy, in source order."""
    parts: list[Part] = []
    tokens = list(_code_chars(text))
    k, n = 0, len(tokens)
    after_at = False
    while k < n:  # find the effect keyword, skipping annotations
        i, ch = tokens[k]
        if ch == "@":
            after_at = True
            k += 1
            continue
        if _is_ident_start(ch):
            word, k = _word(text, tokens, k)
            if not after_at and word in ("permit", "forbid"):
                break
            after_at = False
            continue
        if ch == "(":
            k = _matching(tokens, k) + 1
            continue
        k += 1
    while k < n and tokens[k][1] != "(":
        k += 1
    if k >= n:
        return parts
    close = _matching(tokens, k)
    start = k + 1
    depth = 0
    scope: list[tuple[int, int]] = []
    for j in range(k + 1, close + 1):
        ch = tokens[j][1]
        if ch in "([{":
            depth += 1
        elif ch in ")]}" and depth:
            depth -= 1
        elif (ch == "," and depth == 0) or j == close:
            scope.append((start, j))
            start = j + 1
    for kind, (first, last) in zip(SCOPE_KINDS, scope, strict=False):
        a = first
        while a < last and tokens[a][1].isspace():
            a += 1
        begin, end = tokens[a][0], tokens[last][0]
        parts.append(Part(kind, begin, text[begin:end].strip()))
    k = close + 1
    while k < n:
        i, ch = tokens[k]
        if ch == ";":
            break
        if _is_ident_start(ch):
            word, after = _word(text, tokens, k)
            if word in ("when", "unless"):
                brace = after
                while brace < n and tokens[brace][1] != "{":
                    brace += 1
                if brace >= n:
                    break
                end = _matching(tokens, brace)
                stop = tokens[end][0] + 1 if end < n else len(text)
                parts.append(Part(word, i, text[i:stop]))
                k = end + 1
                continue
            k = after
            continue
        k += 1
    return parts


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of `offset` in `text`."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def one_line(text: str, limit: int = 100) -> str:
    """Source text flattened to one line, shortened to `limit` characters."""
    flat = " ".join(blank(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def locate_error(text: str, message: str, parse: bool) -> int | None:
    """Best guess at the offset in `text` (one policy, or a schema) that `message` is about.

    A parse error is found by bisecting over prefixes (`_first_bad_prefix`):
    the shortest prefix that already holds the error ends at the bad token.
    Otherwise the names Cedar quotes in the message are searched for.
    """
    if parse and message.startswith(("unexpected token", "invalid token", "unexpected end")):
        found = _first_bad_prefix(text, message)
        if found is not None:
            return found
    found = _search_message_terms(text, message)
    if found is None and parse:
        found = _first_bad_prefix(text, message)
    if found is None and message == "unexpected end of input":
        found = len(text.rstrip())
    return found


_BACKTICKED = re.compile(r"`([^`]+)`")
_POLICY_ID = re.compile(r"policy\d+")
_TRAILING_TERM = re.compile(r":\s*(@?[\w:\"]+)\s*$")
_EXTENSION_CALL = re.compile(r"\b(ip|decimal|datetime|duration)\s*\(")


def _search_message_terms(text: str, message: str) -> int | None:
    code = blank(text)
    if "empty set literals" in message:
        m = re.search(r"\[\s*\]", code)
        return m.start() if m else None
    if "non-literal expressions" in message:
        m = _EXTENSION_CALL.search(code)
        return m.start() if m else None
    if "applicable action" in message:
        m = re.search(r"\baction\b", code)
        return m.start() if m else None
    terms = [t for t in _BACKTICKED.findall(message) if not _POLICY_ID.fullmatch(t)]
    trailing = _TRAILING_TERM.search(message)
    if trailing:
        terms.append(trailing.group(1))
    for term in terms:
        if re.search(rf"(attribute|tag) `{re.escape(term)}`", message):
            bare = term.strip('"')
            m = re.search(
                rf"(\.\s*{re.escape(bare)}\b|\bhas\s+{re.escape(bare)}\b"
                rf"|\[\s*\"{re.escape(bare)}\"\s*\]|\b{re.escape(bare)}\b)",
                code,
            )
            if m:
                return m.start() + (1 if m.group(0).startswith(".") else 0)
        for candidate in (term, term.strip('"')):
            if not candidate:
                continue
            pattern = re.escape(candidate)
            if candidate[0].isalnum() or candidate[0] == "_":
                pattern = rf"(?<![\w:]){pattern}(?![\w])"
            m = re.search(pattern, code)
            if m:
                return m.start()
    return None


_TOKEN_END = re.compile(
    r'"(?:[^"\\]|\\.)*"?|//[^\n]*|[A-Za-z0-9_]+|==|!=|<=|>=|&&|\|\||::|\S', re.DOTALL
)


def token_ends(text: str) -> list[int]:
    """Offsets just after each token outside comments (a string literal is one token)."""
    return [m.end() for m in _TOKEN_END.finditer(text) if not m.group().startswith("//")]


def _first_bad_prefix(text: str, message: str) -> int | None:
    """Where the parse error `message` is: the shortest prefix, cut after a whole
    token, whose parse already fails with `message`.

    Cedar's parser recovers from errors and reports the first one, but a
    prefix cut short reports "unexpected end of input" instead. So each prefix
    is parsed with a probe appended (` ; ;`: tokens that fail wherever they
    come): a prefix before the bad token fails at the probe, one that holds
    the bad token fails with `message`. That is monotone, so the boundary is
    found by bisection: about log2(tokens) parser calls of one policy each
    (between calls the interpreter hands its lock to the decision threads at
    its switch interval), instead of one call per character (quadratic: a
    28 KB policy held the watcher, and the lock, for 26 s).
    """
    import cedarpy  # local: the rest of this module is plain text handling

    ends = token_ends(text)
    probe = " ; ;" if "`;`" not in message else " )" * 8

    def holds_error(k: int) -> bool:
        try:
            cedarpy.policies_to_json_str(text[: ends[k]] + probe)
        except ValueError as exc:
            return str(exc) == message
        return False

    if not ends or not holds_error(len(ends) - 1):
        return None
    lo, hi = -1, len(ends) - 1  # holds_error(lo) is False (or lo = -1), holds_error(hi) True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds_error(mid):
            hi = mid
        else:
            lo = mid
    end = ends[hi]
    # Cedar may only notice a bad token one token later: when the message
    # names it, point at its last occurrence in this prefix.
    named = _BACKTICKED.fullmatch(message.removeprefix("unexpected token "))
    if named and (at := blank(text[:end]).rfind(named.group(1))) >= 0:
        return at
    start = ends[lo] if lo >= 0 else 0
    while start < end and text[start].isspace():
        start += 1
    return start


def comments(text: str) -> list[str]:
    """The text of every `//` comment, in order (string literals are not comments)."""
    found: list[str] = []
    for original, code in zip(text.split("\n"), blank(text).split("\n"), strict=True):
        if original != code:
            start = next(i for i, (a, b) in enumerate(zip(original, code, strict=False)) if a != b)
            found.append(original[start:].strip())
    return found


def blank(text: str, *, strings: bool = False) -> str:
    """`text` with comments (and, with `strings`, string contents) replaced by spaces,
    so that offsets stay the same and a scan for code sees only code."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if strings:
                for k in range(i + 1, min(j, n)):
                    out[k] = " "
            i = j + 1
            continue
        if text.startswith("//", i):
            stop = text.find("\n", i)
            stop = n if stop < 0 else stop
            for k in range(i, stop):
                out[k] = " "
            i = stop
            continue
        i += 1
    return "".join(out)


def _code_chars(text: str) -> list[tuple[int, str]]:
    """(offset, char) of everything outside comments; a string literal is one `"` entry."""
    out: list[tuple[int, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "/" and text.startswith("//", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if ch == '"':
            out.append((i, '"'))
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        out.append((i, ch))
        i += 1
    return out


def _is_ident_start(ch: str) -> bool:
    return ch.isalpha() or ch == "_"


def _word(text: str, tokens: list[tuple[int, str]], k: int) -> tuple[str, int]:
    start = tokens[k][0]
    j = k
    while j < len(tokens) and (tokens[j][1].isalnum() or tokens[j][1] == "_"):
        j += 1
    end = tokens[j - 1][0] + 1
    return text[start:end], j


def _matching(tokens: list[tuple[int, str]], k: int) -> int:
    """Index of the bracket closing the one at `k` (or the last token if unbalanced)."""
    depth = 0
    for j in range(k, len(tokens)):
        ch = tokens[j][1]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return j
    return len(tokens) - 1
