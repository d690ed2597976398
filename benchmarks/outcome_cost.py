"""What recording outcomes costs the decision path: `python -m benchmarks.outcome_cost`.

One real sidecar (`benchmarks.serve stepguard`: policies/, its file trail, the
outcome recorder as `stepguard serve` has it) in its own process on TCP
loopback, started once. Each round drives it with two loads in turn (the order
alternates between rounds, ABBA), N concurrent asyncio clients on one channel:

    decide   each client sends Authorize for a step of a new run (a cache miss,
             the example `grant_access`, ALLOW), then the next
    pairs    the same, and after each ALLOW the client reports what the step
             did (RecordOutcome: succeeded, with its effect) before the next

Per round and load: decisions/s, the Authorize calls' own latency (p50, p99)
and the server's CPU per decision (from /proc). The figures (issue 18, target:
recording outcomes costs the decision path under 5 %):

- decision throughput, pairs / decide (median of the per-round ratios, with a
  95 % bootstrap interval): everything recording costs, the outcome calls
  included, since each pair is two calls to the same server;
- the Authorize calls' p50 latency, pairs / decide: what the outcome machinery
  adds to each decision itself (the index note, the trail shared with
  outcomes), apart from the outcome calls;
- server CPU per outcome: CPU per decision under pairs minus under decide.

After the rounds the server stops and its trail must verify and hold every
decision answered and every outcome recorded, with no violation. --write
records the block "outcome-cost" of benchmarks/RESULTS.md and the rounds in
benchmarks/data/outcome-cost-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from benchmarks import machine
from benchmarks.results import save_data, table, write_block
from benchmarks.stats import paired_ratio, verdict
from benchmarks.workload import example_request
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
LOADS = ("decide", "pairs")
TARGET = 0.95  # pairs keep at least 95 % of decide's decision throughput


def outcome_for(decision_id: str) -> pb.RecordOutcomeRequest:
    """What an orchestrator reports after the grant: it succeeded, and what it changed."""
    msg = pb.RecordOutcomeRequest(
        decision_id=decision_id, status=pb.OUTCOME_STATUS_SUCCEEDED, attempt=1
    )
    msg.effect.identity.type, msg.effect.identity.id = "User", "maria"
    msg.effect.target_system = "jira"
    msg.effect.entitlements_added.append("jira-developers")
    return msg


async def _load_timed(
    target: str, runs: Iterator[int], load: str, clients: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """One load for `seconds` after `warmup`: decisions counted, each Authorize call's own
    latency (the outcome call excluded), outcomes recorded."""
    template = example_request()
    counted = 0
    latencies: list[float] = []
    outcomes = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        measure_from = time.perf_counter() + warmup
        stop_at = measure_from + seconds

        async def client() -> None:
            nonlocal counted, outcomes
            msg = pb.AuthorizeRequest()
            msg.CopyFrom(template)
            while True:
                msg.context.run_id = f"oc-{next(runs)}"
                sent = time.perf_counter()
                resp = await stub.Authorize(msg, timeout=10)
                decided = time.perf_counter()
                if resp.decision != pb.DECISION_ALLOW:
                    raise RuntimeError(f"expected ALLOW, got {resp.reason}")
                if load == "pairs":
                    rec = await stub.RecordOutcome(outcome_for(resp.decision_id), timeout=10)
                    if rec.violation != pb.VIOLATION_NONE:
                        raise RuntimeError(f"unexpected violation: {rec.reason}")
                    outcomes += 1
                now = time.perf_counter()
                if now >= stop_at:
                    return
                if now >= measure_from:
                    counted += 1
                    latencies.append(decided - sent)

        await asyncio.gather(*(client() for _ in range(clients)))
    return {"counted": counted, "latencies": latencies, "outcomes": outcomes}


def index_note_us(count: int = 20_000) -> float:
    """What the outcome machinery adds to every decision the sidecar makes: noting its
    event in the DecisionIndex (IndexingSink), per decision, measured in this process on
    real decision events (a new run each), with the index trimming as it does in serving."""
    from sidecar.audit.redact import Redactor
    from sidecar.audit.sink import MemorySink
    from sidecar.core.bundle import load_bundle
    from sidecar.core.event import CallMeta
    from sidecar.core.validate import Limits
    from sidecar.decision.decider import Decider
    from sidecar.decision.metrics import Metrics
    from sidecar.decision.outcomes import DecisionIndex

    sink = MemorySink()
    decider = Decider(sink, Metrics(), lambda: datetime.now(UTC), redactor=Redactor())
    bundle = load_bundle(ROOT / "policies")
    msg = example_request()
    for i in range(200):
        msg.context.run_id = f"note-{i}"
        decider.decide_message(bundle, msg, CallMeta(), Limits(), started=0.0)
    events = [dict(e) for e in sink.events]
    rounds = max(1, count // len(events))

    def loop(note: Callable[[dict[str, Any]], None]) -> float:
        started = time.perf_counter()
        for r in range(rounds):
            for e in events:
                e["id"] = f"{r}-{e['time']}"  # a new id each time, as every decision has
                note(e)
        return time.perf_counter() - started

    index = DecisionIndex(max_entries=4096)  # trims often: its batches are measured too
    spent = min(loop(index.note) for _ in range(3))
    empty = min(loop(lambda e: None) for _ in range(3))  # the loop's own cost, taken off
    return max(0.0, spent - empty) / (rounds * len(events)) * 1e6


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def run(rounds: int, clients: int, warmup: float, seconds: float) -> dict[str, Any]:
    by_load: dict[str, list[dict[str, Any]]] = {load: [] for load in LOADS}
    runs = itertools.count()
    load_start = machine.loadavg()
    with tempfile.TemporaryDirectory(prefix="outcome-cost-", dir=ROOT / "benchmarks") as tmp:
        audit = Path(tmp) / "audit.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve", "stepguard", "--audit-file", str(audit)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        answered = outcomes = 0
        try:
            line = proc.stdout.readline()
            if not line.startswith("READY "):
                raise RuntimeError(f"the sidecar did not start: {line!r}")
            target = line.split()[1]
            for r in range(rounds):
                order = LOADS if r % 2 == 0 else LOADS[::-1]
                for load in order:
                    cpu0 = _cpu_seconds(proc.pid)
                    started = time.perf_counter()
                    got = asyncio.run(_load_timed(target, runs, load, clients, warmup, seconds))
                    wall = time.perf_counter() - started
                    cpu = _cpu_seconds(proc.pid) - cpu0
                    outcomes += got["outcomes"]
                    lat = got["latencies"]
                    res = {
                        "round": r + 1,
                        "decisions_per_s": got["counted"] / seconds,
                        "authorize_p50_us": _pct(lat, 50) * 1e6,
                        "authorize_p99_us": _pct(lat, 99) * 1e6,
                        # CPU over the whole call (warm-up and tail included) per decision
                        "server_cpu_us_per_decision": cpu
                        / max(1, got["counted"] * (warmup + seconds) / seconds)
                        * 1e6,
                        "wall_s": wall,
                    }
                    by_load[load].append(res)
                    print(
                        f"round {r + 1} {load:>6}: {res['decisions_per_s']:8.1f} decisions/s, "
                        f"Authorize p50 {res['authorize_p50_us']:.0f} us, server CPU "
                        f"{res['server_cpu_us_per_decision']:.0f} us/decision",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        trail = _check_trail(audit)
        answered = trail["decisions"]
    decide = [x["decisions_per_s"] for x in by_load["decide"]]
    pairs = [x["decisions_per_s"] for x in by_load["pairs"]]
    throughput = paired_ratio(pairs, decide)
    latency = paired_ratio(
        [x["authorize_p50_us"] for x in by_load["pairs"]],
        [x["authorize_p50_us"] for x in by_load["decide"]],
    )
    cpu_decide = statistics.median(x["server_cpu_us_per_decision"] for x in by_load["decide"])
    cpu_pairs = statistics.median(x["server_cpu_us_per_decision"] for x in by_load["pairs"])
    return {
        "rounds": rounds,
        "clients": clients,
        "seconds": seconds,
        "warmup": warmup,
        "loadavg_start": load_start,
        "loadavg_end": machine.loadavg(),
        "by_load": by_load,
        "throughput": [throughput.median, throughput.low, throughput.high],
        "throughput_verdict": verdict(throughput, TARGET, at_most=False),
        "decision_latency_ratio": [latency.median, latency.low, latency.high],
        "decision_latency_verdict": verdict(latency, 1 / TARGET, at_most=True),
        "server_cpu_us": {
            "per_decision_decide": cpu_decide,
            "per_decision_pairs": cpu_pairs,
            "per_outcome": cpu_pairs - cpu_decide,
        },
        "trail": trail,
        "index_note_us": index_note_us(),
        "outcomes_sent": outcomes,
        "decisions_in_trail": answered,
    }


def _check_trail(audit: Path) -> dict[str, Any]:
    """The trail verifies; how many decisions and outcomes it holds, and any violation."""
    from sidecar.audit.segments import collect
    from sidecar.audit.verify import verify

    trail = collect([audit])[0]
    report = verify(trail)
    kinds: dict[str, int] = {}
    violations = 0
    for seg in trail.segments:
        for raw in seg.read_bytes().splitlines():
            record = json.loads(raw)
            kinds[record.get("kind", "")] = kinds.get(record.get("kind", ""), 0) + 1
            violations += "violation" in record
    return {
        "verified": report.ok,
        "decisions": kinds.get("decision", 0),
        "outcomes": kinds.get("outcome", 0),
        "violations": violations,
    }


def render(record: dict[str, Any]) -> str:
    m = record["machine"]
    rows = []
    for load in LOADS:
        xs = record["by_load"][load]
        rows.append(
            [
                load,
                f"{statistics.median(x['decisions_per_s'] for x in xs):.0f} ("
                + ", ".join(f"{x['decisions_per_s']:.0f}" for x in xs)
                + ")",
                f"{statistics.median(x['authorize_p50_us'] for x in xs):.0f}",
                f"{statistics.median(x['authorize_p99_us'] for x in xs):.0f}",
                f"{statistics.median(x['server_cpu_us_per_decision'] for x in xs):.0f}",
            ]
        )
    t, lat, cpu, trail = (
        record["throughput"],
        record["decision_latency_ratio"],
        record["server_cpu_us"],
        record["trail"],
    )
    return "\n".join(
        [
            "## The cost of recording outcomes (issue 18)",
            "",
            f"Command: `{record['command']}`, run {record['started']} on commit "
            f"{record['commit']}; every round: `{record['data']}`. Machine: {m['nproc']} CPUs, "
            f"{m['cpu']}, Python {m['python']}, grpcio {m['grpcio']}; 1-minute load average "
            f"{record['loadavg_start'].split()[0]} at the start, "
            f"{record['loadavg_end'].split()[0]} at the end (the machine is shared with other "
            "engineers: compare the paired ratios, not absolute figures).",
            "",
            f"One real sidecar (policies/, file trail, outcome recorder), {record['clients']} "
            f"concurrent clients on one channel, {record['rounds']} rounds of "
            f"{record['seconds']:g} s per load after {record['warmup']:g} s warm-ups, loads in "
            "ABBA order. *decide*: Authorize for a step of a new run (a miss, ALLOW); *pairs*: "
            "the same, each followed by RecordOutcome (succeeded, with its effect) on the same "
            "client. Ratios are the median of the per-round ratios, pairs over decide, with a "
            "95 % bootstrap interval.",
            "",
            table(
                [
                    "load",
                    "decisions/s median (each round)",
                    "Authorize p50 us",
                    "Authorize p99 us",
                    "server CPU us/decision",
                ],
                rows,
            ),
            "",
            f"- Decision throughput, pairs / decide: {t[0]:.3f}x ({t[1]:.3f} to {t[2]:.3f}); "
            f"target >= {TARGET}x: {record['throughput_verdict']}. Each pair is two calls to "
            "the same server, so this counts the outcome calls' own cost.",
            f"- The Authorize calls' own p50 latency, pairs / decide: {lat[0]:.3f}x ({lat[1]:.3f} "
            f"to {lat[2]:.3f}); target <= {1 / TARGET:.3f}x: {record['decision_latency_verdict']}"
            ". This is what recording outcomes adds to each decision itself.",
            f"- On the decision path itself, the outcome machinery notes each decision event in "
            f"the DecisionIndex: {record['index_note_us']:.2f} us per decision (measured in "
            f"process), {record['index_note_us'] / cpu['per_decision_decide'] * 100:.2f} % of a "
            "decision's server CPU.",
            f"- Server CPU per outcome (CPU per decision under pairs minus under decide): "
            f"{cpu['per_outcome']:.0f} us, against {cpu['per_decision_decide']:.0f} us per "
            "decision.",
            f"- The trail verified: {'yes' if trail['verified'] else 'NO'}; it holds "
            f"{trail['decisions']} decisions and {trail['outcomes']} outcomes "
            f"({record['outcomes_sent']} recorded by the clients), {trail['violations']} "
            "violations.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    command = "python -m benchmarks.outcome_cost " + " ".join(
        [
            f"--rounds {args.rounds}",
            f"--clients {args.clients}",
            f"--seconds {args.seconds:g}",
            *(["--write"] if args.write else []),
        ]
    )
    record = {
        "command": command,
        "started": started,
        "commit": machine.commit(),
        "machine": machine.describe(),
        **run(args.rounds, args.clients, args.warmup, args.seconds),
        "data": "(not saved)",
    }
    if args.write:
        data = save_data("outcome-cost", started, record)
        record["data"] = str(data.relative_to(ROOT))
        data.write_text(json.dumps(record, indent=1) + "\n")
        write_block(RESULTS, "outcome-cost", command, render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
