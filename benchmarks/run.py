"""`./dev bench`: start the servers, drive them with one load generator, report.

    ./dev bench                  # the default run (about 4 to 5 minutes)
    ./dev bench --quick          # a short smoke run (about a minute and a half)
    ./dev bench --memory-requests 1000000   # the full memory figure (about 30 min)
    ./dev bench --only transport,transport8 --rounds 6   # a focused comparison

Every server runs in its own process, started by this run:
- baseline A: an empty servicer (parses the request, answers an empty
  AuthorizeResponse) on the same gRPC stack, options and transport;
- stepguard on policies/ (cache on, audit trail to a real file) as shipped:
  `serve` with its default worker processes (the usable cores, a chain each),
  on TCP loopback and a Unix socket, on the default (asyncio) and the other
  (sync) gRPC server;
- for the scaling group, the same with 1 and 2 worker processes (the default
  server stands for "all usable cores");
- stepguard on bundles of 20, 200 and 2,000 policies, twice: *pinned*
  (no generated policy applies to the request: the index's best case) and
  *spread* over the schema (1, 10 and 100 of them apply: a realistic share);
- Cerbos 0.55 (installed from npm into benchmarks/.work/cerbos) with an
  equivalent resource policy and its file audit log on.
Baseline B, in-process cedarpy with parsed handles, is timed in this process.
Every figure is reported with its ratio to a baseline measured in this run.
The targets of issues 4 and 19 are checked in RESULTS.md from paired rounds: each
round measures every subject of a group once (order rotated between rounds),
a target's ratio is the median of its per-round ratios, with a 95% bootstrap
interval, and its verdict is met, not met or undecided (benchmarks/stats.py).
*hit* (cached) and *miss* (evaluated) are labelled everywhere: Cerbos has no
decision cache, so it evaluates every request. Every round's figures go to
benchmarks/data/bench-<date>.json, with the commit they were measured on.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import cedarpy
import grpc

from benchmarks import cerbos, load, machine, memory
from benchmarks.load import Load, Stats, Subject
from benchmarks.policies import POLICY_COUNTS, SPREAD, bundle_dir, spread_bundle_dir
from benchmarks.procs import ROOT, WORK, Running, python_server
from benchmarks.report import (
    CERBOS,
    CERBOS_B50,
    HIT,
    MISS,
    pinned,
    render,
    render_memory,
    spread,
    with_workers,
)
from benchmarks.results import write_section
from benchmarks.workload import METHOD, batch, distinct, example_request, same, stream_items
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.engine import evaluate
from sidecar.core.validate import Limits, request_from_proto
from sidecar.core.workernames import worker_name_pattern
from sidecar.serving.config import Settings, usable_cores

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# The server mode stepguard uses by default, and the other one, measured beside it.
DEFAULT_MODE = Settings().server_mode
OTHER_MODE = "sync" if DEFAULT_MODE == "asyncio" else "asyncio"
ALT = f", {OTHER_MODE} server"
ALT_UNIX = f", {OTHER_MODE} + unix"
PLOT = ROOT / "benchmarks" / "latency.png"
DATA = ROOT / "benchmarks" / "data"
CONCURRENCY = (1, 8, 32)
# `serve --workers`' default with a file trail: the usable cores of this
# machine's (or container's) CPU quota. The headline stepguard runs with it.
DEFAULT_WORKERS = usable_cores()
# The scaling group: 1, 2 and all usable cores (one server each, the default's
# standing for "all").
SCALING_WORKERS = tuple(sorted({1, 2, DEFAULT_WORKERS}))


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    rounds: int
    warmup: float


# Defaults, stated once: the help texts below are built from them. Many short
# rounds rather than a few long ones: the interval of a paired ratio comes from
# its rounds.
SECONDS, QUICK_SECONDS = 2.4, 0.6
ROUNDS, QUICK_ROUNDS = 8, 3
WARMUP, QUICK_WARMUP = 0.1, 0.1
MEMORY_REQUESTS, QUICK_MEMORY_REQUESTS = 20_000, 3_000


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./dev bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"short run: {QUICK_SECONDS:g} s per measurement, {QUICK_ROUNDS} rounds, "
        f"{QUICK_MEMORY_REQUESTS} requests for the memory figure",
    )
    p.add_argument("--duration", type=float, help=f"seconds per measurement (default {SECONDS:g})")
    p.add_argument(
        "--rounds", type=int, help=f"interleaved rounds per measurement (default {ROUNDS})"
    )
    p.add_argument(
        "--memory-requests",
        type=int,
        help=f"distinct requests for the memory figure (default {MEMORY_REQUESTS}; "
        "the issue's is 1000000)",
    )
    p.add_argument("--no-cerbos", action="store_true", help="skip the Cerbos peer")
    p.add_argument(
        "--only",
        help="comma-separated groups to measure (e.g. transport,transport8 or memory); "
        "prints figures (memory also writes its own block of RESULTS.md). Groups: "
        + ", ".join([*GROUPS, "memory"]),
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results file to update")
    p.add_argument(
        "--no-write",
        action="store_true",
        help="print only; leave RESULTS.md and benchmarks/data/",
    )
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def timing_for(args: argparse.Namespace) -> tuple[Timing, int]:
    """The measurement timing and the memory figure's request count the flags ask for."""
    timing = Timing(
        seconds=args.duration or (QUICK_SECONDS if args.quick else SECONDS),
        rounds=args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS),
        warmup=QUICK_WARMUP if args.quick else WARMUP,
    )
    return timing, args.memory_requests or (
        QUICK_MEMORY_REQUESTS if args.quick else MEMORY_REQUESTS
    )


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    timing, memory_requests = timing_for(args)
    if args.only:
        return _only(args, timing, memory_requests)
    command = "./dev bench" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    started = datetime.now(UTC)
    t0 = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": command,
        "commit": machine.commit(),
        "started": started.isoformat(timespec="seconds"),
        "timing": {"seconds": timing.seconds, "rounds": timing.rounds, "warmup": timing.warmup},
        "machine": machine.describe(),
        "load_before": machine.loadavg(),
        "concurrency": list(CONCURRENCY),
        "server_mode": DEFAULT_MODE,
        "workers": DEFAULT_WORKERS,
        "scaling_workers": list(SCALING_WORKERS),
    }
    with ExitStack() as stack:
        servers = _start(stack, cerbos_on=not args.no_cerbos)
        _sanity(servers)
        record["results"] = _measure(servers, timing)
        record["audit_events"] = _count_events(WORK / "audit.jsonl")
    record["baseline_b"] = _baseline_b(timing)
    print(f"memory: {memory_requests} distinct requests through a fresh stepguard")
    record["memory"] = memory.run(memory_requests).to_json()
    record["load_after"] = machine.loadavg()
    record["wall_s"] = round(time.monotonic() - t0, 1)
    data = DATA / f"bench-{started.strftime('%Y-%m-%dT%H%M')}.json"
    record["data_file"] = "not written" if args.no_write else data.relative_to(ROOT).as_posix()
    (WORK / "results.json").write_text(json.dumps(record, indent=1))
    body = render(record, PLOT.name)
    print(body)
    if not args.no_write:
        from benchmarks import plot  # matplotlib: the bench extra, not needed to test

        write_data(data, record)
        plot.draw(record, PLOT)
        write_section(args.out, body)
        print(f"wrote {args.out}, {data.relative_to(ROOT)} and {PLOT}")
    return 0


