"""Build the venvs the orchestrator integration tests run in: .venv-airflow and .venv-prefect.

Why not .venv: each orchestrator brings well over a hundred packages that the
sidecar does not need, and the two orchestrators' own pins need not agree. So
each orchestrator gets its own venv, and the tests run the orchestrator there
as a subprocess against a sidecar running in .venv.

Each venv holds the orchestrator, stepguard's dependencies and stepguard
itself (editable: the tests run the working tree), installed through the real
`stepguard[<name>]` extra and pinned by requirements-<name>.lock. (stepguard
pins cachetools 7.x because prefect 3.9 requires cachetools<8.)

A stamp (a hash of the requirements, the lock and this script) skips the
install when nothing changed, as ./dev does for .venv.

Exit status: 0 when every venv asked for is ready, or when the package
registry refused (then <venv>/.stepguard-refused says why and the tests skip
with that message); 1 on any other failure, with pip's output.

    python scripts/orchestrator_venvs.py [airflow] [prefect]   # default: both
    python scripts/orchestrator_venvs.py --relock prefect      # resolve afresh, rewrite the lock
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAMP = ".stepguard-installed"
REFUSED = ".stepguard-refused"
PIP = ("-m", "pip", "--disable-pip-version-check")
# The pip that ships with the interpreter (23.x) resolves these sets about 1.5x
# slower; the one .venv uses does better.
PIP_VERSION = "pip==26.3"
# pip output that means the registry (or the way to it) said no, as opposed to
# a resolver conflict or a broken build, which must fail loudly.
REGISTRY_REFUSED = re.compile(
    r"No matching distribution found|Could not fetch URL|HTTP error [45]\d\d|"
    r"NewConnectionError|ConnectTimeout|Max retries exceeded|ProxyError|SSLError|"
    r"Temporary failure in name resolution|Name or service not known|Connection refused",
)


@dataclass(frozen=True)
class Spec:
    name: str

    @property
    def venv(self) -> Path:
        return ROOT / f".venv-{self.name}"

    @property
    def lock(self) -> Path:
        return ROOT / f"requirements-{self.name}.lock"


SPECS = {
    "airflow": Spec("airflow"),
    "prefect": Spec("prefect"),
}


def requirements(spec: Spec) -> list[str]:
    """Core dependencies and the orchestrator's extra: what the venv must satisfy."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"][spec.name])


def fingerprint(spec: Spec) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(requirements(spec)).encode())
    digest.update(spec.lock.read_bytes() if spec.lock.exists() else b"no lock")
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


class InstallFailed(Exception):
    def __init__(self, command: list[str], output: str) -> None:
        self.command = command
        self.output = output
        super().__init__(f"{' '.join(command)} failed")


def _run(command: list[str]) -> str:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise InstallFailed(command, output)
    return output


@contextmanager
def _exclusive(spec: Spec) -> Iterator[None]:
    """One builder per venv at a time: others in the same tree run ./dev test too."""
    with (ROOT / f".venv-{spec.name}.flock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(spec: Spec, *, relock: bool = False) -> str:
    """Make the venv current; returns what was done, for the log."""
    stamp = spec.venv / STAMP
    want = fingerprint(spec)
    if not relock and stamp.exists() and stamp.read_text() == want:
        return "up to date"
    started = time.monotonic()
    python = spec.venv / "bin" / "python"
    if not python.exists():
        shutil.rmtree(spec.venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(spec.venv)])
    stamp.unlink(missing_ok=True)
    (spec.venv / REFUSED).unlink(missing_ok=True)
    _run([str(python), *PIP, "install", "-q", PIP_VERSION])
    pinned = [] if relock or not spec.lock.exists() else ["-c", str(spec.lock)]
    _run([str(python), *PIP, "install", "-q", *pinned, "-e", f".[{spec.name}]"])
    if not pinned:
        frozen = _run([str(python), *PIP, "freeze", "--exclude-editable"])
        spec.lock.write_text(frozen)
        want = fingerprint(spec)
    stamp.write_text(want)
    return f"installed in {time.monotonic() - started:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="|".join(SPECS), help="default: all")
    parser.add_argument("--relock", action="store_true", help="resolve afresh, rewrite the lock")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SPECS))
    if unknown:
        parser.error(f"unknown orchestrator(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
    failed = False
    for name in args.names or list(SPECS):
        spec = SPECS[name]
        try:
            with _exclusive(spec):
                print(f"orchestrator venv {spec.venv.name}: {build(spec, relock=args.relock)}")
        except InstallFailed as exc:
            if REGISTRY_REFUSED.search(exc.output):
                spec.venv.mkdir(exist_ok=True)
                reason = next(
                    line.strip()
                    for line in reversed(exc.output.splitlines())
                    if REGISTRY_REFUSED.search(line)
                )
                (spec.venv / REFUSED).write_text(f"{exc}: {reason}\n")
                print(f"orchestrator venv {spec.venv.name}: NOT BUILT, registry refused: {reason}")
                continue
            print(f"orchestrator venv {spec.venv.name}: {exc}\n{exc.output[-4000:]}")
            print(
                f"If a pin in pyproject.toml changed, refresh the lock with "
                f"`./dev orchestrators --relock {name}` and commit {spec.lock.name}."
            )
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
