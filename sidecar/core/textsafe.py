"""Escape control and invisible characters in data before a terminal shows it.

The trail, test suites, requests and policy files hold text stepguard did
not write: a `run_id` with a newline forges a table row, a `\\r` or an ANSI
escape rewrites what is on screen, a bidi override (U+202E) reverses what a
reader sees. Every human-readable output of the command line passes such
data through `escape` (one line: a table cell, a name, a message) or
`escape_lines` (multi-line text, keeping its newlines), so what is printed
is what is stored, in visible form:

    C0 and C1 controls, DEL   \\n \\r \\t, else \\xNN       (ESC is \\x1b)
    format characters         \\uNNNN or \\UNNNNNNNN        (bidi controls
    line/paragraph separators                             U+202A-202E and
    lone surrogates                                       U+2066-2069,
                                                          zero-width, tags)

That is every code point of Unicode categories Cc, Cf, Zl, Zp and Cs
(tests/core/test_textsafe.py checks the set against `unicodedata`). A backslash is
left as it is, so `\\n` on screen may also be a backslash and an `n` in the
data; the JSON outputs (`--format json`, `--json`) give the exact text.

`json_text` makes JSON written with `ensure_ascii=False` safe the same way
(JSON escapes C0 itself, but not C1, DEL or format characters).
"""

from __future__ import annotations

import re

# Unicode 14 (Python 3.11): categories Cc, Cf, Zl, Zp, Cs, and the unassigned
# code points inside the invisible-operator and Egyptian-format blocks.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)
_UNSAFE_BUT_NEWLINE = re.compile(_UNSAFE.pattern.replace("\x00-\x1f", "\x00-\x09\x0b-\x1f"))
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    cp = ord(ch)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def escape(value: object) -> str:
    """`value` as one line of safe text: every control or invisible character escaped."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_visible, text)


def escape_lines(text: str) -> str:
    """Like `escape`, but keeps newlines: for multi-line data shown as lines."""
    return _UNSAFE_BUT_NEWLINE.sub(_visible, text)


def is_safe(text: str) -> bool:
    """True if `escape` would leave `text` unchanged."""
    return _UNSAFE.search(text) is None


def _json_escape(match: re.Match[str]) -> str:
    cp = ord(match.group())
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    cp -= 0x10000
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


def json_text(text: str) -> str:
    """JSON text (from `json.dumps(..., ensure_ascii=False)`) with unsafe characters as \\uXXXX.

    They can only occur inside JSON strings, where the escape means the same
    character, so the document parses to the same value. Newlines are kept:
    JSON escapes those inside strings, so the ones left are indentation.
    """
    return _UNSAFE_BUT_NEWLINE.sub(_json_escape, text)
