"""What the figures were measured on."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, str]:
    from sidecar.serving.config import usable_cores  # serve --workers' default

    return {
        "nproc": str(os.cpu_count()),
        "usable_cores": str(usable_cores()),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "cedarpy": _version("cedarpy"),
    }


def loadavg() -> str:
    """1, 5 and 15 minute load averages: other work sharing the machine shows here."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


# What the benchmarks write: not code, so a change there does not make a run "dirty".
OUTPUTS = ("benchmarks/RESULTS.md", "benchmarks/latency.png", "benchmarks/data")


def commit() -> str:
    """The commit the figures were measured on (`+dirty` when the code had changes: the
    benchmarks' own outputs, written by an earlier command of the same session, do not
    count)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                *(f":(exclude){path}" for path in OUTPUTS),
            ],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
