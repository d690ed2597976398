"""Opening the trail's files: regular files only, never blocking; directories 0750.

A FIFO (or a device) left under the name of a segment, the head anchor, a
checkpoint file or the key would make a plain `open()` or `read()` wait
forever: `serve` would hang at start and `audit verify` / `query` with it,
with nothing logged. So every file of the trail is opened with O_NONBLOCK and
checked with fstat before any read or write, and anything but a regular file
is refused by name. (A FIFO opened for writing with no reader fails with
ENXIO at once under O_NONBLOCK; the path is then looked at to say why.)

Directories the trail creates are 0750 whatever the umask: `mkdir`'s mode is
filtered by the umask, so each one is chmod'ed after it is made.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o750
FILE_MODE = 0o640


class NotRegularFile(OSError):
    """A path that should hold a regular file and does not: refused, never read or written."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def refusal(path: Path | str, mode: int) -> NotRegularFile:
    return NotRegularFile(
        f"{path} is {_kind(mode)}, not a regular file: refusing to open it "
        "(move it aside; the trail's files are only ever regular files)"
    )


def open_regular(path: Path | str, flags: int, mode: int = FILE_MODE) -> int:
    """`os.open` that never blocks and returns only a regular file's descriptor.

    Raises NotRegularFile for anything else, and OSError as `os.open` does.
    The descriptor is blocking again when returned (it makes no difference to a
    regular file, but nothing downstream expects O_NONBLOCK).
    """
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, mode)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EWOULDBLOCK):
            try:
                st = os.stat(path)
            except OSError:
                raise exc from None
            if not stat.S_ISREG(st.st_mode):
                raise refusal(path, st.st_mode) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refusal(path, st.st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_read(path: Path | str) -> BinaryIO:
    """A regular file opened for reading (buffered), or NotRegularFile / OSError."""
    return os.fdopen(open_regular(path, os.O_RDONLY), "rb")


def make_dirs(path: Path) -> None:
    """Create `path` and its missing parents with mode 0750, whatever the umask.

    Directories that already exist are left as they are (their owner chose).
    """
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if directory.is_dir():
                continue
            raise
        os.chmod(directory, DIR_MODE)
