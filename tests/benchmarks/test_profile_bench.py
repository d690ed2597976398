"""`python -m benchmarks.profile`: where a miss's CPU goes, from a real profiler (issue 19).

The command is run for real in a tiny configuration (a real sidecar, real
misses, py-spy attached to the server process); what is checked is the
record's shape and its bookkeeping: the buckets split the server's CPU time
and add up to it, every stepguard module the samples reach is in a bucket,
and the run was misses only. No figure is asserted. Where py-spy is absent or
may not attach (ptrace refused), the test goes through `missing`: a skip
locally, a failure under CI=true.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import profile
from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[2]

SERVE = "thread (7): stepguard-aio;thread_run (libpython3.11.so.1.0);Thread.run (threading.py:982)"
DECIDE = (
    f"{SERVE};aio_generic_handler.<locals>.run (sidecar/serving/aiohandlers.py:90)"
    ";AuthorizerServicer._decide (sidecar/serving/servicer.py:208)"
    ";Decider.decide (sidecar/decision/decider.py:243)"
)


def _stack(text: str) -> list[str]:
    return text.split(";")[1:]  # without the thread frame, as read_raw hands them over


@pytest.mark.parametrize(
    ("stack", "bucket"),
    [
        # The Cedar call, down into cedarpy's Rust and orjson: cedarpy.
        (
            f"{DECIDE};evaluate (sidecar/core/engine.py:50);_evaluate (sidecar/core/engine.py:81)"
            ";_is_authorized (sidecar/core/engine.py:122);_RNvserde_json10make_error "
            "(cedarpy/_internal.cpython-311-x86_64-linux-gnu.so);malloc (libc.so.6)",
            "cedarpy",
        ),
        # orjson under the trail's encoder is audit encoding, a write(2) under it is the write.
        (
            f"{DECIDE};Decider._record (sidecar/decision/decider.py:290)"
            ";FileSink.write (sidecar/audit/filesink.py:148)"
            ";encode_event (sidecar/audit/commit.py:396)"
            ";0x7f00 (orjson/orjson.cpython-311-x86_64-linux-gnu.so)",
            "audit_encode",
        ),
        (
            f"{DECIDE};Decider._record (sidecar/decision/decider.py:290)"
            ";FileSink._append (sidecar/audit/filesink.py:195);write (libc.so.6)",
            "audit_write",
        ),
        # A cache miss counted in prometheus_client is metrics, not cache bookkeeping.
        (
            f"{SERVE};Decider.cached (sidecar/decision/decider.py:170)"
            ";Counter.inc (prometheus_client/metrics.py:300)",
            "metrics",
        ),
        # upb straight under `_decide` is the cache key's deterministic encoding.
        (
            f"{DECIDE.rsplit(';', 1)[0]};PyUpb_Message_SerializeInternal (_message.abi3.so)",
            "cache",
        ),
        # upb under validation is conversion; under the handler's parse, protobuf.
        (
            f"{DECIDE.rsplit(';', 1)[0]};request_from_proto (sidecar/core/validate.py:90)"
            ";PyUpb_Message_GetAttr (_message.abi3.so)",
            "convert",
        ),
        (
            f"{SERVE};aio_generic_handler.<locals>.unary.<locals>.handler "
            "(sidecar/serving/aiohandlers.py:130);PyUpb_Message_FromString (_message.abi3.so)",
            "grpc",
        ),
        # No stepguard frame: the innermost library decides; the collector wins anywhere.
        (
            f"{SERVE};run_forever (loop.c:33192);task_step (_asynciomodule.c:2990)"
            ";0x7f01 (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so);sendmsg (libc.so.6)",
            "grpc",
        ),
        (f"{SERVE};run_forever (loop.c:33192);uv_run (core.c:452)", "loop"),
        (f"{DECIDE};gc_collect_main (libpython3.11.so.1.0)", "gc"),
    ],
)
def test_a_sample_goes_to_the_stage_that_did_the_work(stack: str, bucket: str) -> None:
    frames = _stack(stack)
    assert not profile.waiting(frames)
    assert profile.classify(frames).bucket == bucket


def test_a_module_the_tables_do_not_know_is_reported_not_hidden() -> None:
    frames = _stack(f"{DECIDE};brand_new (sidecar/decision/newstage.py:3)")
    verdict = profile.classify(frames)
    assert (verdict.bucket, verdict.unmapped) == ("other", "sidecar/decision/newstage.py")


@pytest.mark.parametrize(
    "stack",
    [
        f"{SERVE};run_forever (loop.c:33192);uv__io_poll (linux.c:1452);epoll_pwait (libc.so.6)",
        f"{SERVE};FileSink._anchor_loop (sidecar/audit/filesink.py:120)"
        ";Event.wait (threading.py:629)"
        ";lock_PyThread_acquire_lock (libpython3.11.so.1.0)"
        ";PyThread_acquire_lock_timed (libpython3.11.so.1.0);0x7f02 (libc.so.6)",
        "thread (1): MainThread;<module> (benchmarks/serve.py:171);main (benchmarks/serve.py:165)"
        ";read (libc.so.6)",
    ],
)
def test_a_blocked_thread_is_waiting_not_working(stack: str) -> None:
    assert profile.waiting(_stack(stack))


@pytest.mark.parametrize(
    ("stack", "kernel"),
    [
        # Back from sendmsg to the client (where a preempted thread is usually found).
        (
            f"{SERVE};0x7f01 (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)"
            ";sendmsg (libc.so.6)",
            True,
        ),
        (f"{DECIDE};FileSink._append (sidecar/audit/filesink.py:195);write (libc.so.6)", True),
        (
            f"{DECIDE};_is_authorized (sidecar/core/engine.py:122);malloc (libc.so.6)"
            ";0x7f03 (libc.so.6)",
            False,
        ),
        (f"{DECIDE};request_from_proto (sidecar/core/validate.py:90)", False),
    ],
)
def test_system_calls_are_told_from_user_code(stack: str, kernel: bool) -> None:
    """A thread's system time is split over the first kind, its user time over the second."""
    assert profile.in_kernel(_stack(stack)) is kernel


