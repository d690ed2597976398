"""Verifying a trail of many workers' chains as one trail (`stepguard audit verify`).

Each chain is verified on its own, exactly as a one-process trail is
(verify.py): a break in one is reported under that chain's file and exits
with its kind's code. On top of that, the trail as a whole (workers.py) must
hold every chain its manifest lists, and its manifest must be there:

    missing   (exit 8) a chain listed in the manifest has no segment on disk
              (deleted whole, or only its head anchor is left); a chain a
              segment header's `workers` implies is neither on disk nor
              listed (deleted, and the manifest rewritten); or there are
              worker chains but no manifest
    modified  (exit 3) the manifest is unreadable
    inserted  (exit 5) a worker chain on disk that the manifest does not list

A trail of one chain has no such findings: it verifies as it always did.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.audit.chain import BadRecord, parse_line
from sidecar.audit.files import open_read
from sidecar.audit.segments import Trail
from sidecar.audit.verify import OnRecord, Problem, Report, verify
from sidecar.audit.workers import TrailSet, manifest_path
from sidecar.core.progress import Progress
from sidecar.core.workernames import worker_path


def set_findings(trails: TrailSet) -> list[Report]:
    """What the trail as a whole lacks (one report per finding); [] for a single chain."""
    if not trails.multi:
        return []
    found: list[Report] = []
    manifest = trails.manifest or manifest_path(Path(trails.name))
    if trails.manifest_error:
        found.append(_finding(trails, str(manifest), "modified", trails.manifest_error))
    elif trails.manifest is None:
        names = ", ".join(Path(c.name).name for c in trails.chains if c.worker is not None)
        found.append(
            _finding(
                trails,
                str(manifest),
                "missing",
                f"the trail has worker chains ({names}) but no workers manifest: it was "
                "deleted or moved, so a chain deleted whole could not be noticed; restore "
                "it (from a backup, or by starting the workers again on this directory)",
            )
        )
    for name in trails.missing:
        found.append(
            _finding(
                trails,
                str(Path(trails.name).with_name(name)),
                "missing",
                f"chain {name} is listed in the workers manifest {manifest} but none of its "
                "segments is on disk: a worker's chain was deleted or moved away, and every "
                "record it held is missing",
            )
        )
    claimed, where = _claimed_workers(trails)
    present = {Path(c.name).name for c in trails.chains if c.segments}
    known = present | set(trails.missing)
    for i in range(claimed):
        name = worker_path(Path(trails.name), i).name
        if name not in known:
            found.append(
                _finding(
                    trails,
                    str(Path(trails.name).with_name(name)),
                    "missing",
                    f"chain {name} is not on disk, and the workers manifest does not list "
                    f"it, but the segment header at {where} says {claimed} workers wrote "
                    "this trail: a worker's chain was deleted and the manifest rewritten",
                )
            )
    for name in trails.unlisted:
        found.append(
            _finding(
                trails,
                str(Path(trails.name).with_name(name)),
                "inserted",
                f"chain {name} is not listed in the workers manifest {manifest}: no worker "
                "of this trail announced it (written by something else, or the manifest "
                "was rewritten)",
            )
        )
    return found


def _claimed_workers(trails: TrailSet) -> tuple[int, str]:
    """The most workers any segment header of the trail names, and where: the chains
    say how many of them there are, whatever the manifest says. Only first lines are read."""
    best, where = 0, ""
    for chain in trails.chains:
        for segment in chain.segments:
            try:
                with open_read(segment) as f:
                    header = parse_line(f.readline(1 << 16).rstrip(b"\n"))
            except (OSError, BadRecord):
                continue  # the chain's own walk reports it
            workers = header.body.get("workers") if header.kind == "segment" else None
            if isinstance(workers, int) and not isinstance(workers, bool) and workers > best:
                best, where = workers, f"{segment}:1"
    return best, where


def _finding(trails: TrailSet, file: str, kind: str, message: str) -> Report:
    return Report(file, problem=Problem(kind, file, 0, message), part_of=trails.name)


def chains_to_verify(trails: TrailSet) -> list[Trail]:
    """The chains to walk: every one with segments (a missing one is a finding instead)."""
    skip = set(trails.unlisted)
    missing = set(trails.missing)
    return [
        c
        for c in trails.chains
        if Path(c.name).name not in skip and (c.segments or Path(c.name).name not in missing)
    ]


def checkpoints_of(checkpoints: Path | None, chain: Trail) -> Path | None:
    """The checkpoint file of a chain: `CP` for the trail's own, `CP.w<i>...` for worker i's."""
    if checkpoints is None or chain.worker is None:
        return checkpoints
    return worker_path(checkpoints, chain.worker)


def verify_chain(
    trails: TrailSet,
    chain: Trail,
    key: bytes | None = None,
    *,
    partial: bool = False,
    accept_missing_anchor: bool = False,
    checkpoints: Path | None = None,
    progress: Progress | None = None,
    on_record: OnRecord | None = None,
) -> Report:
    """verify.verify on one chain of the trail, with that chain's checkpoint file.

    A chain named alone by its own file is pinned by the checkpoint file given,
    as is; for a whole trail, `CP` names each worker's own `CP.w<i>...`.
    """
    report = verify(
        chain,
        key,
        partial=partial,
        accept_missing_anchor=accept_missing_anchor,
        checkpoints=checkpoints if trails.alone else checkpoints_of(checkpoints, chain),
        progress=progress,
        on_record=on_record,
    )
    if trails.multi:
        report.part_of = trails.name
    return report


def verify_set(
    trails: TrailSet,
    key: bytes | None = None,
    *,
    partial: bool = False,
    accept_missing_anchor: bool = False,
    checkpoints: Path | None = None,
) -> list[Report]:
    """Every finding about the trail as a whole, then one report per chain, in chain order.

    Raises StepguardError as verify.verify does (a chain that cannot be read at all).
    """
    reports = set_findings(trails)
    for chain in chains_to_verify(trails):
        reports.append(
            verify_chain(
                trails,
                chain,
                key,
                partial=partial,
                accept_missing_anchor=accept_missing_anchor,
                checkpoints=checkpoints,
            )
        )
    return reports
