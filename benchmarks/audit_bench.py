"""What the audit trail costs: decisions/s with the trail off, flushed, fsynced.

    .venv/bin/python -m benchmarks.audit_bench [--seconds 5] [--rounds 3] [--clients 8] [--runs 1]

Same run, same load: three sidecars, one per mode, each in its own process
on TCP loopback, serving policies/, started once; each round drives every one
of them in turn (the order rotates between rounds) with N concurrent asyncio
clients on one channel (in this process), once per load. Keeping them running
puts the two halves of each paired ratio seconds apart, with no process start
between them. Loads (both ALLOW a `notify` step by the notifier workload):

    steps  every call is a new step of a new run (a new `run_id`), as an
           orchestrator sends them: each is evaluated (a cache miss)
    hits   the same call over and over: each is answered from the cache, the
           cheapest decision there is, so the trail's share of it is largest

Modes:

    off    the decider builds every event and hands it to a sink that drops it
           (a NullSink injected here; no setting can select it)
    flush  the default file trail: each event written to the OS before its answer
    fsync  the file trail with durability fsync: on disk before its answer

The figure per load and mode is the median over rounds. A mode's ratio is the
median over rounds of (its rate / the `off` rate of the same round and load):
pairing within a round cancels most of the drift of a shared machine. Beside it, a 95% bootstrap
interval of that median (resampling the rounds) says how far one run's figure
can be trusted on a noisy machine (benchmarks/stats.py, shared with `./dev
bench`). A verdict is met when the whole interval is at or above the target,
not met when it is all below, undecided when it straddles the target.
`--runs N` makes N runs, each with freshly started servers, and reports every
run and the pool of all their rounds: how many runs are pooled is decided
before any of them runs, and none is left out.
Each trail is verified once its server stopped, and must hold an event for
every answer its server gave in any round.
Targets (issue 3): flush >= 0.9x, fsync >= 0.6x, reported for each load.
`--load` measures one of them only. `--write` records the table in
benchmarks/RESULTS.md under "Audit trail" (only that section is touched), with
the commit measured, and every round's figures in benchmarks/data/audit-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from benchmarks import machine
from benchmarks.stats import Ratio, bootstrap_median_interval, verdict
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MODES = ("off", "flush", "fsync")
LOADS = ("steps", "hits")
DATA = ROOT / "benchmarks" / "data"
BEGIN = "<!-- audit-bench:begin (written by `python -m benchmarks.audit_bench --write`) -->"
END = "<!-- audit-bench:end -->"
TARGETS = {"flush": 0.9, "fsync": 0.6}


def request() -> pb.AuthorizeRequest:
    """A read-only notify step the example policies allow at any hour (the `hits` load)."""
    from sidecar.core.jsonreq import request_from_json

    return request_from_json(
        {
            "principal": {"type": "Workload", "id": "spiffe://example.org/ns/comms/sa/notifier"},
            "action": {"type": "Action", "id": "notify"},
            "resource": {"type": "TargetSystem", "id": "slack"},
            "context": {"workflow_id": "onboarding", "run_id": "bench", "step_id": "notify"},
        }
    )


# -- the server child -------------------------------------------------------------


def serve(mode: str, audit_file: str) -> int:
    """Child process: one sidecar in `mode`; prints READY <target>; serves until stdin closes."""
    from sidecar.audit.sink import NullSink
    from sidecar.serving.config import Settings
    from sidecar.serving.server import Sidecar, tune_gc_for_serving

    settings = Settings(
        policies=ROOT / "policies",
        listen="127.0.0.1:0",
        metrics_listen=None,
        audit_file=audit_file,
        audit_durability="fsync" if mode == "fsync" else "flush",
    )
    sidecar = Sidecar(settings, sink=NullSink() if mode == "off" else None)
    endpoints = sidecar.start()
    tune_gc_for_serving()  # as `stepguard serve` does
    print(f"READY {endpoints.tcp}", flush=True)
    sys.stdin.read()
    sidecar.stop(1)
    return 0


# -- the load -------------------------------------------------------------------------


def step_requests(runs: Iterator[int]) -> Iterator[pb.AuthorizeRequest]:
    """The `steps` load: `request()` as a step of a new run each time, so none is cached."""
    base = request()
    for run in runs:
        msg = pb.AuthorizeRequest()
        msg.CopyFrom(base)
        msg.context.run_id = f"bench-{run}"
        yield msg


async def _load(
    target: str,
    messages: Iterator[pb.AuthorizeRequest],
    clients: int,
    warmup: float,
    seconds: float,
) -> tuple[int, list[str]]:
    ids: list[str] = []
    counted = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        async def client() -> None:
            nonlocal counted
            while True:
                resp = await stub.Authorize(next(messages), timeout=10)
                now = time.perf_counter()
                if resp.decision != pb.DECISION_ALLOW:
                    raise RuntimeError(f"expected ALLOW, got {resp.reason}")
                ids.append(resp.decision_id)
                if now >= stop_at:
                    return
                if now >= measure_from:
                    counted += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return counted, ids


@dataclass
class Server:
    """One sidecar child in `mode`, serving until its stdin closes."""

    mode: str
    audit: Path
    proc: subprocess.Popen[str]
    target: str
    ids: list[str] = field(default_factory=list)
    runs: Iterator[int] = field(default_factory=itertools.count)  # run ids never reused


@contextmanager
def server(mode: str, work: Path) -> Iterator[Server]:
    audit = work / mode / "audit.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.audit_bench",
            "--serve",
            mode,
            "--audit-file",
            str(audit),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"server ({mode}) did not start: {line!r}")
        yield Server(mode, audit, proc, line.split()[1])
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(srv: Server, load: str, clients: int, warmup: float, seconds: float) -> dict[str, Any]:
    """One measurement on a running server; its answered ids are kept for the trail check."""
    messages = step_requests(srv.runs) if load == "steps" else itertools.repeat(request())
    cpu0 = _cpu_seconds(srv.proc.pid)
    counted, ids = asyncio.run(_load(srv.target, messages, clients, warmup, seconds))
    cpu1 = _cpu_seconds(srv.proc.pid)
    srv.ids.extend(ids)
    return {
        "mode": srv.mode,
        "load": load,
        "decisions_per_s": counted / seconds,
        "server_cpu_us": (cpu1 - cpu0) / max(len(ids), 1) * 1e6,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _check_trail(audit: Path, ids: list[str]) -> bool:
    """The run counts only if its trail verifies and holds every answered decision."""
    from sidecar.audit.segments import collect
    from sidecar.audit.verify import verify

    trail = collect([audit])[0]
    if not verify(trail).ok:
        return False
    seen = set()
    for seg in trail.segments:
        for raw in seg.read_bytes().splitlines():
            seen.add(json.loads(raw)["id"])
    return all(i in seen for i in ids)


# -- report ---------------------------------------------------------------------------


def run(
    rounds: int, clients: int, warmup: float, seconds: float, loads: tuple[str, ...] = LOADS
) -> dict[str, Any]:
    by_load: dict[str, dict[str, list[dict[str, Any]]]] = {
        load: {m: [] for m in MODES} for load in loads
    }
    start_load = os.getloadavg()[0]
    trail_ok: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="audit-bench-", dir=ROOT / "benchmarks") as tmp:
        with ExitStack() as stack:
            servers = {m: stack.enter_context(server(m, Path(tmp))) for m in MODES}
            for r in range(rounds):
                for load in loads:
                    for mode in MODES[r % 3 :] + MODES[: r % 3]:
                        res = measure(servers[mode], load, clients, warmup, seconds)
                        by_load[load][mode].append(res)
                        print(
                            f"round {r + 1} {load:>5} {mode:>5}: "
                            f"{res['decisions_per_s']:8.1f} decisions/s, "
                            f"server CPU {res['server_cpu_us']:.0f} us/decision",
                            flush=True,
                        )
        # The servers have stopped (trails closed): every answer must be in its trail.
        for mode, srv in servers.items():
            trail_ok[mode] = mode == "off" or _check_trail(srv.audit, srv.ids)
    return {
        "rounds": rounds,
        "clients": clients,
        "seconds": seconds,
        "load_average": (start_load, os.getloadavg()[0]),
        "loads": {load: summarize(by_mode, trail_ok) for load, by_mode in by_load.items()},
    }


def summarize(
    by_mode: dict[str, list[dict[str, Any]]], trail_ok: dict[str, bool]
) -> dict[str, dict[str, Any]]:
    """Per mode: median rate, the median paired ratio to `off` with its interval, CPU."""
    base = [x["decisions_per_s"] for x in by_mode["off"]]
    modes: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        rates = [x["decisions_per_s"] for x in by_mode[mode]]
        ratios = [r / b for r, b in zip(rates, base, strict=True)]
        cpus = [x["server_cpu_us"] for x in by_mode[mode]]
        modes[mode] = _mode_summary(rates, ratios, cpus, trail_ok[mode])
    return modes


def _mode_summary(
    rates: list[float], ratios: list[float], cpus: list[float], trail_ok: bool
) -> dict[str, Any]:
    return {
        "decisions_per_s": statistics.median(rates),
        "all": rates,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "ratio_interval": bootstrap_median_interval(ratios),
        "server_cpu_us": statistics.median(cpus),
        "cpus": cpus,
        "trail_ok": trail_ok,
    }


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every round of every run as one sample: rates, paired ratios and CPU pooled."""
    first = runs[0]
    loads: dict[str, dict[str, Any]] = {}
    for load in first["loads"]:
        loads[load] = {
            mode: _mode_summary(
                [x for r in runs for x in r["loads"][load][mode]["all"]],
                [x for r in runs for x in r["loads"][load][mode]["ratios"]],
                [x for r in runs for x in r["loads"][load][mode]["cpus"]],
                all(r["loads"][load][mode]["trail_ok"] for r in runs),
            )
            for mode in MODES
        }
    return {
        "rounds": sum(r["rounds"] for r in runs),
        "clients": first["clients"],
        "seconds": first["seconds"],
        "load_average": (first["load_average"][0], runs[-1]["load_average"][1]),
        "loads": loads,
    }


