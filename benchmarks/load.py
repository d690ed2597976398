"""The load generator: one for every server, so figures compare.

Every server is driven the same way: requests are serialized before the
clock starts and sent as raw bytes through grpcio's generic stubs (Cerbos's
with its own generated messages, stepguard's with its own), responses are
taken as raw bytes, and each call is timed in the client with
perf_counter_ns after a warm-up. Sequential load is one blocking client;
concurrent load is N asyncio tasks, each with a channel and so a connection of
its own (as each process of an orchestrator's worker pool has its own): with
`serve --workers N` the kernel spreads TCP *connections* over the workers
(SO_REUSEPORT), so clients sharing one connection would all land on one worker.
A stream is one bidirectional call (one connection, so one worker) with up to
`window` requests in flight. A Unix socket target of a server with worker
processes is dialled the way sidecar.client dials it: every worker's socket,
calls spread round-robin.

Server CPU is read from /proc for the server's whole process tree (the
process and all its descendants: a supervisor and its workers), before and
after the timed window; only calls started inside the window are timed. The
load generator's own CPU (this process, every thread) is read over the same
window: on a small machine it competes with the server for the cores.

Measurements of one comparison are interleaved in rounds, the order rotated
from one round to the next (A B C, B C A, C A B, ...), so that drift in a
shared machine's load hits every subject alike and no subject always goes
first. Each round's figures are kept (the paired ratios and their intervals
in benchmarks/stats.py are computed from them); the tables show the samples
of all rounds merged.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import grpc.aio

from sidecar.client import spread_over_workers

# The end-of-stream marker of grpc.aio reads (absent from the type stubs).
EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009
_TICK = os.sysconf("SC_CLK_TCK")


# Every channel of the load generator gets its own connection: grpc shares a
# connection between channels of the same target and arguments otherwise.
OWN_CONNECTION: tuple[tuple[str, Any], ...] = (("grpc.use_local_subchannel_pool", 1),)


def _raw(b: bytes) -> bytes:
    return b


def channel_args(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """The target and options of one client's channel: its own connection; on a Unix
    socket of a server with workers, every worker's socket (sidecar.client's spreading)."""
    spread, options = spread_over_workers(target, list(OWN_CONNECTION))
    return spread, list(options)


@dataclass(frozen=True, slots=True)
class Subject:
    """What to call: a server, a method, and the i-th request's bytes."""

    label: str
    target: str
    pid: int | None
    method: str
    request: Callable[[int], bytes]
    per_call: int = 1  # decisions per call (batch size)
    stream: bool = False


@dataclass
class Samples:
    latencies_ns: list[int] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: float | None = 0.0
    client_cpu_s: float = 0.0  # the load generator's own CPU in the timed window

    def add(self, other: Samples) -> None:
        self.latencies_ns.extend(other.latencies_ns)
        self.seconds += other.seconds
        self.client_cpu_s += other.client_cpu_s
        if self.cpu_s is None or other.cpu_s is None:
            self.cpu_s = None
        else:
            self.cpu_s += other.cpu_s


