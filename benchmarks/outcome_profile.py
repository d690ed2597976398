"""Where a RecordOutcomes batch's server CPU goes: `python -m benchmarks.outcome_profile`.

In one process, no network: a real sidecar's parts as `stepguard serve` builds
them (`Sidecar` on policies/, its file trail, redactor, DecisionIndex and
outcome recorder; the servicer and the asyncio server's RecordOutcomes
handler, `aio_outcome_handler`, the default server mode's), fed what
benchmarks/outcome_cost.py's *pairs* load sends: RecordOutcomes batches of
`--batch` items (128, the client reporter's largest), each item built by the
client's own `outcome_message` (succeeded, with the effect `EFFECT`, attempt
1) for a real ALLOW decision the decider just made for a step of a new run
(noted in the DecisionIndex as serving notes it, its event in the same
trail). Timed per batch: the handler from the request's bytes to the
response's bytes (parse, in-memory check, validation, judgment, event build,
redaction, encoding, hash chain, one trail write, metrics, the response), the
decisions made in between not counted.

Reports the process CPU per outcome (the median over `--repeat` runs of
`--batches` batches), and with `--profile cprofile` the top functions by own
time (cProfile, this process; `SORT=cumulative` to sort otherwise), or with
`--profile py-spy` where py-spy's samples of this process fall (run under
`py-spy record --native`). Printed; `--json PATH` keeps the figures. Not a
RESULTS.md block: the server's cost in the real benchmark is outcome_cost.py's.

Instructions, repeatable on a busy machine: with `--profile instructions` the
`--batches` requests are made first, then handled one after the other inside a
single `functools.reduce` call, so that

    PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect=functools_reduce \
        python -m benchmarks.outcome_profile --profile instructions --batches 10

counts the handler's instructions alone (divide by the outcomes it prints). The
caches are warm there (no decisions in between): a count to compare versions
with, not the CPU time above.

The garbage collector: the decisions made between batches leave thousands of
young objects each time (what the DecisionIndex keeps of them), and a young
collection they make due would land in whichever batch allocates next. So a
young collection runs, untimed, before each timed batch, and what the handler
itself leaves for the collector is reported instead (young objects left per
outcome), with the collector's time inside the handler.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from benchmarks.outcome_cost import EFFECT
from benchmarks.workload import example_request
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar.client.outcomes import outcome_message
from sidecar.core.event import CallMeta
from sidecar.serving.aiohandlers import aio_outcome_handler
from sidecar.serving.config import Settings
from sidecar.serving.server import Sidecar, tune_gc_for_serving
from sidecar.serving.servicer import AuthorizerServicer

ROOT = Path(__file__).resolve().parent.parent
METHOD = "/stepguard.v1.Authorizer/RecordOutcomes"


class _Details:
    """grpc.HandlerCallDetails for the generic handler's lookup."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Context:
    """What the asyncio handler asks of a call: a loopback peer, no TLS, the client's
    metadata (the reporter sends none of its own)."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "grpc-python-asyncio/1.0"),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"aborted: {code} {details}")


class Harness:
    """A sidecar's outcome path, fed batches for decisions it made itself."""

    def __init__(self, audit: Path, batch: int) -> None:
        settings = Settings(
            policies=ROOT / "policies",
            listen="127.0.0.1:0",
            metrics_listen=None,
            audit_file=str(audit),
        )
        self.sidecar = sc = Sidecar(settings)
        servicer = AuthorizerServicer(  # as Sidecar._start builds it
            sc.holder.current,
            sc.decider,
            settings.limits,
            sc.metrics,
            settings.max_batch_bytes,
            outcomes=sc.outcomes,
            plans=sc.plans,
        )
        method = aio_outcome_handler(servicer).service(_Details(METHOD))  # type: ignore[arg-type]
        assert method is not None and method.unary_unary is not None
        self._handler: Callable[..., Any] = method.unary_unary
        self._serialize = method.response_serializer or (lambda m: m.SerializeToString())
        self._limits = settings.limits
        self._msg = example_request()
        self._batch = batch
        self._runs = 0
        self._loop = asyncio.new_event_loop()
        self._ctx = _Context()
        self.outcomes = 0
        tune_gc_for_serving()  # as benchmarks.serve runs the sidecar
        # The collector's time inside the handler (the garbage it leaves triggers it).
        self.gc_seconds = 0.0
        self.net_objects = 0  # young objects the handler left (collections it would feed)
        self._gc_on = False
        self._gc_started = 0.0
        gc.callbacks.append(self._gc_event)

    def _gc_event(self, phase: str, info: dict[str, Any]) -> None:
        if not self._gc_on:
            return
        if phase == "start":
            self._gc_started = time.process_time()
        else:
            self.gc_seconds += time.process_time() - self._gc_started

    def request(self) -> bytes:
        """A RecordOutcomes batch for `batch` new ALLOW decisions (made now, not timed)."""
        bundle = self.sidecar.holder.current()
        items = []
        for _ in range(self._batch):
            self._runs += 1
            self._msg.context.run_id = f"op-{self._runs}"
            decided = self.sidecar.decider.decide_message(
                bundle, self._msg, CallMeta(peer="ipv4:127.0.0.1:50000"), self._limits, started=0.0
            )
            if decided.result.decision.value != "ALLOW":
                raise RuntimeError("expected ALLOW")
            items.append(
                outcome_message(
                    decided.decision_id,
                    "succeeded",
                    effect=EFFECT,
                    error_class="",
                    started_at=None,
                    finished_at=None,
                    attempt=1,
                )
            )
        return pb.RecordOutcomesRequest(items=items).SerializeToString()

    def answer(self, raw: bytes) -> bytes:
        """The handler, bytes to bytes, as the asyncio server runs it."""
        resp = self._loop.run_until_complete(self._handler(raw, self._ctx))
        out: bytes = self._serialize(resp)
        return out

    def check(self, answer: bytes) -> None:
        resp = pb.RecordOutcomesResponse.FromString(answer)
        if len(resp.results) != self._batch:
            raise RuntimeError("a result per item expected")
        for r in resp.results:
            if r.WhichOneof("result") != "response" or r.response.violation != pb.VIOLATION_NONE:
                raise RuntimeError(f"not recorded as expected: {r}")
        self.outcomes += len(resp.results)

    def timed(
        self, batches: int, wrap: Callable[[Callable[[], None]], None] | None = None
    ) -> float:
        """CPU seconds the handler took over `batches` batches (requests made between);
        the collector's share of it is added to `gc_seconds`."""
        spent = 0.0
        for _ in range(batches):
            raw = self.request()
            answer = b""

            def call(raw: bytes = raw) -> None:
                nonlocal answer
                answer = self.answer(raw)

            # The decisions just made left thousands of young objects (what the index
            # keeps of each); collected here, untimed, so that a collection they would
            # trigger is not charged to the handler. What the handler itself leaves is
            # counted (`net_objects`).
            gc.collect(0)
            count = gc.get_count()[0]
            t0 = time.process_time()
            self._gc_on = True
            try:
                if wrap is None:
                    call()
                else:
                    wrap(call)
            finally:
                self._gc_on = False
            spent += time.process_time() - t0
            self.net_objects += gc.get_count()[0] - count
            self.check(answer)
        return spent

    def close(self) -> None:
        gc.callbacks.remove(self._gc_event)
        self._loop.close()
        self.sidecar.sink.close()