def write_data(path: Path, record: dict[str, Any]) -> None:
    """The run's raw figures (every round of every subject), small enough to commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=None, separators=(",", ":")) + "\n")


def _only(args: argparse.Namespace, timing: Timing, memory_requests: int) -> int:
    """A focused run of some groups: figures on stdout and in .work/only.json."""
    wanted = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(wanted) - {*GROUPS, "memory"})
    if unknown:
        raise SystemExit(f"unknown group(s): {', '.join(unknown)}")
    started = datetime.now(UTC)
    out: dict[str, Any] = {"machine": machine.describe(), "load_before": machine.loadavg()}
    groups = [g for g in wanted if g in GROUPS]
    if groups:
        with ExitStack() as stack:
            servers = _start(stack, cerbos_on=not args.no_cerbos, scaling="scaling" in groups)
            _sanity(servers)
            out["results"] = _measure(servers, timing, groups)
    if "memory" in wanted:
        print(f"memory: {memory_requests} distinct requests through a fresh stepguard")
        out["memory"] = memory.run(memory_requests).to_json()
        print(json.dumps({k: v for k, v in out["memory"].items() if k != "samples"}))
        out["command"] = "./dev bench" + "".join(f" {shlex.quote(a)}" for a in args.argv)
        out["commit"] = machine.commit()
        out["started"] = started.isoformat(timespec="seconds")
        data = DATA / f"memory-{started.strftime('%Y-%m-%dT%H%M')}.json"
        out["data_file"] = "not written" if args.no_write else data.relative_to(ROOT).as_posix()
        if not args.no_write:
            write_data(data, out)
            write_section(args.out, render_memory(out), name="memory")
            print(f"wrote the memory block of {args.out} and {data.relative_to(ROOT)}")
    out["load_after"] = machine.loadavg()
    (WORK / "only.json").write_text(json.dumps(out, indent=1))
    return 0


# --- servers --------------------------------------------------------------------


def _start(stack: ExitStack, *, cerbos_on: bool, scaling: bool = True) -> dict[str, Running]:
    """Every server of the run; the scaling group's 1- and 2-worker servers when `scaling`."""
    audit = WORK / "audit.jsonl"
    for old in [*WORK.glob("audit*.jsonl*"), *WORK.glob("audit*.workers.json")]:
        old.unlink()
    sock = WORK / "sock"
    sock.mkdir(exist_ok=True)

    def serve(name: str, *args: str) -> Running:
        print(f"starting {name}", flush=True)
        return stack.enter_context(python_server(name, args))

    servers = {
        "empty": serve(
            "empty", "empty", "--mode", DEFAULT_MODE, "--socket", str(sock / "empty.sock")
        ),
        "stepguard": serve(
            "stepguard",
            "stepguard",
            "--mode",
            DEFAULT_MODE,
            "--audit-file",
            str(audit),
            "--socket",
            str(sock / "sg.sock"),
            "--workers",
            str(DEFAULT_WORKERS),
        ),
        "empty-alt": serve(
            "empty-alt", "empty", "--mode", OTHER_MODE, "--socket", str(sock / "empty-alt.sock")
        ),
        "stepguard-alt": serve(
            "stepguard-alt",
            "stepguard",
            "--mode",
            OTHER_MODE,
            "--audit-file",
            str(WORK / "audit-alt.jsonl"),
            "--socket",
            str(sock / "sg-alt.sock"),
            "--workers",
            str(DEFAULT_WORKERS),
        ),
    }
    for w in SCALING_WORKERS if scaling else ():
        if w != DEFAULT_WORKERS:
            servers[f"stepguard-w{w}"] = serve(
                f"stepguard-w{w}",
                "stepguard",
                "--audit-file",
                str(WORK / f"audit-w{w}.jsonl"),
                "--workers",
                str(w),
            )
    for n in POLICY_COUNTS:
        policies = bundle_dir(n, WORK)
        servers[f"stepguard-{n}"] = serve(
            f"stepguard-{n}",
            "stepguard",
            "--policies",
            str(policies),
            "--audit-file",
            str(WORK / f"audit-{n}.jsonl"),
        )
    for n, k in SPREAD:
        servers[f"stepguard-{n}-spread"] = serve(
            f"stepguard-{n}-spread",
            "stepguard",
            "--policies",
            str(spread_bundle_dir(n, k, WORK)),
            "--audit-file",
            str(WORK / f"audit-{n}-spread.jsonl"),
        )
    if cerbos_on:
        print("starting cerbos", flush=True)
        servers["cerbos"] = stack.enter_context(cerbos.server())
    return servers