def test_cpu_is_split_by_user_and_system_time_not_by_raw_samples() -> None:
    """Wall-clock samples stuck at a system call's exit (a preempted thread) get only the
    thread's system time, however many they are; user time goes to the user-code samples."""
    raw = "\n".join(
        [
            f"{SERVE};0x7f01 (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)"
            ";sendmsg (libc.so.6) 90",
            f"{DECIDE};evaluate (sidecar/core/engine.py:50)"
            ";_is_authorized (sidecar/core/engine.py:122) 30",
            f"{DECIDE};request_from_proto (sidecar/core/validate.py:90) 10",
            f"{SERVE};run_forever (loop.c:33192);uv__io_poll (linux.c:1452)"
            ";epoll_pwait (libc.so.6) 50",
        ]
    )
    prof = profile.read_raw(raw)
    times = profile.ThreadTimes("python", 3.0, 1.0)
    cpu, threads, other = profile.attribute(
        prof, {7: profile.ThreadTimes("python", 1.0, 0.5)}, {7: times}, 2.5
    )
    assert cpu["grpc"] == pytest.approx(0.5)  # the system time, not 90/130 of the total
    assert cpu["cedarpy"] == pytest.approx(1.5)  # 30 of the 40 user-code samples
    assert cpu["convert"] == pytest.approx(0.5)
    assert sum(cpu.values()) == pytest.approx(2.5)
    assert threads[0]["waiting"] == 50 and other["ended"] == 0


def test_the_profile_command_splits_the_server_cpu_into_buckets_that_add_up(
    tmp_path: Path,
) -> None:
    if profile.find_py_spy() is None:
        missing(
            "py-spy is not installed: the dev and bench extras pin it (pip install -e '.[dev]')"
        )
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.profile",
            "--clients",
            "2",
            "--seconds",
            "2",
            "--warmup",
            "0.3",
            "--rate",
            "100",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == profile.PROFILER_UNAVAILABLE:
        missing(f"py-spy cannot profile the server here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert {"command", "started", "commit", "machine", "load_average", "settings"} <= set(record)

    buckets = record["buckets"]
    assert [b["bucket"] for b in buckets] == list(profile.BUCKETS)
    prof = record["profiled"]
    n = len(buckets)
    # The buckets split the server process's CPU time: they add up to it, as do the shares
    # and the per-miss figures; the samples they were split by add up to the working ones.
    assert prof["cpu_s"] > 0 and prof["misses"] > 0
    assert sum(b["cpu_s"] for b in buckets) == pytest.approx(prof["cpu_s"], abs=1e-6 * n)
    assert sum(b["share"] for b in buckets) == pytest.approx(1.0, abs=1e-6 * n)
    assert sum(b["cpu_us_per_miss"] for b in buckets) == pytest.approx(
        prof["cpu_us_per_miss"], abs=1e-3 * n
    )
    samples = prof["samples"]
    assert sum(b["samples"] for b in buckets) == samples["working"]
    assert samples["working"] + samples["waiting"] == samples["total"] > 0
    threads = record["threads"]
    assert sum(t["cpu_s"] for t in threads) + record["other_parts_cpu_s"]["ended"] == (
        pytest.approx(prof["cpu_s"], abs=1e-5 * len(threads))
    )
    assert sum(record["cedarpy_parts"].values()) == next(
        b["samples"] for b in buckets if b["bucket"] == "cedarpy"
    )
    # The profiler saw the miss path: the Cedar call was sampled and put in its bucket, and
    # every stepguard module a sample reached is in the tables.
    assert next(b for b in buckets if b["bucket"] == "cedarpy")["samples"] > 0
    assert record["unmapped"] == {}
    # Misses only: every call evaluated, none answered from the cache.
    trail = record["trail"]
    assert trail["cached"] == 0
    assert trail["decisions"] >= record["unprofiled"]["misses"] + prof["misses"]