def measure(batches: int, batch: int, repeat: int, profile: str, top: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="outcome-profile-", dir=ROOT / "benchmarks") as tmp:
        audit = Path(tmp) / "audit.jsonl"
        h = Harness(audit, batch)
        try:
            h.timed(3)  # warm-up: imports, caches, the trail's first segment
            h.gc_seconds, h.net_objects = 0.0, 0
            runs = [h.timed(batches) / (batches * batch) * 1e6 for _ in range(repeat)]
            gc_us = h.gc_seconds / (repeat * batches * batch) * 1e6
            net = h.net_objects / (repeat * batches * batch)
            breakdown = ""
            if profile == "cprofile":
                prof = cProfile.Profile()

                def wrap(call: Callable[[], None]) -> None:
                    prof.runcall(call)

                h.timed(batches, wrap)
                out = io.StringIO()
                stats = pstats.Stats(prof, stream=out)
                stats.sort_stats(os.environ.get("SORT", "tottime")).print_stats(top)
                breakdown = out.getvalue()
            elif profile == "instructions":  # under callgrind: the handler alone, in reduce
                raws = [h.request() for _ in range(batches)]
                gc.collect()
                none: list[bytes] = []
                answers = functools.reduce(lambda done, raw: [*done, h.answer(raw)], raws, none)
                for answer in answers:
                    h.check(answer)
            elif profile == "spin":  # under py-spy: only the handler, for a while
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    h.timed(batches)
        finally:
            h.close()
        trail = _verify(audit)
    return {
        "batch": batch,
        "batches": batches,
        "us_per_outcome_runs": runs,
        "us_per_outcome": statistics.median(runs),
        "gc_us_per_outcome": gc_us,
        "net_objects_per_outcome": net,
        "outcomes": h.outcomes,
        "trail_verified": trail,
        "breakdown": breakdown,
    }


