"""RESULTS.md: this harness rewrites only the part between its markers.

Other sections (the audit engineer's "Audit trail") are left as they are.
"""

from __future__ import annotations

from pathlib import Path

BEGIN = "<!-- bench:begin (written by `./dev bench`; edit benchmarks/, not this block) -->"
END = "<!-- bench:end -->"
HEADER = "# Benchmark results\n\n"


def markers(name: str) -> tuple[str, str]:
    if name == "bench":
        return BEGIN, END
    return (
        f"<!-- bench-{name}:begin (written by `./dev bench --only {name}`) -->",
        f"<!-- bench-{name}:end -->",
    )


def write_section(path: Path, body: str, name: str = "bench") -> None:
    """Replace (or append) the block between this name's markers; keep the rest."""
    begin, end = markers(name)
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block if text.strip() else HEADER + block
    path.write_text(text)


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_block(path: Path, name: str, command: str, body: str) -> None:
    """Replace (or append) the block named `name`, whatever command wrote it last.

    The markers name the command that wrote the block, so a reader (and
    tests/benchmarks/test_bench_provenance.py) can tell written figures from prose.
    """
    import re

    block = (
        f"<!-- {name}:begin (written by `{command}`) -->\n{body.rstrip()}\n<!-- {name}:end -->\n"
    )
    text = path.read_text() if path.exists() else HEADER
    tag = re.escape(name)
    found = re.compile(
        rf"<!-- {tag}:begin \(written by `[^`]*`[^)]*\) -->.*?<!-- {tag}:end -->\n?", re.DOTALL
    )
    if found.search(text):
        text = found.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def save_data(name: str, started: str, record: object) -> Path:
    """Keep a run's raw figures as benchmarks/data/<name>-<start>.json (committed with them)."""
    import json

    stamp = started[:16].replace(":", "")  # 2026-12-06T05:35
    out = Path(__file__).resolve().parent / "data" / f"{name}-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out
