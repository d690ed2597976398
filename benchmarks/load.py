"""The load generator: one for every server, so figures compare.

A *call* is any zero-argument function that performs one RPC; the generator
times each call on the client (perf_counter_ns) after a warm-up, and reports
p50, p99 and throughput. Sequential load is one blocking client; concurrent
load is N asyncio tasks sharing one channel (HTTP/2 multiplexing, how an
orchestrator worker pool shares a sidecar connection).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Stats:
    """One measurement. `per_call` decisions are made by each call (batch size)."""

    calls: int
    seconds: float
    p50_us: float
    p99_us: float
    per_call: int = 1
    server_cpu_us: float | None = None  # server CPU time per decision

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds

    @property
    def decisions_per_s(self) -> float:
        return self.calls * self.per_call / self.seconds

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
        }


def percentile(sorted_ns: list[int], q: float) -> float:
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


def _stats(
    samples: list[int],
    seconds: float,
    per_call: int,
    cpu: tuple[float | None, float | None],
) -> Stats:
    samples.sort()
    cpu_us = None
    if cpu[0] is not None and cpu[1] is not None and samples:
        cpu_us = (cpu[1] - cpu[0]) * 1e6 / (len(samples) * per_call)
    return Stats(
        calls=len(samples),
        seconds=seconds,
        p50_us=percentile(samples, 0.50),
        p99_us=percentile(samples, 0.99),
        per_call=per_call,
        server_cpu_us=cpu_us,
    )


def sequential(
    call: Callable[[], Any],
    duration: float,
    *,
    warmup: float = 0.5,
    per_call: int = 1,
    server_pid: int | None = None,
) -> Stats:
    """One client, one call at a time, for `duration` seconds after `warmup`."""
    clock = time.perf_counter_ns
    end = clock() + int(warmup * 1e9)
    while clock() < end:
        call()
    samples: list[int] = []
    cpu0 = process_cpu_s(server_pid)
    start = clock()
    end = start + int(duration * 1e9)
    t = start
    while t < end:
        call()
        now = clock()
        samples.append(now - t)
        t = now
    cpu1 = process_cpu_s(server_pid)
    return _stats(samples, (t - start) / 1e9, per_call, (cpu0, cpu1))


def concurrent(
    target: str,
    make_call: Callable[[grpc.aio.Channel], Callable[[], Awaitable[Any]]],
    clients: int,
    duration: float,
    *,
    warmup: float = 0.5,
    per_call: int = 1,
    server_pid: int | None = None,
) -> Stats:
    """`clients` asyncio tasks on one channel, each calling back to back."""
    return asyncio.run(
        _concurrent(target, make_call, clients, duration, warmup, per_call, server_pid)
    )


async def _concurrent(
    target: str,
    make_call: Callable[[grpc.aio.Channel], Callable[[], Awaitable[Any]]],
    clients: int,
    duration: float,
    warmup: float,
    per_call: int,
    server_pid: int | None,
) -> Stats:
    clock = time.perf_counter_ns
    async with grpc.aio.insecure_channel(target) as channel:
        call = make_call(channel)
        samples: list[int] = []
        measuring = False
        stop_at = clock() + int((warmup + duration) * 1e9)

        async def worker() -> None:
            while True:
                t = clock()
                if t >= stop_at:
                    return
                await call()
                if measuring:
                    samples.append(clock() - t)

        tasks = [asyncio.create_task(worker()) for _ in range(clients)]
        await asyncio.sleep(warmup)
        measuring = True
        cpu0 = process_cpu_s(server_pid)
        start = clock()
        await asyncio.gather(*tasks)
        seconds = (clock() - start) / 1e9
        cpu1 = process_cpu_s(server_pid)
    return _stats(samples, seconds, per_call, (cpu0, cpu1))
