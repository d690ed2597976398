"""One trail from many workers: a chain per worker, a manifest, and reading them as one.

With `serve --workers N` (N > 1) and `--audit-file DIR/audit.jsonl`, worker i
writes a full trail of its own, `DIR/audit.w<i>.jsonl` (its segments
`audit.w<i>.jsonl.000001`..., head anchor, checkpoints `CP.w<i>...`, hash
chain): no lock between processes on the decision path. With one worker the
trail is `DIR/audit.jsonl`, as it always was. Each worker also keeps the
manifest `DIR/audit.workers.json` current before its first record:

    {"chains":["audit.w0.jsonl","audit.w1.jsonl"],"history":[{"since":"…","workers":2}],
     "since":"…","trail":"audit.jsonl","workers":2}

`chains` only grows: the chains of an earlier, larger N still belong to the
trail, so a chain deleted whole is a finding for `audit verify` (a chain
missing from disk, or worker chains without their manifest, exit 8). The
manifest is written atomically (a temporary file, fsync, rename, fsync of the
directory) and only when it changes, so workers starting together may all
write it: each computes the same content from the same N.

The readers (`audit verify`, `audit query`, `replay`) take `DIR/audit.jsonl`
or DIR and find the chains through the manifest and by name (`collect_sets`);
`merged` orders records across chains by time, then chain, then seq.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sidecar.audit.chain import canonical
from sidecar.audit.files import make_dirs, open_read, open_regular
from sidecar.audit.segments import (
    MANIFEST_SUFFIX,
    Trail,
    base_of,
    collect,
    fsync_dir,
    trail_of,
    write_all,
)
from sidecar.core.errors import ConfigError, StepguardError
from sidecar.core.event import timestamp
from sidecar.core.workernames import worker_path

_WORKER = re.compile(r"^(?P<stem>.+)\.w(?P<n>\d{1,6})(?P<suffix>\.[^.]*)?$")
T = TypeVar("T")


def _split(name: str) -> tuple[str, str]:
    """(stem, suffix) of a trail's file name: `audit.jsonl` is (`audit`, `.jsonl`)."""
    suffix = Path(name).suffix
    return (name[: -len(suffix)], suffix) if suffix else (name, "")


def manifest_path(path: Path) -> Path:
    """The manifest of the trail `path`: `audit.jsonl` has `audit.workers.json`."""
    stem, _ = _split(path.name)
    return path.with_name(stem + MANIFEST_SUFFIX)


def worker_of(path: Path) -> tuple[Path, int] | None:
    """(trail path, worker) when `path` names a worker's chain (`audit.w3.jsonl`), else None."""
    m = _WORKER.match(path.name)
    if m is None:
        return None
    return path.with_name(m["stem"] + (m["suffix"] or "")), int(m["n"])


def chain_path(path: Path, worker: int | None, workers: int | None) -> Path:
    """The file a sink writes: the trail itself with one worker, else worker `worker`'s chain.

    ConfigError when the pair makes no sense (a worker index outside 0..workers-1).
    """
    if workers is None or workers <= 1:
        if worker not in (None, 0):
            raise ConfigError(f"audit trail: worker {worker} given, but only one worker runs")
        return path
    if worker is None or not 0 <= worker < workers:
        raise ConfigError(f"audit trail: worker must be 0..{workers - 1} with {workers} workers")
    return worker_path(path, worker)