@dataclass(frozen=True, slots=True)
class Stats:
    """One measurement. `per_call` decisions are made by each call (batch size)."""

    calls: int
    seconds: float
    p50_us: float
    p99_us: float
    per_call: int = 1
    server_cpu_us: float | None = None  # server CPU time per decision
    client_cpu_us: float | None = None  # the load generator's CPU time per decision
    rounds: tuple[Stats, ...] = ()  # the same figures, round by round

    def per_round(self, key: str) -> list[float]:
        """One figure (`p50_us`, `p99_us`, `decisions_per_s`) of every round, in order."""
        return [float(getattr(r, key)) for r in self.rounds]

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def decisions_per_s(self) -> float:
        return self.calls_per_s * self.per_call

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
            "p50_us": round(self.p50_us, 1),
            "p99_us": round(self.p99_us, 1),
            "per_call": self.per_call,
            "calls_per_s": round(self.calls_per_s, 1),
            "decisions_per_s": round(self.decisions_per_s, 1),
            "server_cpu_us": None if self.server_cpu_us is None else round(self.server_cpu_us, 1),
            "client_cpu_us": None if self.client_cpu_us is None else round(self.client_cpu_us, 1),
            **({"rounds": [r.round_json() for r in self.rounds]} if self.rounds else {}),
        }

    def round_json(self) -> dict[str, Any]:
        """One round's figures, for the raw data file (benchmarks/data/)."""
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
            "p50_us": round(self.p50_us, 1),
            "p99_us": round(self.p99_us, 1),
            "decisions_per_s": round(self.decisions_per_s, 1),
            "server_cpu_us": None if self.server_cpu_us is None else round(self.server_cpu_us, 1),
            "client_cpu_us": None if self.client_cpu_us is None else round(self.client_cpu_us, 1),
        }

    @staticmethod
    def from_samples(s: Samples, per_call: int) -> Stats:
        lat = sorted(s.latencies_ns)
        cpu = client = None
        if s.cpu_s is not None and lat:
            cpu = s.cpu_s * 1e6 / (len(lat) * per_call)
        if lat:
            client = s.client_cpu_s * 1e6 / (len(lat) * per_call)
        return Stats(
            calls=len(lat),
            seconds=s.seconds,
            p50_us=percentile(lat, 0.50),
            p99_us=percentile(lat, 0.99),
            per_call=per_call,
            server_cpu_us=cpu,
            client_cpu_us=client,
        )


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in microseconds."""
    if not sorted_ns:
        return float("nan")
    rank = max(0, min(len(sorted_ns) - 1, round(q * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[rank] / 1000


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # utime, stime, cutime, cstime: a worker that died and was waited for moves
    # its CPU into its parent's cutime/cstime, so the tree's sum never drops.
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / _TICK


def tree_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process and all its descendants (Linux /proc),
    children that ended and were waited for included; None when the process is gone.

    A supervisor with N worker processes is one server: its CPU is theirs summed.
    """
    if pid is None:
        return None
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := _stat(entry.name)) is not None:
            stats[int(entry.name)] = st
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats[p][1]
        todo += children.get(p, [])
    return total


class Counter:
    """Request numbers, shared by every client of one subject across rounds."""

    def __init__(self) -> None:
        self._it = itertools.count()

    def __call__(self) -> int:
        return next(self._it)


def _cpu_delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def sequential(subject: Subject, seconds: float, counter: Counter, warmup: float) -> Samples:
    """One blocking client, one call at a time."""
    clock = time.perf_counter_ns
    target, options = channel_args(subject.target)
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(
            subject.method, request_serializer=_raw, response_deserializer=_raw
        )
        end = clock() + int(warmup * 1e9)
        while clock() < end:
            call(subject.request(counter()))
        samples: list[int] = []
        cpu0, own0 = tree_cpu_s(subject.pid), time.process_time()
        start = t = clock()
        end = start + int(seconds * 1e9)
        while t < end:
            req = subject.request(counter())
            t = clock()
            call(req)
            samples.append(clock() - t)
        elapsed = (clock() - start) / 1e9
        own1, cpu1 = time.process_time(), tree_cpu_s(subject.pid)
    return Samples(samples, elapsed, _cpu_delta(cpu0, cpu1), own1 - own0)


def concurrent(
    subject: Subject, clients: int, seconds: float, counter: Counter, warmup: float
) -> Samples:
    """`clients` asyncio tasks, each on its own channel (connection), calling back to back."""
    return asyncio.run(_concurrent(subject, clients, seconds, counter, warmup))


async def _concurrent(
    subject: Subject, clients: int, seconds: float, counter: Counter, warmup: float
) -> Samples:
    clock = time.perf_counter_ns
    target, options = channel_args(subject.target)
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(clients)]
    try:
        samples: list[int] = []
        # Calls started before the timed window (the warm-up, and the moment the
        # process tree's CPU is read) are not timed.
        window = {"from": 1 << 62}
        stop_at = clock() + int((warmup + seconds) * 1e9)

        async def worker(channel: grpc.aio.Channel) -> None:
            call = channel.unary_unary(
                subject.method, request_serializer=_raw, response_deserializer=_raw
            )
            while True:
                req = subject.request(counter())
                t = clock()
                if t >= stop_at:
                    return
                await call(req)
                if t >= window["from"]:
                    samples.append(clock() - t)

        tasks = [asyncio.create_task(worker(ch)) for ch in channels]
        await asyncio.sleep(warmup)
        cpu0, own0 = tree_cpu_s(subject.pid), time.process_time()
        window["from"] = start = clock()
        await asyncio.gather(*tasks)
        elapsed = (clock() - start) / 1e9
        own1, cpu1 = time.process_time(), tree_cpu_s(subject.pid)
    finally:
        for ch in channels:
            await ch.close(None)
    return Samples(samples, elapsed, _cpu_delta(cpu0, cpu1), own1 - own0)


