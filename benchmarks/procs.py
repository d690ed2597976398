"""Server processes for a benchmark run, started and stopped by the harness."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"


@dataclass(frozen=True, slots=True)
class Running:
    name: str
    target: str
    pid: int


@contextmanager
def python_server(name: str, args: Sequence[str], timeout: float = 60.0) -> Iterator[Running]:
    """`python -m benchmarks.serve ARGS` in a child process, until the block ends."""
    with _child(name, [sys.executable, "-m", "benchmarks.serve", *args], timeout) as run:
        yield run


@contextmanager
def _child(name: str, argv: Sequence[str], timeout: float) -> Iterator[Running]:
    WORK.mkdir(parents=True, exist_ok=True)
    log = (WORK / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
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
        yield Running(name, line[0].split()[1].decode(), proc.pid)
    finally:
        try:
            stdin.close()
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