# --- the manifest ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    trail: str
    workers: int
    chains: tuple[str, ...]
    since: str
    history: tuple[dict[str, Any], ...]


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at `path`, None when there is none; StepguardError if it is unreadable."""
    try:
        with open_read(path) as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StepguardError(f"{path}: cannot read the workers manifest: {exc}") from exc
    try:
        obj = json.loads(data)
        workers, chains = obj["workers"], obj["chains"]
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise TypeError("workers is not a positive integer")
        if not isinstance(chains, list) or not all(isinstance(c, str) for c in chains):
            raise TypeError("chains is not a list of file names")
        if any("/" in c or c in ("", ".", "..") for c in chains):
            raise TypeError("a chain is not a plain file name")
        history = obj.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise TypeError("history is not a list of objects")
        return Manifest(
            path,
            str(obj.get("trail", "")),
            workers,
            tuple(chains),
            str(obj.get("since", "")),
            tuple(history),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StepguardError(f"{path}: the workers manifest is unreadable: {exc}") from exc


def ensure_manifest(trail: Path, workers: int, *, worker: int = 0) -> Manifest:
    """List the chains of `workers` workers in the trail's manifest, keeping earlier ones.

    Idempotent: nothing is written when N and every chain are already there.
    Otherwise the new manifest replaces the old one atomically (never half
    written, durable once this returns). ConfigError when the old one cannot
    be read: nothing is guessed about which chains belong to the trail.
    """
    path = manifest_path(trail)
    try:
        make_dirs(path.parent)
        old = read_manifest(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the audit directory {path.parent}: {exc}") from exc
    except StepguardError as exc:
        raise ConfigError(
            f"{exc}; the trail is not written until an operator has looked "
            "(`stepguard audit verify` on the directory, docs/audit.md)"
        ) from exc
    wanted = [worker_path(trail, i).name for i in range(workers)]
    if old is not None and old.workers == workers and set(wanted) <= set(old.chains):
        return old
    chains = sorted(set(wanted) | set(old.chains if old else ()), key=_chain_order)
    now = timestamp(datetime.now(UTC))
    history = [*(old.history if old else ()), {"since": now, "workers": workers}]
    body = {
        "chains": chains,
        "history": history,
        "since": now,
        "trail": trail.name,
        "workers": workers,
    }
    try:
        _write_atomically(path, canonical(body) + b"\n", f"{os.getpid()}-{worker}")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the workers manifest {path}: {exc}; the workers' chains are "
            "not written without it (a chain deleted whole could not be noticed)"
        ) from exc
    return Manifest(path, trail.name, workers, tuple(chains), now, tuple(history))


def _chain_order(name: str) -> tuple[int, str]:
    found = worker_of(Path(name))
    return (found[1] if found else -1), name


def _write_atomically(path: Path, data: bytes, tag: str) -> None:
    """tmp file, write, fsync, rename over `path`, fsync the directory: readers see the
    old manifest or the new one, whole. A failure leaves the old one and no tmp file."""
    tmp = path.with_name(f"{path.name}.tmp-{tag}")
    try:
        fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


# --- the readers' side ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrailSet:
    """One trail as its writers left it: one chain, or a chain per worker (and the trail's
    own chain, from runs with one worker), with what the manifest says should be there."""

    name: str  # the trail's path: DIR/audit.jsonl
    chains: tuple[Trail, ...]  # the trail's own chain first, then by worker
    manifest: Path | None = None  # when there is one on disk
    listed: tuple[str, ...] = ()  # the chains the manifest names
    manifest_error: str = ""  # the manifest is there but unreadable
    # One worker's chain named by one of its own files: that chain is checked on its
    # own, so what the rest of the trail lacks is not its finding.
    alone: bool = False

    @property
    def multi(self) -> bool:
        """More than the single chain of a one-process trail."""
        if self.alone:
            return False
        return self.manifest is not None or any(c.worker is not None for c in self.chains)

    @property
    def missing(self) -> tuple[str, ...]:
        """Chains the manifest lists that have no segment on disk (deleted, or never kept)."""
        present = {Path(c.name).name for c in self.chains if c.segments}
        return tuple(name for name in self.listed if name not in present)

    @property
    def unlisted(self) -> tuple[str, ...]:
        """Worker chains on disk that the manifest does not name."""
        if self.manifest is None or self.manifest_error:
            return ()
        listed = set(self.listed)
        return tuple(
            Path(c.name).name
            for c in self.chains
            if c.worker is not None and Path(c.name).name not in listed
        )


def collect_sets(paths: Iterable[Path]) -> list[TrailSet]:
    """The trails named by PATHs, each with all its chains.

    A directory is every trail in it; `DIR/audit.jsonl` is that trail with its
    worker chains and manifest (it may hold no file of its own); a worker's
    chain named by one of its own files (`audit.w1.jsonl`) is that chain alone.
    """
    order: dict[Path, None] = {}
    alone: list[TrailSet] = []
    for path in paths:
        if path.is_dir():
            for trail in collect([path]):
                order[_owner(Path(trail.name))] = None
            for entry in sorted(path.iterdir()):
                if entry.name.endswith(MANIFEST_SUFFIX) and not entry.is_dir():
                    order[_manifest_trail(entry)] = None
            continue
        if path.name.endswith(MANIFEST_SUFFIX):  # the manifest: its trail
            order[_manifest_trail(path)] = None
            continue
        chain = base_of(path)
        owner = worker_of(chain) if chain is not None else None
        if chain is not None and owner is not None:
            for trail in collect([path]):
                one = Trail(trail.name, trail.segments, trail.head, owner[1])
                alone.append(TrailSet(trail.name, (one,), alone=True))
            continue
        if not (path.exists() or manifest_path(path).exists() or _worker_chains(path)):
            collect([path])  # the trail's own rotated segments, or "no such file"
        order[path] = None
    return [*(_set_of(base) for base in order), *alone]


def _owner(chain: Path) -> Path:
    """The trail a chain belongs to: its own path, or the trail of a worker's chain."""
    found = worker_of(chain)
    return found[0] if found else chain


