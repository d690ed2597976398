"""`--store postgresql://...` for the commands that read trails (audit verify, audit query,
evidence): the store's trails laid out as files (sidecar/fleet/export.py) in a temporary
directory, then read by the very same code as trails on disk, so the answers are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sidecar.core.errors import StepguardError


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="postgresql://...",
        help="read the trails the fleet's collectors wrote to this PostgreSQL store instead "
        "of PATHs (or STEPGUARD_STORE with no PATH; docs/fleet.md); head anchors are not "
        "shipped, so --accept-missing-anchor is implied",
    )
    parser.add_argument(
        "--sidecar",
        action="append",
        default=[],
        help="with --store: only this sidecar's trail (repeatable; default: every sidecar)",
    )


@contextlib.contextmanager
def trail_paths(args: argparse.Namespace) -> Iterator[list[Path]]:
    """The PATHs to read: those given, or the store's trails written to a temp dir."""
    dsn = args.store or (os.environ.get("STEPGUARD_STORE", "") if not args.paths else "")
    if dsn and args.paths:
        raise StepguardError("give PATHs or --store, not both")
    if not dsn:
        if not args.paths:
            raise StepguardError("give a trail's PATH, or --store postgresql://...")
        yield list(args.paths)
        return
    from sidecar.fleet import export, store

    top = Path(tempfile.mkdtemp(prefix="stepguard-store-"))
    try:
        with store.connect(dsn) as conn:
            dirs = export.materialize(conn, top, args.sidecar or None)
        if not dirs:
            raise StepguardError("nothing to read: the store holds no trail")
        args.accept_missing_anchor = True
        yield dirs
    finally:
        shutil.rmtree(top, ignore_errors=True)
        sys.stdout.flush()
