"""Which files make up a policy bundle, and reading them without surprises.

The loader, the watcher, `validate`, `fmt` and `test` all list a directory
the same way (`list_bundle`), so they see what loads; hot reload and
`test --watch` notice a change by the same listing (`fingerprint`):

- Entries whose name starts with a dot are skipped (a ConfigMap's `..data`
  and its timestamped directories are reached through the key symlinks).
- Symbolic links are followed, to files and to directories (a ConfigMap item
  with `path: team/deny.cedar` becomes `team -> ..data/team`), as long as they
  lead to somewhere inside the bundle's own directory. A link leading outside
  it is an error: the bundle is what is under its root, nothing else.
- A bundle file (`*.cedar`, the schema, entity data, the manifest) that is
  not a readable regular file (a dangling link, a FIFO, a socket, a device,
  a directory) is an error, never silently skipped: a forbid that is not
  loaded is an ALLOW. Files are opened non-blocking and checked with fstat,
  so a FIFO cannot hang the loader.
- An optional manifest, `bundle.sha256` at the top (`sha256sum` format), lists
  every bundle file with its digest. When it is present, a bundle loads only
  if every bundle file is listed and every listed file has its digest: a
  directory that is still being copied is refused, not half loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.core.errors import BundleError

MANIFEST = "bundle.sha256"
MAX_DIR_DEPTH = 32  # the walk recurses per level
SCHEMA_SUFFIXES = (".cedarschema", ".cedarschema.json")


# What a request may say about entities the store lacks (bundle.py, docs/api.md).
REQUEST_ENTITIES_FILE = "request-entities.yaml"
# Which steps create access and which remove it (lifecycle.py, docs/evidence.md).
LIFECYCLE_FILE = "lifecycle.yaml"


@dataclass(frozen=True, slots=True)
class Source:
    """One input file: its name (relative path) and text."""

    name: str
    text: str


def is_entity_name(name: str) -> bool:
    """Entity data: `entities.json` or `<anything>.entities.json`."""
    return name == "entities.json" or name.endswith(".entities.json")


def is_bundle_file(name: str) -> bool:
    """Is a file of this name read by the loader (policies, schema, entities,
    request-entities.yaml, lifecycle.yaml, manifest)?"""
    return (
        name.endswith((".cedar", *SCHEMA_SUFFIXES))
        or is_entity_name(name)
        or name in (MANIFEST, REQUEST_ENTITIES_FILE, LIFECYCLE_FILE)
    )


@dataclass(frozen=True, slots=True)
class Listing:
    """Regular files under a bundle's root, in path order, and the entries refused."""

    root: Path
    files: list[Path] = field(default_factory=list)
    problems: list[BundleError] = field(default_factory=list)


def list_bundle(directory: Path) -> Listing:
    """Walk `directory` as the loader does (see the module docstring)."""
    listing = Listing(directory)
    root_real = os.path.realpath(directory)
    _walk(listing, directory, "", root_real, (root_real,))
    listing.files.sort()
    return listing


