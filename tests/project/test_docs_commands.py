"""Every `stepguard` command in README.md and docs/*.md runs as printed (issue 22.4).

The commands are taken from the code blocks (fenced, or indented by four
spaces): each line that starts with `stepguard`, `$ stepguard` or
`.venv/bin/stepguard`, with its `\\` continuation lines. Each is run from a
copy of the repository's root (its policies/ and examples/, and ../shared
when present), so a command that writes files changes nothing in the
checkout, and must exit with the documented code.

A block's expectations are stated just before it in an HTML comment, which
a reader of the rendered page does not see:

    <!-- docs-test: exit 2 -->           every command in the block exits 2
    <!-- docs-test: exit 0 2 -->         the first exits 0, the second 2
    <!-- docs-test: skip: why -->        not runnable as printed, and why
    <!-- docs-test: exit 0 skip; skip: why -->   the second is not runnable

Without one, every command must exit 0. Nothing is skipped silently: a
command that cannot run here needs a `skip` with its reason.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.cli.main import subcommands as cli_subcommands
from tests import conftest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<body>.*?)\s*-->")
_WORDS = ("--version", "--help", "serve", "check", "validate", "test", "fmt", "replay", "audit")
_COMMAND = re.compile(
    r"^(?:\$ )?(?:\.venv/bin/)?stepguard (?:" + "|".join(_WORDS) + r"|healthcheck)(?: |$)"
)


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str  # as printed, continuation lines joined
    expect: int | None  # None: skipped
    why: str = ""

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _blocks(text: str) -> list[tuple[int, list[str], str]]:
    """(first line number, lines, directive body) of every code block."""
    lines = text.split("\n")
    out: list[tuple[int, list[str], str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = line.lstrip().startswith("```")
        indented = line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip())
        if not (fence or indented):
            i += 1
            continue
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        m = _DIRECTIVE.fullmatch(lines[j].strip()) if j >= 0 else None
        directive = m["body"] if m else ""
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].lstrip().startswith("```"):
                end += 1
            out.append((i + 2, lines[i + 1 : end], directive))
            i = end + 1
        else:
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            out.append((i + 1, lines[i:end], directive))
            i = end
    return out


def _open_quote(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:  # "No closing quotation": the command goes on
        return True
    return False


def _commands(doc: Path) -> list[Command]:
    name = str(doc.relative_to(ROOT))
    found: list[Command] = []
    for first, lines, directive in _blocks(doc.read_text(encoding="utf-8")):
        texts: list[tuple[int, str]] = []
        k = 0
        while k < len(lines):
            stripped = lines[k].strip()
            if _COMMAND.match(stripped):
                start = k
                text = stripped.removeprefix("$ ")
                while k + 1 < len(lines) and (text.endswith("\\") or _open_quote(text)):
                    k += 1
                    if text.endswith("\\"):
                        text = text[:-1] + " " + lines[k].strip()
                    else:  # inside a quoted argument the newline is part of it
                        text = text + "\n" + lines[k].strip()
                texts.append((first + start, text))
            k += 1
        if not texts:
            continue
        exits, _, why = directive.partition("skip:")  # "exit 0 skip; skip: why" or "skip: why"
        exits, why = exits.strip().rstrip(";").strip(), why.strip()
        words = exits.split() or (["exit", "skip"] if why else ["exit", "0"])
        assert words[0] == "exit" and len(words) > 1, f"{name}:{first}: {directive!r}"
        codes = words[1:] * len(texts) if len(words) == 2 else words[1:]
        assert len(codes) == len(texts), f"{name}:{first}: {len(texts)} commands, {directive!r}"
        assert why or "skip" not in codes, f"{name}:{first}: a skip needs its reason"
        for (n, t), code in zip(texts, codes, strict=True):
            skipped = code == "skip"
            found.append(
                Command(name, n, t, None if skipped else int(code), why if skipped else "")
            )
    return found


COMMANDS = [c for doc in DOCS for c in _commands(doc)]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a command run from the repository's root sees, in a copy."""
    base = tmp_path_factory.mktemp("docs")
    root = base / "repo"
    root.mkdir()
    for part in ("policies", "examples"):
        shutil.copytree(ROOT / part, root / part)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (base / "shared").symlink_to(shared)
    return root


RUNNABLE = [c for c in COMMANDS if c.expect is not None]


def test_the_docs_have_commands_to_run() -> None:
    assert len(RUNNABLE) >= 10, [c.id for c in COMMANDS]
    assert any(c.doc == "README.md" and " check " in c.text for c in RUNNABLE)


def test_every_command_not_run_says_why() -> None:
    """Marked in the Markdown, never dropped silently: each has its reason."""
    not_run = [c for c in COMMANDS if c.expect is None]
    assert all(c.why for c in not_run), [c.id for c in not_run if not c.why]


@pytest.mark.parametrize("command", RUNNABLE, ids=[c.id for c in RUNNABLE])
def test_command_runs_as_printed(command: Command, checkout: Path) -> None:
    argv = shlex.split(command.text, comments=True)
    if "../shared/" in command.text:
        conftest.shared_dir("conformance", "cedar")  # skips locally, fails in CI, when absent
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *argv[1:]],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == command.expect, (
        f"{command.id}: {command.text}\nexit {proc.returncode}, documented {command.expect}\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )


def test_check_help_names_only_what_the_example_bundle_has() -> None:
    """`check --help` used System::"payroll", which the example bundle lacks."""
    from sidecar.cli.main import _parser
    from sidecar.core.bundle import load_bundle
    from sidecar.core.model import EntityUid

    check = dict(cli_subcommands(_parser()))["check"]
    refs = re.findall(r'(\w+)::"([^"]+)"', check.format_help().replace("\n", " "))
    assert refs
    bundle = load_bundle(ROOT / "policies")
    known = set(bundle.entity_json) | set(bundle.actions)
    assert [r for r in refs if r != ("Type", "id") and EntityUid(*r) not in known] == []
