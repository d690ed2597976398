"""Bundle load time and peak memory against bundle size (issue 27, point 11).

    .venv/bin/python -m benchmarks.bundle_load [--sizes-mb 1 10 100] [--timeout 900]

For each size a bundle is generated in a temporary directory: the example
bundle's schema and entities, and copies of its policies (each with a fresh
`@id`, so every policy is distinct and validates) split into files of about
256 KiB. Each size is then loaded by `sidecar.core.bundle.load_bundle` in a fresh
child process (what `serve` and `validate` do at start-up), which reports the
wall time of the load and its peak RSS (`ru_maxrss`), next to the RSS of the
same process after imports, before the load. A size that does not finish
within `--timeout` seconds, or runs out of memory, is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.results import save_data, write_block

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "policies"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
FILE_BYTES = 256 * 1024
_ID = re.compile(r'@id\("([^"]*)"\)')


def _renumbered(text: str, n: int) -> str:
    """`text` with every `@id("x")` made `@id("x-n")`."""
    return _ID.sub(lambda m: f'@id("{m.group(1)}-{n}")', text)


def generate(root: Path, size_bytes: int) -> tuple[int, int]:
    """Write a bundle of about `size_bytes` of policy text; returns (policies, bytes)."""
    root.mkdir(parents=True)
    shutil.copy(EXAMPLE / "schema.cedarschema", root)
    shutil.copy(EXAMPLE / "entities.json", root)
    templates = [p.read_text() for p in sorted(EXAMPLE.glob("*.cedar"))]
    per_copy = sum(len(_ID.findall(t)) for t in templates)
    written = copies = files = 0
    chunk: list[str] = []
    chunk_bytes = 0
    while written < size_bytes:
        for text in templates:
            body = _renumbered(text, copies)
            chunk.append(body)
            chunk_bytes += len(body)
            written += len(body)
        copies += 1
        if chunk_bytes >= FILE_BYTES or written >= size_bytes:
            (root / f"generated_{files:05d}.cedar").write_text("\n".join(chunk))
            files += 1
            chunk, chunk_bytes = [], 0
    return copies * per_copy, written


@dataclass(frozen=True, slots=True)
class LoadRun:
    size_mb: float
    policies: int
    policy_bytes: int
    seconds: float | None  # None: did not finish
    cpu_seconds: float | None  # user + system time of the load (robust on a busy machine)
    rss_before: int  # bytes, after imports
    rss_peak: int  # bytes, ru_maxrss of the child
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "size_mb": self.size_mb,
            "policies": self.policies,
            "policy_bytes": self.policy_bytes,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "rss_before_mib": round(self.rss_before / 2**20, 1),
            "rss_peak_mib": round(self.rss_peak / 2**20, 1),
            "error": self.error or None,
        }


def child(directory: Path) -> None:
    """Runs in the fresh process: load once, print what it cost as JSON."""
    from sidecar.core.bundle import load_bundle

    before = _rss_now()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    bundle = load_bundle(directory)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "rss_before": before,
                "rss_peak": peak,
                "policies": bundle.policy_count,
            }
        )
    )


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(size_mb: float, timeout: float) -> LoadRun:
    with tempfile.TemporaryDirectory(prefix="stepguard-bundle-") as tmp:
        root = Path(tmp) / "bundle"
        policies, written = generate(root, int(size_mb * 2**20))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.bundle_load", "--child", str(root)],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=ROOT,
            )
        except subprocess.TimeoutExpired:
            return LoadRun(size_mb, policies, written, None, None, 0, 0, f"over {timeout:.0f} s")
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            return LoadRun(size_mb, policies, written, None, None, 0, 0, tail[0])
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["policies"] == policies, (out["policies"], policies)
        return LoadRun(
            size_mb,
            policies,
            written,
            out["seconds"],
            out["cpu_seconds"],
            out["rss_before"],
            out["rss_peak"],
        )


@dataclass(frozen=True, slots=True)
class ServeRun:
    """A real `serve --watch` on a generated bundle: RSS once serving, peak after a reload."""

    size_mb: float
    rss_serving: int
    peak_after_reload: int


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_serve(size_mb: float, timeout: float) -> ServeRun:
    """Start the real sidecar with --watch, then change one policy file and wait for the swap."""
    import urllib.request

    with tempfile.TemporaryDirectory(prefix="stepguard-serve-") as tmp:
        root = Path(tmp) / "bundle"
        generate(root, int(size_mb * 2**20))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar.cli",
                "serve",
                "--policies",
                str(root),
                "--listen",
                "none",
                "--socket",
                f"{tmp}/sg.sock",
                "--metrics-listen",
                "127.0.0.1:0",
                "--audit-file",
                f"{tmp}/audit.jsonl",
                "--watch",
                "--watch-interval",
                "0.2",
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert proc.stderr is not None
            serving: dict[str, Any] = {}
            for line in proc.stderr:
                if line.startswith("{"):
                    serving = json.loads(line)
                    break
            metrics = serving["metrics"]
            time.sleep(1.0)
            rss_serving = _status(proc.pid, "VmRSS")
            first = sorted(root.glob("*.cedar"))[0]
            first.write_text(first.read_text() + "\n// changed\n")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with urllib.request.urlopen(f"http://{metrics}/healthz", timeout=30) as reply:
                    if json.loads(reply.read())["reload"]["reloads"] >= 1:
                        break
                time.sleep(0.2)
            else:
                raise TimeoutError("no reload")
            return ServeRun(size_mb, rss_serving, _status(proc.pid, "VmHWM"))
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def table(runs: list[LoadRun]) -> str:
    lines = [
        "| Policy text | Policies | Load time (wall) | CPU time | Peak RSS | RSS before load |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        size = f"{r.policy_bytes / 2**20:.1f} MiB"
        if r.seconds is None:
            lines.append(f"| {size} | {r.policies:,} | {r.error} | | | |")
            continue
        lines.append(
            f"| {size} | {r.policies:,} | {r.seconds:.1f} s | {r.cpu_seconds or 0:.1f} s | "
            f"{r.rss_peak / 2**20:.0f} MiB | {r.rss_before / 2**20:.0f} MiB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 100])
    parser.add_argument("--timeout", type=float, default=900, help="seconds per size")
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    parser.add_argument(
        "--serve-mb",
        type=float,
        nargs="*",
        default=[],
        help="also run the real `serve --watch` on bundles of these sizes and reload once",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="record the tables in benchmarks/RESULTS.md and the figures in benchmarks/data/",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child)
        return 0
    started = datetime.now(UTC).isoformat(timespec="seconds")
    commit = machine.commit()  # the code measured: taken before the run, not after it
    load_before = os.getloadavg()[0]
    runs = []
    for size in args.sizes_mb:
        run = measure(size, args.timeout)
        runs.append(run)
        print(json.dumps(run.to_json()), file=sys.stderr, flush=True)
    print(json.dumps([r.to_json() for r in runs], indent=2) if args.json else table(runs))
    served: list[tuple[float, ServeRun]] = []
    if args.serve_mb:
        for size in args.serve_mb:
            served.append((size, measure_serve(size, args.timeout)))
        print("\n" + serve_table(served), flush=True)
    if args.write:
        command = "python -m benchmarks.bundle_load " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write"
        )
        record: dict[str, Any] = {
            "command": command.strip(),
            "started": started,
            "commit": commit,
            "machine": machine.describe(),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "loads": [r.to_json() for r in runs],
            "serve": [
                {"size_mb": size, "rss_serving": s.rss_serving, "peak": s.peak_after_reload}
                for size, s in served
            ],
        }
        data = save_data("bundle-load", started, record)
        write_block(RESULTS, "bundle-load", record["command"], render(record, runs, served, data))
    return 0


def serve_table(served: list[tuple[float, ServeRun]]) -> str:
    lines = [
        "| Policy text | `serve --watch` RSS, serving | Peak RSS after one reload |",
        "|---:|---:|---:|",
    ]
    for size, s in served:
        lines.append(
            f"| {size:g} MiB | {s.rss_serving / 2**20:.0f} MiB | "
            f"{s.peak_after_reload / 2**20:.0f} MiB |"
        )
    return "\n".join(lines)


def render(
    record: dict[str, Any], runs: list[LoadRun], served: list[tuple[float, ServeRun]], data: Path
) -> str:
    m = record["machine"]
    parts = [
        "## Bundle load time and memory against bundle size (issue 27)",
        "",
        f"Command: `{record['command']}`, run {record['started']} on commit "
        f"{record['commit']}; data: `{data.relative_to(ROOT)}`. Machine: {m['nproc']} CPUs, "
        f"{m['cpu']}, Python {m['python']}, cedarpy {m['cedarpy']}; 1-minute load average "
        f"{record['load_average'][0]} at the start, {record['load_average'][1]} at the end "
        "(other work on the machine stretches wall times; CPU time is the robust figure).",
        "",
        "Each bundle is the example schema and entities plus copies of the example policies, "
        "each with a fresh `@id`, in files of about 256 KiB; each size is loaded by "
        "`load_bundle` in a fresh child process, which reports the load's wall and CPU time "
        "and its peak RSS (`ru_maxrss`), beside its RSS after imports, before the load.",
        "",
        table(runs),
    ]
    if served:
        parts += [
            "",
            "The real `serve --watch` on the same bundles (no traffic, so the decision cache "
            "is empty): RSS once serving, and the process's peak (`VmHWM`) after one policy "
            "file changed and the reload swapped.",
            "",
            serve_table(served),
        ]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
