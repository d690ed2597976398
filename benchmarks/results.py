"""RESULTS.md: this harness rewrites only the part between its markers.

Other sections (the audit engineer's "Audit trail") are left as they are.
"""

from __future__ import annotations

from pathlib import Path

BEGIN = "<!-- bench:begin (written by `./dev bench`; edit benchmarks/, not this block) -->"
END = "<!-- bench:end -->"
HEADER = "# Benchmark results\n\n"


def write_section(path: Path, body: str) -> None:
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    text = path.read_text() if path.exists() else HEADER
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block if text.strip() else HEADER + block
    path.write_text(text)


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