def mode_verdict(mode: str, m: dict[str, Any]) -> str:
    """`baseline` for off; else the target and met / not met / undecided from the interval."""
    target = TARGETS.get(mode)
    if target is None:
        return "baseline"
    low, high = m["ratio_interval"]
    ratio = Ratio(m["ratio"], low, high, len(m.get("ratios", ())))
    return f">= {target}x: {verdict(ratio, target, at_most=False)}"


LOAD_NAMES = {
    "steps": "steps (a new run each call: evaluated)",
    "hits": "hits (one call repeated: from the cache)",
}


def _runs_table(runs: list[dict[str, Any]]) -> list[str]:
    """One column per run: its paired ratio, interval and verdict, for every load and mode."""
    head = [f"run {i + 1}" for i in range(len(runs))]
    lines = [
        "",
        "Each run on its own (servers started afresh for each), then the pool of all "
        "their rounds (the table above):",
        "",
        "| load | trail | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for load in runs[0]["loads"]:
        for mode in TARGETS:
            cells = []
            for r in runs:
                m = r["loads"][load][mode]
                low, high = m["ratio_interval"]
                cells.append(
                    f"{m['ratio']:.3f}x ({low:.3f} to {high:.3f}), {r['rounds']} rounds: "
                    f"{mode_verdict(mode, m).split(': ', 1)[1]}"
                )
            lines.append(f"| {LOAD_NAMES[load]} | {mode} | " + " | ".join(cells) + " |")
    return lines


def render(
    summary: dict[str, Any],
    command: str,
    *,
    runs: list[dict[str, Any]] | None = None,
    commit: str = "unknown",
    data_file: str = "not written",
    started: str | None = None,
) -> str:
    rows = []
    for load, modes in summary["loads"].items():
        for mode in MODES:
            m = modes[mode]
            target = TARGETS.get(mode)
            each = ", ".join(f"{r:.0f}" for r in m["all"])
            low, high = m["ratio_interval"]
            interval = "" if target is None else f" ({low:.3f} to {high:.3f})"
            rows.append(
                f"| {LOAD_NAMES[load]} | {mode} | {m['decisions_per_s']:.0f} ({each}) "
                f"| {m['ratio']:.3f}x{interval} | {mode_verdict(mode, m)} "
                f"| {m['server_cpu_us']:.0f} | {'yes' if m['trail_ok'] else 'NO'} |"
            )
    cpu = os.cpu_count()
    pooled = runs is not None and len(runs) > 1
    when = started or datetime.now(UTC).isoformat(timespec="seconds")
    return "\n".join(
        [
            BEGIN,
            "## Audit trail",
            "",
            f"Command: `{command}`, run {when} on commit {commit}; every round: "
            f"`{data_file}`. "
            + (
                f"{len(runs or ())} runs, decided before the first started, all reported "
                "below; the main table pools their rounds. "
                if pooled
                else ""
            )
            + f"{summary['clients']} concurrent clients (asyncio, one channel), "
            f"{summary['seconds']:g} s per measurement after a warm-up, {summary['rounds']} "
            "rounds, each load in turn, modes in rotating order; rates are medians, a ratio "
            "is the median of the per-round ratios to `off` under the same load, with a 95% "
            "bootstrap interval of that median (rounds resampled); a verdict is met when the "
            "whole interval is at or above the target, not met when it is all below, "
            "undecided when it straddles the target. 1-minute load average "
            f"{summary['load_average'][0]:.1f} at start, {summary['load_average'][1]:.1f} at end "
            "(the machine is shared with other engineers running tests, so every figure is "
            "noisy: that is what the intervals are for).",
            "",
            f"Machine: {cpu} CPUs, {platform.platform()}; Python {platform.python_version()}. "
            "Each sidecar runs in its own process on TCP loopback, serving policies/; every "
            "call is an ALLOW (`notify` by the notifier workload). Under *steps* each call is "
            "a step of a new run (a new `run_id`), as an orchestrator sends them, so each is "
            "evaluated; under *hits* the same call repeats and each is answered from the "
            "cache, the cheapest decision, where the trail's share is largest. `off` hands "
            "every event to a sink that drops it (benchmark only; no setting selects it). The "
            "three servers start once and each round drives them in turn. Each file trail is "
            "verified once its server stopped and must hold an event for every decision it "
            "answered.",
            "",
            "| load | trail | decisions/s median (each round) | vs off (paired; 95% interval) "
            "| target | server CPU us/decision | trail verified, every answer in it |",
            "|---|---|---|---|---|---|---|",
            *rows,
            *(_runs_table(runs or []) if pooled else []),
            END,
        ]
    )


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--audit-file", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--load", choices=LOADS, help="measure this load only (default: both)")
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs to make and pool, each with fresh servers; every run is reported",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.audit_file)
    loads = (args.load,) if args.load else LOADS
    started = datetime.now(UTC)
    commit = machine.commit()
    runs = []
    for i in range(max(1, args.runs)):
        if args.runs > 1:
            print(f"-- run {i + 1} of {args.runs}", flush=True)
        runs.append(run(args.rounds, args.clients, args.warmup, args.seconds, loads))
    summary = runs[0] if len(runs) == 1 else pool(runs)
    command = ".venv/bin/python -m benchmarks.audit_bench " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"
    )
    data = DATA / f"audit-{started.strftime('%Y-%m-%dT%H%M')}.json"
    section = render(
        summary,
        command.strip(),
        runs=runs,
        commit=commit,
        data_file=data.relative_to(ROOT).as_posix() if args.write else "not written",
        started=started.isoformat(timespec="seconds"),
    )
    print(json.dumps(summary, indent=2) if args.json else section)
    if args.write:
        DATA.mkdir(parents=True, exist_ok=True)
        record = {
            "command": command.strip(),
            "commit": commit,
            "started": started.isoformat(timespec="seconds"),
            "runs": runs,
        }
        data.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        write_results(section)
    results = [modes[m] for modes in summary["loads"].values() for m in MODES]
    ok = all(r["trail_ok"] for r in results)
    missed = any(
        mode_verdict(m, modes[m]).endswith(": not met")
        for modes in summary["loads"].values()
        for m in TARGETS
    )
    return 0 if ok and not missed else 1


if __name__ == "__main__":
    raise SystemExit(main())
