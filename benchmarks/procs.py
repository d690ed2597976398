"""Server processes for a benchmark run, started and stopped by the harness."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"


@dataclass(frozen=True, slots=True)
class Running:
    name: str
    target: str  # TCP loopback, HOST:PORT
    unix: str  # unix:PATH, or "-" when the server has no socket
    pid: int


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc), in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextmanager
def python_server(name: str, args: Sequence[str], timeout: float = 120.0) -> Iterator[Running]:
    """`python -m benchmarks.serve ARGS` in a child process, until the block ends.

    The child prints `READY <tcp> <unix or ->` once it serves, and stops when
    its stdin closes.
    """
    WORK.mkdir(parents=True, exist_ok=True)
    log = (WORK / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serve", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    stdout, stdin = proc.stdout, proc.stdin
    assert stdout is not None and stdin is not None
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    try:
        if not line or not line[0].startswith(b"READY "):
            raise RuntimeError(f"{name} did not start (see {WORK / (name + '.log')}): {line[:1]!r}")
        _, tcp, unix = line[0].decode().split()
        yield Running(name, tcp, unix, proc.pid)
    finally:
        try:
            stdin.close()
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def process(
    name: str, argv: Sequence[str], ready: Callable[[], bool], timeout: float = 60.0
) -> Iterator[int]:
    """Any server binary, until the block ends; `ready()` says when it serves."""
    WORK.mkdir(parents=True, exist_ok=True)
    log = (WORK / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, cwd=WORK, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start (see {WORK / (name + '.log')})")
            time.sleep(0.2)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()
        log.close()
