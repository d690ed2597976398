"""Every published figure comes from a committed command that writes it (issue 26 point 4).

benchmarks/RESULTS.md holds figures only inside the blocks its commands write, each naming
its command, the date and the commit it ran on, and the raw data file when there is one;
the docs quote no measured figure (they point to RESULTS.md), only targets and settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BLOCK = re.compile(
    r"<!-- (?P<name>[\w-]+):begin \(written by `(?P<command>[^`]+)`[^)]*\) -->"
    r"(?P<body>.*?)<!-- (?P=name):end -->",
    re.DOTALL,
)
# A measured figure: a ratio, a latency, a rate, a memory size.
FIGURE = re.compile(
    r"\b\d[\d,]*(?:\.\d+)?x\b|\b\d[\d,]*(?:\.\d+)? ?(?:us|µs)\b"
    r"|\b\d[\d,]*(?:\.\d+)? ?(?:decisions|calls)/s\b|\b\d[\d,]*(?:\.\d+)? ?MiB\b"
)
# In the docs, sizes in MiB are settings and bounds (cache_max_bytes, the memory bound's
# slack), so only ratios, latencies and rates count there.
DOC_FIGURE = re.compile(FIGURE.pattern.rsplit("|", 1)[0])
# What a doc may state with such a unit: a target, a bucket boundary, a setting's default.
NOT_MEASURED = re.compile(r"(?:at most|at least|buckets|default) $")
COMMIT = re.compile(r"\bcommit\s+([0-9a-f]{7,40})\b")


def _outside_blocks(text: str) -> str:
    return BLOCK.sub("", text)


def test_results_holds_figures_only_inside_the_blocks_commands_write() -> None:
    text = RESULTS.read_text()
    outside = _outside_blocks(text)
    assert FIGURE.findall(outside) == []
    assert [line for line in outside.splitlines() if line.startswith("|")] == []


def test_every_block_names_its_command_date_and_commit() -> None:
    text = RESULTS.read_text()
    blocks = list(BLOCK.finditer(text))
    assert {b["name"] for b in blocks} >= {"bench", "authzen-bench", "audit-bench"}
    for i, block in enumerate(blocks):
        body = block["body"]
        assert "Command: `" in body, block["name"]
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", body), block["name"]
        # The commit is in the block, or (a block written before the commands recorded
        # it) in the note just above it, found from the history.
        before = text[blocks[i - 1].end() if i else 0 : block.start()]
        commit = COMMIT.search(body) or COMMIT.search(before.split("\n\n")[-2])
        assert commit, f"{block['name']}: no commit named"
        for data in re.findall(r"`(benchmarks/data/[^`]+\.json)`", body):
            assert (ROOT / data).is_file(), f"{block['name']}: {data} is not committed"


@pytest.mark.parametrize(
    "doc", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_the_docs_quote_no_measured_figure(doc: Path) -> None:
    text = " ".join(doc.read_text().split())
    quoted = [
        m.group(0) for m in DOC_FIGURE.finditer(text) if not NOT_MEASURED.search(text[: m.start()])
    ]
    assert quoted == [], f"{doc.name} quotes figures; they belong in RESULTS.md"
