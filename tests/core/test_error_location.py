"""Locating a syntax error does bounded work (issue 27, point 4).

`validate` and the watcher point at the bad token by parsing prefixes of the
broken policy. Parsing every prefix was quadratic: a 28 KB broken policy kept
the watcher (holding the interpreter lock) busy for 26 s. The parser calls are
counted here, not timed.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import cedarpy
import pytest

from sidecar.core.cedartext import locate_error, split_policies, token_ends
from sidecar.core.problems import check_directory
from tests.conftest import POLICIES

REAL_PARSE = cedarpy.policies_to_json_str


class TooManyCalls(Exception):
    pass


@pytest.fixture
def parser_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts calls of cedarpy's parser; more than 1,000 aborts (the old code made ~30,000)."""
    calls: list[int] = []

    def counting(text: str) -> str:
        calls.append(len(text))
        if len(calls) > 1000:
            raise TooManyCalls(f"{len(calls)} parser calls")
        return REAL_PARSE(text)

    monkeypatch.setattr(cedarpy, "policies_to_json_str", counting)
    yield calls


def big_broken_policy(bad_line: int, lines: int = 400) -> str:
    """One policy of about 30 KB, no string literals, a missing comma on `bad_line`."""
    rows = []
    for n in range(lines):
        row = ", ".join(f"context.attempt + {n * 10 + k}" for k in range(10))
        if n + 3 == bad_line:
            row = row.replace(", ", " ", 1)  # `... + 0 context.attempt` : a missing comma
        rows.append("  " + row + ",")
    return (
        "permit (principal, action, resource)\nwhen {\n"
        + "\n".join(rows)
        + "\n  0\n].isEmpty() };\n"
    ).replace("when {\n", "when { [\n", 1)


def test_a_large_broken_policy_is_located_with_few_parser_calls(
    tmp_path: Path, parser_calls: list[int]
) -> None:
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root, ignore=shutil.ignore_patterns("tests"))
    text = big_broken_policy(bad_line=350)
    assert len(text) > 28_000
    (root / "big.cedar").write_text(text)
    parser_calls.clear()
    bundle, problems = check_directory(root)
    assert bundle is None
    (problem,) = [p for p in problems if p.file == "big.cedar"]
    assert problem.line == 350, problem
    assert problem.message.startswith("syntax error: unexpected token")
    tokens = len(token_ends(text))
    policies = sum(len(split_policies(p.read_text())) for p in root.glob("*.cedar"))
    # one parse per policy to find the broken ones, a few for the loader, then bisection
    assert len(parser_calls) <= policies + 2 * math.ceil(math.log2(tokens)) + 10


@pytest.mark.parametrize("bad_line", [3, 120, 402])
def test_bisection_finds_the_same_token_as_a_linear_scan(
    bad_line: int, parser_calls: list[int]
) -> None:
    """The boundary found by bisection is where the first failing prefix ends."""
    text = split_policies(big_broken_policy(bad_line=bad_line, lines=400))[0].text
    try:
        REAL_PARSE(text)
    except ValueError as exc:
        message = str(exc)
    offset = locate_error(text, message, parse=True)
    assert offset is not None
    assert text.count("\n", 0, offset) + 1 == bad_line
    # what a linear scan over token ends would find: the bad token, `context`
    assert text[offset:].startswith("context.attempt") and text[offset - 1] == " "
    assert len(parser_calls) <= 2 + math.ceil(math.log2(len(token_ends(text))))
