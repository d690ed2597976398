"""What recording outcomes costs the decision path: `python -m benchmarks.outcome_cost`.

One real sidecar (`benchmarks.serve stepguard`: policies/, its file trail, the
outcome recorder as `stepguard serve` has it) in its own process on TCP
loopback, started once. Each round drives it with three loads in turn (the
order rotates and reverses between rounds), N concurrent asyncio clients
sharing one `AsyncStepguardClient` (one channel):

    decide       each client asks `authorize` for a step of a new run (a cache
                 miss, the example `grant_access`, ALLOW), then the next
    pairs        the same, and after each ALLOW the client reports what the
                 step did (succeeded, with its effect) the default way,
                 `report_outcome`: queued, sent by the client's outcome
                 reporter in RecordOutcomes batches (sidecar/client/reporter.py)
    pairs-unary  the same with `record_outcome`: one RecordOutcome round trip
                 per outcome, awaited before the next step (the call a step
                 makes when it needs the sidecar's answer)

Per round and load: decisions/s, the Authorize calls' own latency (p50, p99)
and the server's CPU per decision (from /proc). The figures (issue 18, target:
recording outcomes costs the decision path under 5 %):

- decision throughput, pairs / decide (median of the per-round ratios, with a
  95 % bootstrap interval): everything recording costs, the outcome calls
  included, since the outcomes go to the same server; the same for
  pairs-unary, labelled apart;
- the Authorize calls' p50 latency, pairs / decide: what the outcome machinery
  adds to each decision itself (the index note, the trail shared with
  outcomes, the batches the server records between decisions);
- server CPU per outcome: CPU per decision under a pairs load minus under decide.

After the rounds the server stops and its trail must verify and hold every
decision answered and every outcome recorded, with no violation; the
reporters must have recorded every outcome queued (none dropped or refused).
--write records the block "outcome-cost" of benchmarks/RESULTS.md and the
rounds in benchmarks/data/outcome-cost-<date>.json.
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

from benchmarks import machine
from benchmarks.fleet_bench import pin
from benchmarks.results import save_data, table, write_block
from benchmarks.stats import paired_ratio, verdict
from benchmarks.workload import example_request
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.client import AsyncStepguardClient

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
LOADS = ("decide", "pairs", "pairs-unary")
TARGET = 0.95  # pairs keep at least 95 % of decide's decision throughput


# What an orchestrator reports after the grant: it succeeded, and what it changed.
EFFECT = {
    "identity": {"type": "User", "id": "maria"},
    "target_system": "jira",
    "entitlements_added": ["jira-developers"],
}


async def _load_timed(
    target: str, runs: Iterator[int], load: str, clients: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """One load for `seconds` after `warmup`: decisions counted, each Authorize call's own
    latency (the outcome call excluded), outcomes recorded (for pairs: once the client's
    close has sent the last batch)."""
    template = example_request()
    counted = 0
    latencies: list[float] = []
    outcomes = batches = 0
    client = AsyncStepguardClient(target, timeout=10)
    try:
        measure_from = time.perf_counter() + warmup
        stop_at = measure_from + seconds

        async def one() -> None:
            nonlocal counted, outcomes
            msg = pb.AuthorizeRequest()
            msg.CopyFrom(template)
            while True:
                msg.context.run_id = f"oc-{next(runs)}"
                sent = time.perf_counter()
                decision = await client.authorize(msg)
                decided = time.perf_counter()
                if not decision.allowed:
                    raise RuntimeError(f"expected ALLOW, got {decision.reason}")
                if load == "pairs":
                    queued = client.report_outcome(
                        decision.decision_id, "succeeded", effect=EFFECT, attempt=1
                    )
                    if not queued:
                        raise RuntimeError("the reporter did not take the outcome")
                elif load == "pairs-unary":
                    rec = await client.record_outcome(
                        decision.decision_id, "succeeded", effect=EFFECT, attempt=1
                    )
                    if not rec.recorded or rec.violation:
                        raise RuntimeError(f"outcome not recorded as expected: {rec.reason}")
                    outcomes += 1
                now = time.perf_counter()
                if now >= stop_at:
                    return
                if now >= measure_from:
                    counted += 1
                    latencies.append(decided - sent)

        await asyncio.gather(*(one() for _ in range(clients)))
    finally:
        reporter = client._reporter
        await client.close()  # sends the pairs' last batch
    if load == "pairs":
        assert reporter is not None
        stats = reporter.stats
        if stats.recorded != stats.reported or stats.violations or stats.dropped:
            raise RuntimeError(f"the reporter did not record every outcome: {stats}")
        outcomes = stats.recorded
        batches = stats.batches
    return {"counted": counted, "latencies": latencies, "outcomes": outcomes, "batches": batches}


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


def run(
    rounds: int, clients: int, warmup: float, seconds: float, *, pinned: bool = False
) -> dict[str, Any]:
    """The rounds; `pinned`: the sidecar on CPU 0, this process (the clients) on CPU 1."""
    by_load: dict[str, list[dict[str, Any]]] = {load: [] for load in LOADS}
    runs = itertools.count()
    own_cpus = os.sched_getaffinity(0)
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
            if pinned:  # the sidecar's capacity, apart from its callers' (fleet_bench.pin)
                pin(proc.pid, {0})
                os.sched_setaffinity(0, {1})
            for r in range(rounds):
                turn = r % len(LOADS)
                order = LOADS[turn:] + LOADS[:turn]
                order = order if r % 2 == 0 else order[::-1]
                for load in order:
                    cpu0 = _cpu_seconds(proc.pid)
                    own0 = time.process_time()
                    started = time.perf_counter()
                    got = asyncio.run(_load_timed(target, runs, load, clients, warmup, seconds))
                    wall = time.perf_counter() - started
                    cpu = _cpu_seconds(proc.pid) - cpu0
                    own = time.process_time() - own0
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
                        # the clients' process (the load generator, reporter included)
                        "client_cpu_us_per_decision": own
                        / max(1, got["counted"] * (warmup + seconds) / seconds)
                        * 1e6,
                        "wall_s": wall,
                        "outcomes": got["outcomes"],
                        "batches": got["batches"],
                    }
                    by_load[load].append(res)
                    print(
                        f"round {r + 1} {load:>11}: {res['decisions_per_s']:8.1f} decisions/s, "
                        f"Authorize p50 {res['authorize_p50_us']:.0f} us, server CPU "
                        f"{res['server_cpu_us_per_decision']:.0f} us/decision, client CPU "
                        f"{res['client_cpu_us_per_decision']:.0f}"
                        + (
                            f", {got['outcomes'] / got['batches']:.0f} outcomes a batch"
                            if got["batches"]
                            else ""
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            if pinned:
                os.sched_setaffinity(0, own_cpus)
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
    cpu_decide = statistics.median(x["server_cpu_us_per_decision"] for x in by_load["decide"])
    figures: dict[str, Any] = {}
    for load in LOADS[1:]:
        throughput = paired_ratio([x["decisions_per_s"] for x in by_load[load]], decide)
        latency = paired_ratio(
            [x["authorize_p50_us"] for x in by_load[load]],
            [x["authorize_p50_us"] for x in by_load["decide"]],
        )
        cpu = statistics.median(x["server_cpu_us_per_decision"] for x in by_load[load])
        figures[load] = {
            "throughput": [throughput.median, throughput.low, throughput.high],
            "throughput_verdict": verdict(throughput, TARGET, at_most=False),
            "decision_latency_ratio": [latency.median, latency.low, latency.high],
            "decision_latency_verdict": verdict(latency, 1 / TARGET, at_most=True),
            "server_cpu_us_per_decision": cpu,
            "server_cpu_us_per_outcome": cpu - cpu_decide,
        }
    return {
        "pinned": pinned,
        "rounds": rounds,
        "clients": clients,
        "seconds": seconds,
        "warmup": warmup,
        "loadavg_start": load_start,
        "loadavg_end": machine.loadavg(),
        "by_load": by_load,
        "figures": figures,
        "server_cpu_us_per_decision_decide": cpu_decide,
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
                f"{statistics.median(x['client_cpu_us_per_decision'] for x in xs):.0f}",
            ]
        )
    fig, trail = record["figures"], record["trail"]
    cpu_decide = record["server_cpu_us_per_decision_decide"]
    lines = [
        "## The cost of recording outcomes (issue 18)",
        "",
        f"Command: `{record['command']}`, run {record['started']} on commit "
        f"{record['commit']}; every round: `{record['data']}`. Machine: {m['nproc']} CPUs, "
        f"{m['cpu']}, Python {m['python']}, grpcio {m['grpcio']}; 1-minute load average "
        f"{record['loadavg_start'].split()[0]} at the start, "
        f"{record['loadavg_end'].split()[0]} at the end (the machine is shared with other "
        "engineers: compare the paired ratios, not absolute figures).",
        "",
        _topology(record),
        "",
        f"One real sidecar (policies/, file trail, outcome recorder), {record['clients']} "
        f"concurrent clients on one `AsyncStepguardClient`, {record['rounds']} rounds of "
        f"{record['seconds']:g} s per load after {record['warmup']:g} s warm-ups, the loads' "
        "order rotating and reversing between rounds. *decide*: `authorize` for a step of a "
        "new run (a miss, ALLOW); *pairs*: the same, each followed by `report_outcome` "
        "(succeeded, with its effect), the client's default way: queued and sent by its "
        "outcome reporter in RecordOutcomes batches (128 outcomes or 0.1 s); *pairs-unary*: "
        "each followed instead by `record_outcome`, one RecordOutcome round trip awaited "
        "before the next step. Ratios are the median of the per-round ratios over decide, "
        "with a 95 % bootstrap interval.",
        "",
        table(
            [
                "load",
                "decisions/s median (each round)",
                "Authorize p50 us",
                "Authorize p99 us",
                "server CPU us/decision",
                "clients' CPU us/decision",
            ],
            rows,
        ),
        "",
    ]
    for load, label in (
        ("pairs", "pairs (the default: batched by the reporter)"),
        ("pairs-unary", "pairs-unary (one RecordOutcome call each; shown, no target)"),
    ):
        f = fig[load]
        t, lat = f["throughput"], f["decision_latency_ratio"]
        target = f"target >= {TARGET}x: {f['throughput_verdict']}" if load == "pairs" else ""
        lines += [
            f"- {label}: decision throughput / decide {t[0]:.3f}x ({t[1]:.3f} to {t[2]:.3f})"
            + (f"; {target}" if target else "")
            + f". The Authorize calls' own p50 latency / decide: {lat[0]:.3f}x ({lat[1]:.3f} "
            f"to {lat[2]:.3f}); target <= {1 / TARGET:.3f}x: {f['decision_latency_verdict']}. "
            f"Server CPU per outcome (CPU per decision minus decide's): "
            f"{f['server_cpu_us_per_outcome']:.0f} us, against {cpu_decide:.0f} us per "
            "decision.",
        ]
    lines += [
        f"- On the decision path itself, the outcome machinery notes each decision event in "
        f"the DecisionIndex: {record['index_note_us']:.2f} us per decision (measured in "
        f"process), {record['index_note_us'] / cpu_decide * 100:.2f} % of a "
        "decision's server CPU.",
        f"- The trail verified: {'yes' if trail['verified'] else 'NO'}; it holds "
        f"{trail['decisions']} decisions and {trail['outcomes']} outcomes "
        f"({record['outcomes_sent']} recorded by the clients), {trail['violations']} "
        "violations.",
    ]
    shared = record.get("shared")
    if shared is not None:
        f = shared["figures"]["pairs"]
        t = f["throughput"]

        def median(load: str, key: str) -> str:
            return f"{statistics.median(x[key] for x in shared['by_load'][load]):.0f}"

        rows = [
            [
                load,
                median(load, "decisions_per_s"),
                median(load, "server_cpu_us_per_decision"),
                median(load, "client_cpu_us_per_decision"),
            ]
            for load in LOADS
        ]
        lines += [
            "",
            "The same rounds with the sidecar and the clients sharing both CPUs (shown, not "
            f"the verdict): pairs / decide {t[0]:.3f}x ({t[1]:.3f} to {t[2]:.3f}); the trail "
            f"verified: {'yes' if shared['trail']['verified'] else 'NO'}, "
            f"{shared['trail']['violations']} violations.",
            "",
            table(
                [
                    "load (shared CPUs)",
                    "decisions/s median",
                    "server CPU us/decision",
                    "clients' CPU us/decision",
                ],
                rows,
            ),
        ]
    return "\n".join(lines)


def _topology(record: dict[str, Any]) -> str:
    if record.get("pinned"):
        return (
            "Topology: the sidecar pinned to CPU 0 (every thread, by CPU affinity) and the "
            "load clients (this process) to CPU 1, as a sidecar and its orchestrator run in "
            "their own containers: the ratios measure the sidecar's own decision capacity, "
            "not the clients' CPU beside it."
        )
    return (
        "Topology: the sidecar and the load clients share both CPUs: what the clients spend "
        "building and sending outcomes counts against the decisions too."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument(
        "--pinned",
        action="store_true",
        help="the sidecar on CPU 0 and the clients on CPU 1 (the verdict), then the same "
        "rounds with both sharing the CPUs (shown beside it)",
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    command = "python -m benchmarks.outcome_cost " + " ".join(
        [
            f"--rounds {args.rounds}",
            f"--clients {args.clients}",
            f"--seconds {args.seconds:g}",
            *(["--pinned"] if args.pinned else []),
            *(["--write"] if args.write else []),
        ]
    )
    record = {
        "command": command,
        "started": started,
        "commit": machine.commit(),
        "machine": machine.describe(),
        **run(args.rounds, args.clients, args.warmup, args.seconds, pinned=args.pinned),
        "data": "(not saved)",
    }
    if args.pinned:  # the same rounds with the CPUs shared, shown beside the verdict
        record["shared"] = run(args.rounds, args.clients, args.warmup, args.seconds)
    if args.write:
        data = save_data("outcome-cost", started, record)
        record["data"] = str(data.relative_to(ROOT))
        data.write_text(json.dumps(record, indent=1) + "\n")
        write_block(RESULTS, "outcome-cost", command, render(record))
    print(render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