def _verify(audit: Path) -> bool:
    from sidecar.audit.segments import collect
    from sidecar.audit.verify import verify

    return bool(verify(collect([audit])[0]).ok)


def py_spy(batches: int, batch: int, top: int) -> str:
    """This harness under `py-spy record --native`: own samples by function, top `top`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        return "py-spy is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        cmd = [spy, "record", "--native", "--format", "raw", "--rate", "500", "-o", str(raw)]
        cmd += ["--", sys.executable, "-m", "benchmarks.outcome_profile", "--profile", "spin"]
        cmd += ["--batches", str(batches), "--batch", str(batch), "--repeat", "1"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        own: dict[str, int] = {}
        under: dict[str, int] = {}
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not any("outcome_profile.py" in f and "answer" in f for f in frames):
                continue  # not the timed handler (the decisions made between)
            n = int(count)
            total += n
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for f in set(frames):
                under[f] = under.get(f, 0) + n
    lines = [f"py-spy: {total} samples in the handler", "", "own samples:"]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n / total * 100:5.1f} %  {f}")
    lines += ["", "inclusive (sidecar frames):"]
    for f, n in sorted(under.items(), key=lambda kv: -kv[1]):
        if "sidecar/" in f and len(lines) < 2 * top + 6:
            lines.append(f"  {n / total * 100:5.1f} %  {f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--profile",
        choices=["none", "cprofile", "py-spy", "spin", "instructions"],
        default="none",
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.profile == "py-spy":
        print(py_spy(args.batches, args.batch, args.top))
        return 0
    record = measure(args.batches, args.batch, args.repeat, args.profile, args.top)
    runs = ", ".join(f"{x:.1f}" for x in record["us_per_outcome_runs"])
    print(
        f"RecordOutcomes, {args.batch} outcomes a batch, {args.batches} batches x "
        f"{args.repeat}: {record['us_per_outcome']:.1f} us CPU per outcome (runs: {runs}; "
        f"the garbage collector: {record['gc_us_per_outcome']:.1f} on average; young objects "
        f"left: {record['net_objects_per_outcome']:.2f} per outcome); "
        f"trail verified: {'yes' if record['trail_verified'] else 'NO'}"
    )
    if args.profile == "instructions":
        print(f"instructions: {args.batches * args.batch} outcomes handled inside functools.reduce")
    if record["breakdown"]:
        print(record["breakdown"])
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
