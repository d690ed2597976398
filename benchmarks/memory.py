"""RSS of a fresh stepguard after N distinct requests (default settings, cache on).

Distinct requests are the cache's worst case: every one is a miss and adds an
entry until the cache's byte bound (`cache_max_bytes`, 64 MiB by default)
evicts the oldest. They are sent over AuthorizeStream, the fastest way in,
and the server's RSS is sampled as they go.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from benchmarks.procs import WORK, python_server, rss_bytes
from benchmarks.workload import METHOD, example_request, stream_items
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.serving.config import Settings

WINDOW = 64
EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


@dataclass(frozen=True, slots=True)
class MemoryRun:
    requests: int
    seconds: float
    rss_start: int  # after start-up and one request
    rss_end: int
    samples: list[tuple[int, int]]  # (requests so far, RSS bytes)
    cache_max_bytes: int
    allowed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 1),
            "rss_start_mib": round(self.rss_start / 2**20, 1),
            "rss_end_mib": round(self.rss_end / 2**20, 1),
            "rss_max_mib": round(max(r for _, r in self.samples) / 2**20, 1),
            "cache_max_mib": round(self.cache_max_bytes / 2**20, 1),
            "bound_mib": round(bound(self.rss_start, self.cache_max_bytes) / 2**20, 1),
            "allowed": self.allowed,
            "samples": [(n, round(r / 2**20, 1)) for n, r in self.samples],
        }


def bound(rss_start: int, cache_max_bytes: int) -> int:
    """The documented bound (docs/performance.md): start + 1.5 x cache bytes + 32 MiB."""
    return rss_start + cache_max_bytes * 3 // 2 + 32 * 2**20


def run(requests: int, progress: Any = print) -> MemoryRun:
    audit = WORK / "memory-audit.jsonl"
    for old in WORK.glob("memory-audit.jsonl*"):
        old.unlink()
    try:
        with python_server("stepguard-memory", ["stepguard", "--audit-file", str(audit)]) as srv:
            return asyncio.run(_drive(srv.target, srv.pid, requests, progress))
    finally:  # a million events take gigabytes: the trail is not what is measured here
        for old in WORK.glob("memory-audit.jsonl*"):
            old.unlink()


async def _drive(target: str, pid: int, requests: int, progress: Any) -> MemoryRun:
    make = stream_items(example_request(), hit=False, tag="mem")
    every = max(1, requests // 20)
    samples: list[tuple[int, int]] = []
    allowed = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            METHOD + "AuthorizeStream",
            request_serializer=lambda b: b,
            response_deserializer=pb.AuthorizeStreamResponse.FromString,
        )()  # type: ignore[call-arg]
        await call.write(make(2**63))
        first: Any = await call.read()
        assert first is not EOF and first.response.decision == pb.DECISION_ALLOW
        rss_start = rss_bytes(pid)
        samples.append((0, rss_start))
        slots = asyncio.Semaphore(WINDOW)
        start = time.monotonic()

        async def writer() -> None:
            for i in range(requests):
                await slots.acquire()
                await call.write(make(i))
            await call.done_writing()

        async def reader() -> None:
            nonlocal allowed
            done = 0
            while True:
                answer: Any = await call.read()
                if answer is EOF:
                    return
                slots.release()
                done += 1
                allowed += answer.response.decision == pb.DECISION_ALLOW
                if done % every == 0:
                    samples.append((done, rss_bytes(pid)))
                    if done % (every * 5) == 0:
                        progress(f"memory: {done} requests, RSS {samples[-1][1] / 2**20:.1f} MiB")

        await asyncio.gather(writer(), reader())
        seconds = time.monotonic() - start
    return MemoryRun(
        requests=requests,
        seconds=seconds,
        rss_start=rss_start,
        rss_end=samples[-1][1],
        samples=samples,
        cache_max_bytes=Settings().cache_max_bytes,
        allowed=allowed,
    )