def _manifest_trail(manifest: Path) -> Path:
    """The trail a manifest belongs to: its `trail` field, else a guess from its name."""
    try:
        found = read_manifest(manifest)
    except StepguardError:
        found = None
    if found is not None and found.trail and "/" not in found.trail:
        return manifest.with_name(found.trail)
    return manifest.with_name(manifest.name.removesuffix(MANIFEST_SUFFIX) + ".jsonl")


def _worker_chains(base: Path) -> dict[int, Path]:
    """Worker chains of the trail `base` found on disk by name (any of their files)."""
    if not base.parent.is_dir():
        return {}
    found: dict[int, Path] = {}
    for entry in base.parent.iterdir():
        chain = base_of(entry)
        owner = worker_of(chain) if chain is not None else None
        if chain is not None and owner is not None and owner[0] == base:
            found[owner[1]] = chain
    return found


def _set_of(base: Path) -> TrailSet:
    chains: list[Trail] = []
    own = trail_of(base)
    if own.segments or own.head is not None:
        chains.append(own)
    manifest = manifest_path(base)
    listed: tuple[str, ...] = ()
    error = ""
    present = manifest.exists() or manifest.is_symlink()
    if present:
        try:
            found = read_manifest(manifest)
        except StepguardError as exc:
            error = str(exc)
        else:
            listed = found.chains if found is not None else ()
    on_disk = _worker_chains(base)
    for name in listed:
        owner = worker_of(base.with_name(name))
        if owner is not None and owner[0] == base:
            on_disk.setdefault(owner[1], base.with_name(name))
    for worker, path in sorted(on_disk.items()):
        chain = trail_of(path)
        chains.append(Trail(chain.name, chain.segments, chain.head, worker))
    return TrailSet(str(base), tuple(chains), manifest if present else None, listed, error)


# --- one order over many chains -------------------------------------------------------


def merged(
    sources: Sequence[Iterable[T]], time_of: Callable[[T], str], seq_of: Callable[[T], int]
) -> Iterator[T]:
    """The items of every source (one per chain, each in chain order) as one stream, by
    (time, chain, seq); streams, holding one item per chain.

    A chain's records keep their order: a record a little earlier than the one
    before it in its own chain (a decision that started first but committed
    second) is ordered at that one's time, and a record `time_of` gives no
    time ("": a segment header, a shutdown) at the time of the one before it.
    So each chain's keys never go down, and the merge is exact and deterministic.
    """

    def keyed(index: int, items: Iterable[T]) -> Iterator[tuple[str, int, int, T]]:
        latest = ""
        for item in items:
            latest = max(latest, time_of(item))
            yield latest, index, seq_of(item), item

    if len(sources) == 1:
        yield from sources[0]
        return
    streams = [keyed(i, s) for i, s in enumerate(sources)]
    for *_, item in heapq.merge(*streams, key=lambda k: k[:3]):
        yield item