def stream(
    subject: Subject, window: int, seconds: float, counter: Counter, warmup: float
) -> Samples:
    """One bidirectional call, up to `window` requests in flight; per-item latency."""
    return asyncio.run(_stream(subject, window, seconds, counter, warmup))


async def _stream(
    subject: Subject, window: int, seconds: float, counter: Counter, warmup: float
) -> Samples:
    clock = time.perf_counter_ns
    target, options = channel_args(subject.target)
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.stream_stream(
            subject.method, request_serializer=_raw, response_deserializer=_raw
        )()  # type: ignore[call-arg]
        slots = asyncio.Semaphore(window)
        sent: list[int] = []
        samples: list[int] = []
        state = {"from": 1 << 62, "done": False, "received": 0}
        stop_at = clock() + int((warmup + seconds) * 1e9)

        async def writer() -> None:
            while clock() < stop_at:
                await slots.acquire()
                sent.append(clock())
                await call.write(subject.request(counter()))
            state["done"] = True
            await call.done_writing()

        async def reader() -> None:
            while True:
                answer = await call.read()
                if answer is EOF:
                    return
                i = state["received"]
                state["received"] = i + 1
                if sent[i] >= state["from"]:  # sent inside the timed window
                    samples.append(clock() - sent[i])
                slots.release()

        tasks = [asyncio.create_task(writer()), asyncio.create_task(reader())]
        await asyncio.sleep(warmup)
        cpu0, own0 = tree_cpu_s(subject.pid), time.process_time()
        state["from"] = start = clock()
        await asyncio.gather(*tasks)
        elapsed = (clock() - start) / 1e9
        own1, cpu1 = time.process_time(), tree_cpu_s(subject.pid)
    return Samples(samples, elapsed, _cpu_delta(cpu0, cpu1), own1 - own0)


@dataclass(frozen=True, slots=True)
class Load:
    """How to drive a subject: `clients` concurrent tasks (0: sequential) or a stream window."""

    clients: int = 0
    window: int = 0

    def run(self, subject: Subject, seconds: float, counter: Counter, warmup: float) -> Samples:
        if subject.stream:
            return stream(subject, max(1, self.window), seconds, counter, warmup)
        if self.clients == 0:
            return sequential(subject, seconds, counter, warmup)
        return concurrent(subject, self.clients, seconds, counter, warmup)


def rotation(count: int, round_no: int) -> list[int]:
    """The order of `count` subjects in round `round_no`: rotated by one each round."""
    shift = round_no % count if count else 0
    return [*range(shift, count), *range(shift)]


def interleaved(
    runs: Sequence[tuple[Subject, Load]],
    seconds: float,
    *,
    rounds: int,
    warmup: float,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Stats]:
    """Measure each (subject, load) for `seconds` in total, in `rounds` interleaved slices,
    the order rotated each round; each result keeps its per-round figures."""
    per_round: list[list[Stats]] = [[] for _ in runs]
    merged = [Samples() for _ in runs]
    counters = [Counter() for _ in runs]
    for r in range(rounds):
        for i in rotation(len(runs), r):
            subject, load = runs[i]
            got = load.run(subject, seconds / rounds, counters[i], warmup)
            per_round[i].append(Stats.from_samples(got, subject.per_call))
            merged[i].add(got)
    stats = [
        replace(Stats.from_samples(m, s.per_call), rounds=tuple(rs))
        for m, (s, _), rs in zip(merged, runs, per_round, strict=True)
    ]
    for (subject, load), st in zip(runs, stats, strict=True):
        progress(f"{subject.label:36s} {_describe(load, subject):10s} {line(st)}")
    return stats


def _describe(load: Load, subject: Subject) -> str:
    if subject.stream:
        return f"window {load.window}"
    return "1 client" if load.clients == 0 else f"{load.clients} clients"


def line(st: Stats) -> str:
    cpu = f"  cpu {st.server_cpu_us:6.0f} us/dec" if st.server_cpu_us is not None else ""
    return f"p50 {st.p50_us:8.0f} us  p99 {st.p99_us:8.0f} us  {st.decisions_per_s:8.0f} dec/s{cpu}"
