"""`stepguard fmt`: rewrite policy files in Cedar's canonical format (`fmt --check` for CI).

sidecar/authoring/fmt.py formats (and refuses a rewrite that would change
what the policies mean or drop a comment); this command picks the files,
prints what changed and exits 0, 3 (`--check`: unformatted files) or 4 (a
file does not parse).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

from sidecar.authoring.fmt import format_file, policy_files, write_atomically
from sidecar.cli.exitcodes import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from sidecar.core.textsafe import escape, escape_lines


def register(sub: Any) -> None:
    """Add `stepguard fmt` to the CLI."""
    cmd = sub.add_parser(
        "fmt",
        help="rewrite policies in Cedar's canonical format (--check: only report)",
        description="Format *.cedar files. Exit codes: 0 formatted (or nothing to do), "
        "3 with --check: some files are not formatted, 4 a file does not parse.",
    )
    cmd.add_argument("paths", nargs="*", type=Path, help="files or directories (policies)")
    cmd.add_argument("--check", action="store_true", help="change nothing; exit 3 if unformatted")
    cmd.add_argument("--diff", action="store_true", help="print what would change")
    cmd.add_argument("--line-width", type=int, default=80, help="wrap at (default 80)")
    cmd.add_argument("--indent-width", type=int, default=2, help="indent by (default 2)")
    cmd.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    files = policy_files(args.paths or [Path("policies")])
    results = [format_file(p, args.line_width, args.indent_width) for p in files]
    broken = [r for r in results if r.error]
    changed = [r for r in results if r.changed]
    for r in broken:
        print(escape_lines(r.error), file=sys.stderr)
    for r in changed:
        if args.diff:
            # A bidi override in a policy (Trojan Source) shows as \u202e, not reordered text.
            sys.stdout.writelines(
                escape_lines(line)
                for line in difflib.unified_diff(
                    r.original.splitlines(keepends=True),
                    r.formatted.splitlines(keepends=True),
                    f"{r.path} (current)",
                    f"{r.path} (formatted)",
                )
            )
        if args.check:
            print(f"would reformat {escape(r.path)}")
        else:
            write_atomically(r.path, r.formatted)
            print(f"reformatted {escape(r.path)}")
    verb = "would be left" if args.check else "left"
    print(
        f"{len(files)} file(s): {len(changed)} {'unformatted' if args.check else 'reformatted'}, "
        f"{len(files) - len(changed) - len(broken)} {verb} unchanged, {len(broken)} not parsed",
        file=sys.stderr,
    )
    if broken:
        return EXIT_INVALID
    if args.check and changed:
        return EXIT_FAILED
    return EXIT_OK