def _sanity(servers: dict[str, Running]) -> None:
    """Every server answers what the benchmark claims before anything is timed."""
    names = [
        "stepguard",
        "stepguard-alt",
        *(f"stepguard-w{w}" for w in SCALING_WORKERS if f"stepguard-w{w}" in servers),
        *(f"stepguard-{n}" for n in POLICY_COUNTS),
        *(f"stepguard-{n}-spread" for n, _ in SPREAD),
    ]
    for name in names:
        pinned_bundle = name in {f"stepguard-{n}" for n in POLICY_COUNTS}
        target = "sys-1" if pinned_bundle else "jira"
        with grpc.insecure_channel(servers[name].target) as ch:
            stub = ch.unary_unary(
                METHOD + "Authorize",
                request_serializer=pb.AuthorizeRequest.SerializeToString,
                response_deserializer=pb.AuthorizeResponse.FromString,
            )
            resp: pb.AuthorizeResponse = stub(example_request(target=target), timeout=10)
            if resp.decision != pb.DECISION_ALLOW:
                raise SystemExit(f"{name}: the benchmark request is not ALLOWed: {resp.reason}")
    if "cerbos" in servers:
        with grpc.insecure_channel(servers["cerbos"].target) as ch:
            call = ch.unary_unary(
                cerbos.CHECK, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            answer = cerbos.decode(call(cerbos.check_request(50), timeout=10))
            if answer.effects != ("EFFECT_ALLOW",) * 50:
                raise SystemExit(f"Cerbos does not allow the benchmark request: {answer}")


# --- measurements ---------------------------------------------------------------


def _subjects(servers: dict[str, Running]) -> dict[str, Subject]:
    example = example_request()
    sys1 = example_request(target="sys-1")
    s: dict[str, Subject] = {}

    def add(label: str, srv: str, method: str, make: Callable[[int], bytes], **kw: Any) -> None:
        if srv not in servers:
            return
        run = servers[srv]
        unix = kw.pop("unix", False)
        s[label] = Subject(label, run.unix if unix else run.target, run.pid, method, make, **kw)

    auth, bat, stream = METHOD + "Authorize", METHOD + "AuthorizeBatch", METHOD + "AuthorizeStream"
    add("empty servicer", "empty", auth, same(example))
    add(f"stepguard {HIT}", "stepguard", auth, same(example))
    add(f"stepguard {MISS}", "stepguard", auth, distinct(example))
    for n in POLICY_COUNTS:
        add(pinned(n), f"stepguard-{n}", auth, distinct(sys1))
    for n, k in SPREAD:
        add(spread(n, k), f"stepguard-{n}-spread", auth, distinct(example))
    add("empty batch 100", "empty", bat, batch(example, 100, hit=True), per_call=100)
    add(f"stepguard batch 100 {HIT}", "stepguard", bat, batch(example, 100, hit=True), per_call=100)
    add(
        f"stepguard batch 100 {MISS}",
        "stepguard",
        bat,
        batch(example, 100, hit=False),
        per_call=100,
    )
    add(f"stepguard batch 50 {HIT}", "stepguard", bat, batch(example, 50, hit=True), per_call=50)
    add(f"stepguard batch 50 {MISS}", "stepguard", bat, batch(example, 50, hit=False), per_call=50)
    add("empty, unix socket", "empty", auth, same(example), unix=True)
    add(f"stepguard {HIT}, unix socket", "stepguard", auth, same(example), unix=True)
    add(f"stepguard {MISS}, unix socket", "stepguard", auth, distinct(example, "u"), unix=True)
    add(f"empty{ALT}", "empty-alt", auth, same(example))
    add(f"stepguard {HIT}{ALT}", "stepguard-alt", auth, same(example))
    add(f"stepguard {MISS}{ALT}", "stepguard-alt", auth, distinct(example))
    add(f"empty{ALT_UNIX}", "empty-alt", auth, same(example), unix=True)
    add(f"stepguard {HIT}{ALT_UNIX}", "stepguard-alt", auth, same(example), unix=True)
    add(f"stepguard {MISS}{ALT_UNIX}", "stepguard-alt", auth, distinct(example, "u"), unix=True)
    add("empty stream", "empty", stream, stream_items(example, hit=True), stream=True)
    add(
        f"stepguard stream {HIT}", "stepguard", stream, stream_items(example, hit=True), stream=True
    )
    add(
        f"stepguard stream {MISS}",
        "stepguard",
        stream,
        stream_items(example, hit=False),
        stream=True,
    )
    for w in SCALING_WORKERS:
        srv = "stepguard" if w == DEFAULT_WORKERS else f"stepguard-w{w}"
        every = w == DEFAULT_WORKERS
        add(with_workers(MISS, w, every), srv, auth, distinct(example, f"w{w}-"))
        add(with_workers(HIT, w, every), srv, auth, same(example))
    if "cerbos" in servers:
        pool = [cerbos.check_request(1, run=i) for i in range(1000)]
        pool50 = [cerbos.check_request(50, run=i) for i in range(50)]
        add(CERBOS, "cerbos", cerbos.CHECK, lambda i: pool[i % len(pool)])
        add(CERBOS_B50, "cerbos", cerbos.CHECK, lambda i: pool50[i % 50], per_call=50)
    return s


SG_HIT, SG_MISS = f"stepguard {HIT}", f"stepguard {MISS}"
GROUPS: dict[str, list[tuple[str, Load]]] = {
    "seq": [
        (name, Load())
        for name in (
            "empty servicer",
            SG_MISS,
            SG_HIT,
            CERBOS,
            *(pinned(n) for n in POLICY_COUNTS),
            *(spread(n, k) for n, k in SPREAD),
            "empty batch 100",
            f"stepguard batch 100 {MISS}",
            f"stepguard batch 100 {HIT}",
        )
    ],
    "c8": [(n, Load(8)) for n in ("empty servicer", SG_MISS, SG_HIT, CERBOS)],
    # Worker processes: 1, 2 and all usable cores, misses and hits, beside Cerbos.
    "scaling": [
        (CERBOS, Load(8)),
        *(
            (with_workers(kind, w, w == DEFAULT_WORKERS), Load(8))
            for kind in (MISS, HIT)
            for w in SCALING_WORKERS
        ),
    ],
    "c32": [(n, Load(32)) for n in ("empty servicer", SG_MISS, SG_HIT, CERBOS)],
    "transport": [
        ("empty servicer", Load()),
        (SG_HIT, Load()),
        (SG_MISS, Load()),
        ("empty, unix socket", Load()),
        (f"{SG_HIT}, unix socket", Load()),
        (f"{SG_MISS}, unix socket", Load()),
        (f"empty{ALT}", Load()),
        (f"{SG_HIT}{ALT}", Load()),
        (f"{SG_MISS}{ALT}", Load()),
        (f"empty{ALT_UNIX}", Load()),
        (f"{SG_HIT}{ALT_UNIX}", Load()),
        (f"{SG_MISS}{ALT_UNIX}", Load()),
        ("empty stream", Load(window=1)),
        (f"stepguard stream {HIT}", Load(window=1)),
        (f"stepguard stream {MISS}", Load(window=1)),
    ],
    "transport8": [
        ("empty servicer", Load(8)),
        (SG_HIT, Load(8)),
        (SG_MISS, Load(8)),
        (f"{SG_HIT}, unix socket", Load(8)),
        (f"{SG_MISS}, unix socket", Load(8)),
        (f"empty{ALT}", Load(8)),
        (f"{SG_HIT}{ALT}", Load(8)),
        (f"{SG_MISS}{ALT}", Load(8)),
        (f"{SG_HIT}{ALT_UNIX}", Load(8)),
        (f"{SG_MISS}{ALT_UNIX}", Load(8)),
    ],
    "transport32": [
        (SG_HIT, Load(32)),
        (SG_MISS, Load(32)),
        (f"{SG_HIT}{ALT}", Load(32)),
        (f"{SG_MISS}{ALT}", Load(32)),
    ],
    # Only with --only: the two server modes, every load in one interleaved group.
    "x-servermode": [
        (f"stepguard {kind}{mode}", Load(clients))
        for clients in (0, 8, 32)
        for kind in (HIT, MISS)
        for mode in ("", ALT)
    ],
    "throughput": [
        (CERBOS, Load(8)),
        ("empty stream", Load(window=64)),
        (f"stepguard stream {MISS}", Load(window=64)),
        (f"stepguard stream {HIT}", Load(window=64)),
        (CERBOS_B50, Load(8)),
        (f"stepguard batch 50 {MISS}", Load(8)),
        (f"stepguard batch 50 {HIT}", Load(8)),
    ],
}


def _measure(
    servers: dict[str, Running], timing: Timing, groups: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    subjects = _subjects(servers)
    out: dict[str, dict[str, Any]] = {}
    for group, entries in GROUPS.items():
        if (groups is None and group.startswith("x-")) or (groups and group not in groups):
            continue
        runs = [(subjects[name], ld) for name, ld in entries if name in subjects]
        print(f"-- {group}", flush=True)
        stats = load.interleaved(
            runs,
            timing.seconds,
            rounds=timing.rounds,
            warmup=timing.warmup,
            progress=lambda text: print(text, flush=True),
        )
        out[group] = {
            subj.label: {**st.to_json(), "clients": ld.clients, "window": ld.window}
            for (subj, ld), st in zip(runs, stats, strict=True)
        }
    return out


# --- baseline B: in-process cedarpy --------------------------------------------------


def _in_process(fn: Callable[[], Any], seconds: float) -> list[int]:
    """Per-call nanoseconds of `fn` for `seconds`, after a short warm-up."""
    clock = time.perf_counter_ns
    end = clock() + int(0.05 * 1e9)
    while clock() < end:
        fn()
    samples: list[int] = []
    start = t = clock()
    while t - start < seconds * 1e9:
        fn()
        now = clock()
        samples.append(now - t)
        t = now
    return samples


def _stats(samples: list[int], seconds: float) -> Stats:
    samples.sort()
    return Stats(
        len(samples), seconds, load.percentile(samples, 0.5), load.percentile(samples, 0.99)
    )


def _baseline_b(timing: Timing) -> dict[str, Any]:
    """cedarpy.is_authorized with the parsed handles and every policy, beside
    engine.evaluate (indexed), interleaved in rounds like the servers."""
    bundles: dict[str, tuple[Bundle, str]] = {"example": (load_bundle(ROOT / "policies"), "jira")}
    for n in POLICY_COUNTS:
        bundles[str(n)] = (load_bundle(WORK / f"policies-{n}"), "sys-1")
    for n, k in SPREAD:
        bundles[f"{n} spread"] = (load_bundle(WORK / f"policies-{n}-spread-{k}"), "jira")
    rounds = max(1, min(3, timing.rounds))  # not a target: a few rounds keep it short
    seconds = max(0.15, timing.seconds / 8 / rounds)
    calls: dict[str, tuple[Callable[[], Any], Callable[[], Any], int]] = {}
    for name, (bundle, target) in bundles.items():
        request = request_from_proto(
            example_request(target=target), bundle, Limits(), now=datetime.now(UTC)
        )
        cedar_request = {
            "principal": request.principal.to_json(),
            "action": request.action.to_json(),
            "resource": request.resource.to_json(),
            "context": dict(request.context),
        }
        chosen = bundle.index.candidates(request) if bundle.index else None
        evaluated = len(chosen) if chosen is not None else bundle.policy_count
        calls[name] = (
            _cedar_call(bundle, cedar_request),
            partial(evaluate, bundle, request),
            evaluated,
        )
    full: dict[str, list[int]] = {name: [] for name in calls}
    indexed: dict[str, list[int]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (cedar_call, engine_call, _n) in calls.items():
            full[name] += _in_process(cedar_call, seconds)
            indexed[name] += _in_process(engine_call, seconds)
    out: dict[str, Any] = {}
    for name, (_c, _e, evaluated) in calls.items():
        f = _stats(full[name], seconds * rounds)
        i = _stats(indexed[name], seconds * rounds)
        out[name] = {
            **f.to_json(),
            "policies": bundles[name][0].policy_count,
            "evaluated_by_index": evaluated,
            "engine_indexed_p50_us": round(i.p50_us, 1),
        }
        print(
            f"baseline B {name:8s} cedarpy p50 {f.p50_us:7.0f} us, "
            f"engine.evaluate (indexed) p50 {i.p50_us:7.0f} us",
            flush=True,
        )
    return out


def _cedar_call(bundle: Bundle, cedar_request: dict[str, Any]) -> Callable[[], Any]:
    ps, ents, schema = bundle.policy_set, bundle.entities, bundle.schema
    return lambda: cedarpy.is_authorized(cedar_request, ps, ents, schema)


def _count_lines(path: Path) -> int:
    return sum(1 for _ in path.open("rb")) if path.exists() else 0


def _count_events(path: Path) -> int:
    """Lines of a trail: the file itself, or with workers, every worker's chain beside it."""
    pattern = worker_name_pattern(path)
    workers = sorted(p for p in path.parent.glob("*") if pattern.fullmatch(p.name))
    return sum(_count_lines(p) for p in [path, *workers])
