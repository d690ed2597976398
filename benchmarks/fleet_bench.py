"""What shipping costs and how fast the fleet moves records (docs/fleet.md).

    .venv/bin/python -m benchmarks.fleet_bench [--rounds 8] [--seconds 3] [--lag-seconds 10]
        [--rates 2000,500] [--ingest 20000] [--write]

Real servers on loopback, started here (tests/fleet/servers.py): a nats-server
with JetStream (`sync_interval: always`, an R1 stream: one node on one machine)
and a PostgreSQL. Three measurements:

1. Decision throughput with shipping on vs off, in the same run: two sidecars
   (benchmarks.audit_bench's server, default `flush` file trail, TCP loopback),
   one with `stepguard ship` tailing its trail and a `stepguard collect`
   writing it to PostgreSQL, one alone. Each round drives both in turn (order
   rotating) with N concurrent clients, every call a step of a new run (so
   each is evaluated). The ratio is the median of per-round ratios with a 95%
   bootstrap interval (benchmarks/stats.py); target >= 0.95x.
   Topology, by CPU affinity (os.sched_setaffinity on every thread of every
   process the bench starts, their children included): the verdict is taken
   with the deployment's shape, "pod" = one CPU for the sidecar AND the
   shipper (the conservative choice: they compete for one core, as two
   containers of a pod with one core between them would), "elsewhere" = the
   other CPU for the broker, the collector, PostgreSQL and the load clients
   (this process). The same pinning for on and off (the idle shipper and the
   other sidecar stay on the pod CPU). On the elsewhere CPU the broker, the
   collector and PostgreSQL run at nice 10 (INFRA_NICE) during these rounds,
   so that the load clients are served first: in a cluster each of them has
   machines of its own, and what they do not get in time only delays the
   records (the lag, below, is measured with everything back at nice 0).
   Each CPU's utilisation during the measurements is reported (from
   /proc/stat, machine-wide: other users of a shared machine count too):
   when the "elsewhere" CPU saturates with
   shipping on, the load clients slow down and the figure is pessimistic for
   shipping. Then the same rounds again with every process free to use both
   CPUs ("shared", how the figure was first taken): reported, not the verdict,
   since in a cluster the broker, collector and database do not share the
   sidecar's CPU.
2. End-to-end lag at a steady rate (paced, open loop; default 2,000 decisions/s,
   then 500): from each decision's `time` (when it was evaluated) to its row's
   `received_at` in PostgreSQL; p50 and p99 over every decision of the window.
   Where the machine cannot sustain the rate with everything on it, the backlog
   grows for the whole window and the lag with it: the achieved rate is shown.
3. Collector ingest: a trail of N records is shipped into the stream with no
   collector running, then one (and, on a fresh stream and database, two)
   collectors drain it; the rate is N over the span of the rows' `received_at`
   (process start-up excluded).

With (1), for each topology, where the CPU goes: each process's CPU time (user +
system from /proc/<pid>/stat, its live descendants and its reaped children
included) is read before the shipping-on/off rounds and after the trail they
wrote is all in PostgreSQL, for the shipper (what runs beside a sidecar in a
pod), the nats-server, the collector and the PostgreSQL server tree (its
backends are the postmaster's children); each as CPU µs per shipped record.
The sidecar tree's CPU per decision is read around each measurement, on and
off. The lag (2) is measured with the pod pinned; the ingest (3) with every
process free to use both CPUs.

`--write` records the figures in benchmarks/RESULTS.md (the `fleet-bench`
block) and every round in benchmarks/data/fleet-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psycopg

from benchmarks import audit_bench, machine
from benchmarks.results import save_data, write_block
from benchmarks.stats import paired_ratio, verdict
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
TARGET = 0.95
CLI = [sys.executable, "-m", "sidecar.cli"]


@contextlib.contextmanager
def proc(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A fleet command as a subprocess, stopped by its PID (SIGTERM, then SIGKILL)."""
    with log.open("ab") as out:
        p = subprocess.Popen([*CLI, *args], env=env, stdout=out, stderr=out, cwd=ROOT)
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def sidecar(work: Path) -> Iterator[audit_bench.Server]:
    """audit_bench's sidecar child (default `flush` file trail), its stdout pipe closed after."""
    with audit_bench.server("flush", work) as srv:
        try:
            yield srv
        finally:
            pipe = srv.proc.stdout
    if pipe is not None:
        pipe.close()