def visible_files(directory: Path) -> list[Path]:
    """The regular files the loader considers, in path order (refused entries left out)."""
    return list_bundle(directory).files


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _walk(
    listing: Listing, path: Path, rel: str, root_real: str, ancestors: tuple[str, ...]
) -> None:
    try:
        names = sorted(e.name for e in os.scandir(path))
    except OSError as exc:
        listing.problems.append(BundleError(f"cannot list directory: {exc}", file=rel or "."))
        return
    for name in names:
        if name.startswith("."):
            continue
        child = path / name
        child_rel = f"{rel}/{name}" if rel else name
        wanted = is_bundle_file(name)
        real = os.path.realpath(child)
        try:
            st = os.stat(child)
        except OSError as exc:
            if wanted:
                why = "a dangling symbolic link" if os.path.islink(child) else str(exc)
                listing.problems.append(BundleError(f"cannot be read: {why}", file=child_rel))
            continue
        if stat.S_ISDIR(st.st_mode):
            if not _inside(real, root_real):
                listing.problems.append(
                    BundleError(
                        f"symbolic link to {real} leads outside the policy directory; "
                        "only links within the bundle are followed",
                        file=child_rel,
                    )
                )
            elif len(ancestors) > MAX_DIR_DEPTH:
                listing.problems.append(
                    BundleError(f"directories nest more than {MAX_DIR_DEPTH} deep", file=child_rel)
                )
            elif real in ancestors:
                listing.problems.append(
                    BundleError(
                        "symbolic link loop (links to a directory above it)", file=child_rel
                    )
                )
            else:
                _walk(listing, child, child_rel, root_real, (*ancestors, real))
            continue
        if not wanted:
            if stat.S_ISREG(st.st_mode) and _inside(real, root_real):
                listing.files.append(child)
            continue
        if not _inside(real, root_real):
            listing.problems.append(
                BundleError(
                    f"symbolic link to {real} leads outside the policy directory; "
                    "only links within the bundle are followed",
                    file=child_rel,
                )
            )
        elif not stat.S_ISREG(st.st_mode):
            listing.problems.append(
                BundleError(f"is not a regular file ({_kind(st.st_mode)})", file=child_rel)
            )
        else:
            listing.files.append(child)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


def read_bytes(path: Path, name: str) -> bytes:
    """The bytes of a regular file; opened non-blocking, so a FIFO swapped in cannot hang."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror or exc}", file=name) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"is not a regular file ({_kind(st.st_mode)})", file=name)
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror or exc}", file=name) from exc
    finally:
        os.close(fd)


def read_text(path: Path, name: str) -> str:
    data = read_bytes(path, name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(
            f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})", file=name
        ) from exc


_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def check_manifest(
    text: str, digests: dict[str, str], other: Callable[[str], bytes | None]
) -> None:
    """Refuse the bundle unless `text` (the manifest) lists exactly the bundle files read.

    `digests` maps every bundle file (relative path, `/`-separated) to the
    sha256 of the bytes that were read and will be parsed; `other` reads any
    other file the manifest lists (None: not in the directory).
    """
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_LINE.fullmatch(line.rstrip("\r"))
        if not m:
            raise BundleError(
                "expected `<sha256>  <path>` lines, as `sha256sum` writes them",
                file=MANIFEST,
                line=number,
            )
        listed[m.group(2).removeprefix("./")] = m.group(1).lower()
    for name, digest in digests.items():
        if name not in listed:
            raise BundleError(
                f"{name} is not listed in {MANIFEST}: the bundle is incomplete or still "
                "being published; write the manifest last",
                file=name,
            )
        if listed[name] != digest:
            raise BundleError(
                f"sha256 differs from {MANIFEST}: the bundle is still being published "
                "or was changed without updating the manifest",
                file=name,
            )
    for name in sorted(set(listed) - set(digests)):
        data = other(name)
        if data is not None and sha256(data) != listed[name]:
            raise BundleError(
                f"sha256 differs from {MANIFEST}: the bundle is still being published "
                "or was changed without updating the manifest",
                file=name,
            )
    missing = sorted(n for n in set(listed) - set(digests) if other(n) is None)
    if missing:
        raise BundleError(
            f"{MANIFEST} lists {', '.join(missing)}, which the directory does not hold (yet)",
            file=MANIFEST,
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(directory: Path) -> str:
    """Hash of the names and contents of every file the loader would read."""
    if not directory.is_dir():
        return "absent"
    digest = hashlib.sha256()
    try:
        listing = list_bundle(directory)
    except Exception as exc:  # noqa: BLE001 - e.g. the tree changed while it was listed;
        return f"unlistable: {exc}"  # the load that follows reports it
    for path in listing.files:
        name = str(path.relative_to(directory)).encode()
        try:
            data = read_bytes(path, path.name)  # non-blocking: a FIFO swapped in cannot hang
        except BundleError:
            data = b"\0unreadable"
        for part in (name, data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    for problem in listing.problems:  # a refused entry appearing or going away is a change
        digest.update(str(problem).encode())
    return digest.hexdigest()
