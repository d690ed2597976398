"""The store's trails laid out as files, for the readers that verify and query trails.

`audit verify --store`, `audit query --store` and `evidence --store` give the
same answers as on the files the records came from because they run the same
code on the same bytes: each sidecar's chains are written back into a
directory of their own (`<dir>/<sidecar>/`), each record's line verbatim in
the segment it was shipped from (the highest segment is the active file
`NAME`, the others `NAME.000001`...), with the workers manifest when one was
shipped. Head anchors are not shipped (a trail's end is checked by the
collectors' continuity watermark instead), so the readers run with
`--accept-missing-anchor`, and say so under `not checked`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

from sidecar.audit.files import make_dirs
from sidecar.fleet import store
from sidecar.fleet.wire import check_sidecar


def materialize(
    conn: psycopg.Connection[Any], dest: Path, sidecars: list[str] | None = None
) -> list[Path]:
    """Write the trails of `sidecars` (default: all) under `dest`; their directories."""
    dirs: list[Path] = []
    for sidecar in sidecars or store.sidecars(conn):
        out = dest / check_sidecar(sidecar)
        make_dirs(out)
        for chain in store.chains(conn, sidecar):
            _write_chain(conn, out, sidecar, chain)
        found = store.manifest(conn, sidecar)
        if found is not None:
            trail, content = found
            name = Path(trail).name.removesuffix(".jsonl") + ".workers.json"
            (out / name).write_bytes(content)
        dirs.append(out)
    return dirs


def _write_chain(conn: psycopg.Connection[Any], out: Path, sidecar: str, chain: str) -> None:
    name = Path(chain).name  # a plain file name (wire.envelope refuses '/')
    current: int | None = None
    f = None
    written: list[tuple[int, Path]] = []
    try:
        for segment, line in store.lines(conn, sidecar, chain):
            if segment != current:
                if f is not None:
                    f.close()
                current = segment
                path = out / f"{name}.{segment:06d}"
                written.append((segment, path))
                f = path.open("ab")
            assert f is not None
            f.write(line + b"\n")
    finally:
        if f is not None:
            f.close()
    if written:  # the last segment is the active file, as on the sidecar
        os.replace(written[-1][1], out / name)