def fleet_env(urls: list[str]) -> dict[str, str]:
    return {**os.environ, "STEPGUARD_NATS_SERVERS": ",".join(urls), "STEPGUARD_REPLICAS": "1"}


def wait_until(check: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(0.1)


def stored(dsn: str) -> int:
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM stepguard_events").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return 0


def _ticks(pid: int) -> tuple[int, int, int]:
    """(ppid, own user+system ticks, reaped children's user+system ticks); (0, 0, 0) when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0, 0, 0
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its reaped children and every live descendant: a child that
    exits between two readings moves from "live" to its parent's reaped total, so a
    difference of two readings counts it once."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stats[int(entry.name)] = _ticks(int(entry.name))
    children: dict[int, list[int]] = {}
    for child, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(child)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        _, own, reaped = stats.get(p) or _ticks(p)
        total += own + reaped
        todo.extend(children.get(p, []))
    return total / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live descendant of a process (from each /proc/<pid>/stat's parent)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = _ticks(int(entry.name))[0]
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def threads(pid: int) -> list[int]:
    """Every thread of a process and of its descendants (those that exited meanwhile
    left out): affinity and niceness are per thread on Linux."""
    tids: list[int] = []
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # exited meanwhile
            tids += [int(t) for t in os.listdir(f"/proc/{p}/task")]
    return tids


def pin(pid: int, cpus: set[int]) -> int:
    """Pin every thread of a process and of its descendants to `cpus` (threads and
    processes started later inherit their parent's); the threads pinned."""
    pinned = 0
    for tid in threads(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)
            pinned += 1
    return pinned


# In the pinned topology, the broker, the collector and PostgreSQL yield the elsewhere
# CPU to the load clients: in a cluster each has machines of its own.
INFRA_NICE = 10


def renice(pid: int, nice: int) -> bool:
    """Set the niceness of every thread of a process and of its descendants (threads
    and processes started later inherit it); False when not allowed (lowering it back
    needs the privilege to)."""
    done = True
    for tid in threads(pid):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except PermissionError:
            done = False
        except OSError:
            continue  # exited meanwhile
    return done


def affinities(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of a process and of its descendants."""
    found: set[frozenset[int]] = set()
    for tid in threads(pid):
        with contextlib.suppress(OSError):
            found.add(frozenset(os.sched_getaffinity(tid)))
    return found


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies of each CPU since boot, from /proc/stat (machine-wide)."""
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in values[:8]]
            idle = v[3] + v[4]  # idle + iowait
            out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


class Utilisation:
    """Each CPU's busy share over the measurements added to it (`add(before, after)`)."""

    def __init__(self) -> None:
        self.busy: dict[int, int] = {}
        self.total: dict[int, int] = {}

    def add(self, before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> None:
        for cpu, (busy, total) in after.items():
            b0, t0 = before.get(cpu, (busy, total))
            self.busy[cpu] = self.busy.get(cpu, 0) + busy - b0
            self.total[cpu] = self.total.get(cpu, 0) + total - t0

    def shares(self) -> dict[str, float]:
        return {str(c): self.busy[c] / self.total[c] for c in sorted(self.total) if self.total[c]}


@dataclass(frozen=True)
class Topology:
    """Which CPUs the pod (sidecars, shipper) and everything else (broker, collector,
    PostgreSQL, the load clients in this process) may use."""

    name: str
    pod: set[int]
    elsewhere: set[int]


def topologies() -> list[Topology]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("the fleet benchmark pins the pod to one CPU and the rest to another")
    every = set(cpus)
    return [Topology("pinned", {cpus[0]}, set(cpus[1:])), Topology("shared", every, every)]


class CpuMeter:
    """CPU seconds used by named process trees between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        return {name: tree_cpu_s(pid) for name, pid in self.pids.items()}

    def start(self) -> None:
        self.before = self.read()

    def stop(self) -> dict[str, float]:
        after = self.read()
        self.used = {n: max(0.0, after[n] - self.before[n]) for n in self.pids}
        return self.used


def lines_in(trail: Path) -> int:
    return sum(
        p.read_bytes().count(b"\n")
        for p in trail.parent.glob(trail.name + "*")
        if not p.name.endswith(".head")
    )


# -- 1. throughput, shipping on vs off --------------------------------------------------


def group_cpu_s(pids: list[int]) -> float:
    """CPU seconds of process trees; 0 stands for this process (every thread of it)."""
    return sum(time.process_time() if pid == 0 else tree_cpu_s(pid) for pid in pids)


def throughput(
    on: audit_bench.Server,
    off: audit_bench.Server,
    rounds: int,
    clients: int,
    seconds: float,
    groups: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """The on/off rounds; with `groups` (name -> pids, 0 for this process), also how many
    CPUs' worth each group used during the measurements."""
    rates: dict[str, list[float]] = {"on": [], "off": []}
    cpu_us: dict[str, list[float]] = {"on": [], "off": []}  # sidecar tree, per decision
    busy = {"on": Utilisation(), "off": Utilisation()}
    groups = groups or {}
    used_s = {mode: dict.fromkeys(groups, 0.0) for mode in ("on", "off")}
    wall = {"on": 0.0, "off": 0.0}
    for _ in range(1 if groups else 0):  # a warm-up of each after (re)pinning: not counted
        for srv in (on, off):
            audit_bench.measure(srv, "steps", clients, 0.2, 0.5)
    for r in range(rounds):
        order = [("on", on), ("off", off)] if r % 2 == 0 else [("off", off), ("on", on)]
        for name, srv in order:
            answered = len(srv.ids)
            g0 = {g: group_cpu_s(pids) for g, pids in groups.items()}
            w0 = time.perf_counter()
            cpu0, ticks0 = tree_cpu_s(srv.proc.pid), cpu_ticks()
            m = audit_bench.measure(srv, "steps", clients, 0.5, seconds)
            busy[name].add(ticks0, cpu_ticks())
            wall[name] += time.perf_counter() - w0
            for g, pids in groups.items():
                used_s[name][g] += group_cpu_s(pids) - g0[g]
            used = tree_cpu_s(srv.proc.pid) - cpu0
            rates[name].append(m["decisions_per_s"])
            cpu_us[name].append(used / max(len(srv.ids) - answered, 1) * 1e6)
        print(
            f"round {r + 1}: on {rates['on'][-1]:.0f}/s, off {rates['off'][-1]:.0f}/s", flush=True
        )
    ratio = paired_ratio(rates["on"], rates["off"])
    return {
        "rates": rates,
        "cpu_busy": {name: u.shares() for name, u in busy.items()},
        "cpus_used": {
            mode: {g: u / wall[mode] if wall[mode] else 0.0 for g, u in used_s[mode].items()}
            for mode in used_s
        },
        "sidecar_cpu_us_per_decision": {
            "on": statistics.median(cpu_us["on"]),
            "off": statistics.median(cpu_us["off"]),
            "rounds": cpu_us,
        },
        "on": statistics.median(rates["on"]),
        "off": statistics.median(rates["off"]),
        "ratio": ratio.median,
        "interval": [ratio.low, ratio.high],
        "verdict": verdict(ratio, TARGET, at_most=False),
    }


# -- 2. lag at a steady rate ------------------------------------------------------------


async def paced(target: str, rate: float, seconds: float, runs: Iterator[int]) -> list[str]:
    """Open loop: a call every 1/rate s (at most 256 in flight); the decision ids answered."""
    ids: list[str] = []
    sem = asyncio.Semaphore(256)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AuthorizerStub(channel)

        async def one(msg: pb.AuthorizeRequest) -> None:
            try:
                resp = await stub.Authorize(msg, timeout=10)
                ids.append(resp.decision_id)
            finally:
                sem.release()

        start = time.perf_counter()
        tasks = []
        messages = audit_bench.step_requests(runs)
        n = 0
        while (due := start + n / rate) < start + seconds:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            tasks.append(asyncio.create_task(one(next(messages))))
            n += 1
        await asyncio.gather(*tasks)
    return ids


def lag(on: audit_bench.Server, dsn: str, rate: float, seconds: float) -> dict[str, Any]:
    started = time.perf_counter()
    ids = asyncio.run(paced(on.target, rate, seconds, on.runs))
    achieved = len(ids) / (time.perf_counter() - started)
    on.ids.extend(ids)
    query = (
        "SELECT extract(epoch FROM received_at - (time)::timestamptz) FROM stepguard_events "
        "WHERE kind = 'decision' AND convert_from(line, 'UTF8')::jsonb ->> 'id' = ANY(%s)"
    )

    def lags() -> list[float]:
        with psycopg.connect(dsn) as conn:
            return [float(r[0]) for r in conn.execute(query, (ids,)).fetchall()]

    wait_until(lambda: len(lags()) == len(ids), "every paced decision in PostgreSQL")
    found = sorted(lags())
    return {
        "rate": rate,
        "achieved": achieved,
        "decisions": len(ids),
        "p50_s": found[len(found) // 2],
        "p99_s": found[min(len(found) - 1, int(len(found) * 0.99))],
        "max_s": found[-1],
    }


# -- 3. collector ingest ----------------------------------------------------------------


def ingest(work: Path, records: int, collectors: int) -> dict[str, Any]:
    from sidecar.audit.filesink import FileSink
    from tests.fleet.servers import nats_server, postgres_server

    trail_dir = work / f"ingest-{collectors}"
    trail_dir.mkdir()
    sink = FileSink(trail_dir / "audit.jsonl", rotate_bytes=8 << 20)
    for i in range(records):
        sink.write(
            {
                "schema": 1,
                "kind": "decision",
                "id": f"ev-{i}",
                "decision": "ALLOW",
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            }
        )
    sink.close()
    total = lines_in(trail_dir / "audit.jsonl")
    nats_root = work / f"nats-ingest-{collectors}"
    nats_root.mkdir()
    with nats_server(nats_root) as nats, postgres_server() as pg:
        dsn = pg.create_db("ingest")
        env = fleet_env(nats.urls)
        state = work / f"ship-ingest-{collectors}"
        ship = ["ship", "--trail", str(trail_dir / "audit.jsonl"), "--state-dir", str(state)]
        ship += ["--sidecar", "bench", "--replicas", "1"]
        with proc(ship, env, work / "ship-ingest.log"):
            wait_until(
                lambda: (
                    json.loads((state / "status.json").read_text()).get("state") == "caught_up"
                    if (state / "status.json").exists()
                    else False
                ),
                "the trail shipped into the stream",
            )
        with contextlib.ExitStack() as stack:
            for k in range(collectors):
                stack.enter_context(
                    proc(
                        ["collect", "--store", dsn, "--replicas", "1"],
                        env,
                        work / f"collect-ingest-{k}.log",
                    )
                )
            wait_until(lambda: stored(dsn) == total, "the stream drained into PostgreSQL")
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM max(received_at) - min(received_at)) "
                "FROM stepguard_events"
            ).fetchone()
        span = float(row[0]) if row and row[0] else 0.0
    # Rows carry their own insert time (clock_timestamp()); a span too short to time
    # (everything in one batch) is reported as not measured.
    return {
        "collectors": collectors,
        "records": total,
        "span_s": span,
        "events_per_s": total / span if span > 0.05 else float("nan"),
    }


# -- the run ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.fleet.servers import nats_server, postgres_server

    load = [os.getloadavg()[0]]
    every = set(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="fleet-bench-", dir=ROOT / "benchmarks") as tmp:
        work = Path(tmp)
        (work / "nats").mkdir()
        with nats_server(work / "nats") as nats, postgres_server() as pg:
            dsn = pg.create_db("bench")
            env = fleet_env(nats.urls)
            with (
                sidecar(work / "off") as off,
                sidecar(work / "on") as on,
                proc(
                    ["collect", "--store", dsn, "--replicas", "1"], env, work / "collect.log"
                ) as collector,
                proc(
                    [
                        "ship",
                        "--trail",
                        str(on.audit),
                        "--state-dir",
                        str(work / "ship-state"),
                        "--sidecar",
                        "bench",
                        "--replicas",
                        "1",
                    ],
                    env,
                    work / "ship.log",
                ) as shipper,
            ):
                postmaster = pg.pid()
                assert nats.nodes[0].proc is not None and postmaster is not None
                meter = CpuMeter(
                    {
                        "sidecar (on)": on.proc.pid,
                        "shipper": shipper.pid,
                        "nats-server": nats.nodes[0].proc.pid,
                        "collector": collector.pid,
                        "postgresql": postmaster,
                    }
                )
                wait_until(lambda: stored(dsn) == lines_in(on.audit), "the start-up records")
                measured: dict[str, dict[str, Any]] = {}
                lagged: list[dict[str, Any]] = []
                for topo in topologies():
                    # this process (the load clients) and all it started, PostgreSQL (pg_ctl
                    # detached it), then the pod: both sidecars and the shipper
                    pin(os.getpid(), topo.elsewhere)
                    pin(postmaster, topo.elsewhere)
                    for pid in (on.proc.pid, off.proc.pid, shipper.pid):
                        pin(pid, topo.pod)
                    for pid, cpus in (
                        (on.proc.pid, topo.pod),
                        (shipper.pid, topo.pod),
                        (nats.nodes[0].proc.pid, topo.elsewhere),
                        (collector.pid, topo.elsewhere),
                        (postmaster, topo.elsewhere),
                    ):
                        if affinities(pid) != {frozenset(cpus)}:
                            raise RuntimeError(f"{pid} is not pinned to {cpus}")
                    print(f"topology {topo.name}: pod {topo.pod}, elsewhere {topo.elsewhere}")
                    infra = [nats.nodes[0].proc.pid, collector.pid, postmaster]
                    nice = INFRA_NICE if topo.name == "pinned" else 0
                    reniced = all([renice(pid, nice) for pid in infra])
                    shipped0 = lines_in(on.audit)
                    meter.start()
                    groups = {
                        "pod": [on.proc.pid, off.proc.pid, shipper.pid],
                        "elsewhere": [nats.nodes[0].proc.pid, collector.pid, postmaster, 0],
                    }
                    tput = throughput(on, off, args.rounds, args.clients, args.seconds, groups)
                    wait_until(lambda: stored(dsn) == lines_in(on.audit), "the rounds' records")
                    used = meter.stop()
                    shipped = lines_in(on.audit) - shipped0
                    tput["topology"] = {
                        "name": topo.name,
                        "pod": sorted(topo.pod),
                        "elsewhere": sorted(topo.elsewhere),
                        "infra_nice": nice if reniced else None,
                    }
                    tput["cpu"] = {
                        "records_shipped": shipped,
                        "cpu_s": used,
                        "us_per_record": {n: u / max(shipped, 1) * 1e6 for n, u in used.items()},
                    }
                    measured[topo.name] = tput
                    if topo.name == "pinned":  # the lag, as deployed: nobody yields
                        lag_nice = all([renice(pid, 0) for pid in infra])
                        lagged = [lag(on, dsn, rate, args.lag_seconds) for rate in args.rates]
                        for row in lagged:
                            row["infra_nice"] = 0 if lag_nice else INFRA_NICE
                        wait_until(
                            lambda: stored(dsn) == lines_in(on.audit), "the whole trail stored"
                        )
                pin(os.getpid(), every)  # the ingest: every process free to use every CPU
        ingested = [ingest(work, args.ingest, k) for k in (1, 2)]
    load.append(os.getloadavg()[0])
    return {
        "throughput": measured["pinned"],
        "throughput_shared": measured["shared"],
        "lag": lagged,
        "ingest": ingested,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "load_average": load,
    }


SATURATED = 0.95  # a CPU this busy during the measurements had nothing to spare


def _tput_row(t: dict[str, Any], label: str, judged: bool) -> str:
    each = ", ".join(
        f"{a:.0f}/{b:.0f}" for a, b in zip(t["rates"]["on"], t["rates"]["off"], strict=True)
    )
    return (
        f"| decisions/s, shipping on / off, {label} (each round: {each}) | {t['on']:.0f} / "
        f"{t['off']:.0f} decisions/s: {t['ratio']:.3f}x ({t['interval'][0]:.3f} to "
        f"{t['interval'][1]:.3f}) | "
        + (f">= {TARGET}x | {t['verdict']} |" if judged else "not the verdict | |")
    )


def _busy(t: dict[str, Any], mode: str, cpus: list[int], group: str) -> str:
    shares = t["cpu_busy"][mode]
    busy = " + ".join(f"{shares.get(str(c), float('nan')) * 100:.0f}%" for c in cpus)
    ours = t.get("cpus_used", {}).get(mode, {}).get(group)
    return busy if ours is None else f"{busy} ({ours:.2f} CPU by its processes)"


def _saturation(t: dict[str, Any]) -> str:
    """Whether the elsewhere CPU had room with shipping on (else the load clients, on it,
    may have sent fewer calls than the pod could answer)."""
    shares = t["cpu_busy"]["on"]
    where = t["topology"]["elsewhere"]
    busy = max(shares.get(str(c), 0.0) for c in where)
    used = t.get("cpus_used", {})
    ours = used.get("on", {}).get("elsewhere", float("nan"))
    off = used.get("off", {}).get("elsewhere", float("nan"))
    if busy >= SATURATED:
        return (
            f"With shipping on, the elsewhere CPU was saturated ({busy * 100:.0f}% busy; the "
            f"benchmark's processes there used {ours:.2f} CPU, {off:.2f} with shipping off, "
            "the rest: other processes of the shared machine): the load clients share it with the "
            "broker, the collector and PostgreSQL, so they may have sent fewer calls than "
            "the pod could answer, and the pinned ratio is pessimistic for shipping."
        )
    return (
        f"With shipping on, the elsewhere CPU was not saturated ({busy * 100:.0f}% busy): the "
        "load clients had room, and the pinned ratio is the pod's own."
    )


def _yield_sentence(t: dict[str, Any]) -> str:
    nice = t["topology"].get("infra_nice")
    if not nice:
        return "On the elsewhere CPU every process has the same priority."
    return (
        f"On the elsewhere CPU the broker, the collector and PostgreSQL run at nice {nice}, so "
        "the load clients are served first: in a cluster each has machines of its own, and "
        "what they do not get in time only delays the records (the lag below is measured "
        "with every process at nice 0)."
    )


def render(summary: dict[str, Any], command: str, commit: str, data_file: str, when: str) -> str:
    t, sh = summary["throughput"], summary["throughput_shared"]
    pod, where = t["topology"]["pod"], t["topology"]["elsewhere"]
    cpu, cpu_sh = t["cpu"], sh["cpu"]
    side, side_sh = t["sidecar_cpu_us_per_decision"], sh["sidecar_cpu_us_per_decision"]
    cpu_rows = [
        f"| {name} | {cpu['cpu_s'][name]:.2f} | {per:.1f} | {cpu_sh['cpu_s'][name]:.2f} | "
        f"{cpu_sh['us_per_record'][name]:.1f} |"
        for name, per in cpu["us_per_record"].items()
    ]
    ingest_rows = [
        f"| {i['collectors']} | {i['records']} | {i['span_s']:.2f} | {i['events_per_s']:.0f} |"
        for i in summary["ingest"]
    ]
    every = ",".join(str(c) for c in sorted({*pod, *where}))
    a, b = ",".join(str(c) for c in pod), ",".join(str(c) for c in where)
    busy_rows = [
        f"| {name} | {mode} | {_busy(x, mode, pod, 'pod')} | {_busy(x, mode, where, 'elsewhere')} |"
        for name, x in (("pinned", t), ("shared", sh))
        for mode in ("on", "off")
    ]
    return "\n".join(
        [
            "## Fleet: shipping and collecting",
            "",
            f"Command: `{command}`, run {when} on commit {commit}; every round: `{data_file}`. "
            f"Real nats-server (JetStream, `sync_interval: always`, R1 stream) and PostgreSQL "
            f"on loopback; {summary['clients']} concurrent clients, {summary['seconds']:g} s "
            f"per measurement, {summary['rounds']} rounds per topology, shipping on and off in "
            "turn (order rotating); the ratio is the median of per-round ratios with a 95% "
            "bootstrap interval; a verdict is met when the whole interval is at or above the "
            f"target. 1-minute load average {summary['load_average'][0]:.1f} at start, "
            f"{summary['load_average'][1]:.1f} at end (the machine is shared). Machine: "
            f"{os.cpu_count()} CPUs, {platform.platform()}.",
            "",
            "Topology, by CPU affinity (every thread of every process the benchmark starts, "
            f"their children included). **pinned** (the verdict) is a pod's shape: CPU {a} "
            "runs the sidecar and the shipper together (they compete for one core: the "
            f"conservative choice); CPU {b} runs the broker, the collector, PostgreSQL and "
            "the load clients, which in a cluster run elsewhere. The same pinning for on and "
            f"off. {_yield_sentence(t)} **shared** (not the verdict): every process free to "
            f"use CPUs {every}, as this figure was first taken; there the broker, collector "
            "and database take CPU from the sidecar, which a deployment does not do.",
            "",
            "| measurement | figure | target | verdict |",
            "|---|---|---|---|",
            _tput_row(t, "pinned", True),
            _tput_row(sh, "shared", False),
            *(
                f"| lag decision -> PostgreSQL row at {lg['rate']:.0f} decisions/s asked "
                f"({lg['achieved']:.0f} achieved, {lg['decisions']} decisions; pinned, "
                f"nice {lg.get('infra_nice', 0)}) | p50 "
                f"{lg['p50_s'] * 1000:.0f} ms, p99 {lg['p99_s'] * 1000:.0f} ms, max "
                f"{lg['max_s'] * 1000:.0f} ms | | |"
                for lg in summary["lag"]
            ),
            "",
            "Each CPU's utilisation during the measurements (from /proc/stat, machine-wide: "
            "other users of the shared machine count too), and in brackets how many CPUs' "
            "worth the benchmark's own processes of that side used (pod: both sidecars and "
            "the shipper; elsewhere: the broker, the collector, PostgreSQL and this process "
            f"with the load clients; shared: the same groups, on either CPU). {_saturation(t)}",
            "",
            f"| topology | shipping | CPU {a} (pod) busy | CPU {b} (elsewhere) busy |",
            "|---|---|---|---|",
            *busy_rows,
            "",
            f"CPU during each topology's {summary['rounds']} rounds and until their records "
            f"were all in PostgreSQL ({cpu['records_shipped']} records shipped pinned, "
            f"{cpu_sh['records_shipped']} shared; each process with its children, from "
            "/proc/<pid>/stat; the sidecar row includes its decisions). In a pod only the "
            "shipper runs beside the sidecar. Sidecar CPU per decision (medians of the rounds): "
            f"pinned on {side['on']:.0f} µs, off {side['off']:.0f} µs; shared on "
            f"{side_sh['on']:.0f} µs, off {side_sh['off']:.0f} µs.",
            "",
            "| process | pinned: CPU s | pinned: CPU µs per shipped record | shared: CPU s | "
            "shared: CPU µs per shipped record |",
            "|---|---|---|---|---|",
            *cpu_rows,
            "",
            "Collector ingest, every process free to use every CPU:",
            "",
            "| collectors | records | span (s) | events/s ingested |",
            "|---|---|---|---|",
            *ingest_rows,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[2000.0, 500.0],
        help="paced rates for the lag (decisions/s, comma-separated): the issue's 2,000, and "
        "one a loaded 2-core machine sustains, for the pipeline's own latency",
    )
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--ingest", type=int, default=20000, help="records to ingest")
    parser.add_argument("--write", action="store_true", help="record in benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    commit = machine.commit()
    summary = run(args)
    command = ".venv/bin/python -m benchmarks.fleet_bench " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    data_file = "not written"
    if args.write:
        record = {
            "command": command.strip(),
            "commit": commit,
            "started": started.isoformat(timespec="seconds"),
            **summary,
        }
        data_file = save_data("fleet", started.isoformat(), record).relative_to(ROOT).as_posix()
    body = render(
        summary, command.strip(), commit, data_file, started.isoformat(timespec="seconds")
    )
    print(body)
    if args.write:
        write_block(RESULTS, "fleet-bench", "python -m benchmarks.fleet_bench --write", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
