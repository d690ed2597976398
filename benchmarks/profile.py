"""Where a cache miss's CPU goes in the sidecar: `python -m benchmarks.profile [--write]`.

The real sidecar is started the way every benchmark starts it (`python -m
benchmarks.serve stepguard` on policies/, its file trail on, the default
server mode) and driven with misses only: every request is a step of a new
run (workload.distinct, a new `run_id` each call), sent by N concurrent
clients, each on its own connection, with the load generator of `./dev bench`
(benchmarks/load.py). Two phases of the same length follow a warm-up:

1. unprofiled: the server CPU per miss and the throughput as `./dev bench`
   measures them (process CPU time from /proc over the calls answered);
2. profiled: the same load while py-spy samples the server process
   (`py-spy record --pid PID --native --threads --format raw`): every
   thread, Python frames and native ones (gRPC's C core, protobuf's upb,
   cedarpy's Rust, orjson, libc). py-spy stops the process at each sample
   (ptrace), which slows the server; the CPU per miss of both phases is
   reported so the cost of watching shows.

Attribution. Each thread's CPU time in the profiled phase is read from
/proc (utime + stime per task), so the buckets add up to the process's CPU
time exactly; a thread's time is split over the buckets in proportion to its
*working* samples: its user time over the samples outside system calls, its
system time over the samples in one. py-spy samples by the wall clock: a
thread that is runnable but waiting for a CPU shows the frame it was
preempted at, which on a busy machine is mostly the exit of a system call
that woke another task (sendmsg to the client, a write to an eventfd), so
counting samples alone would charge the waiting to those calls; splitting
user and system time separately keeps it out (the record gives each
thread's run and run-queue time from /proc schedstat). A sample whose stack
ends in a blocking wait (epoll, a futex, a condition variable, stdin) is not
work and is left out: py-spy reports such threads as active. A working
sample belongs to the stage of the innermost stepguard frame on its stack (`SIDECAR_MODULES` and
`SIDECAR_FUNCTIONS`), libraries called from a stage counting for it (orjson
under the audit encoder is audit encoding; upb under validation is
conversion); a sample with no stepguard frame goes by its innermost
library frame (`LIBRARIES`: grpc and protobuf, the event loop); a sample
inside the garbage collector is the collector's, whoever allocated. CPU of a
thread with no working sample goes by the thread's name (gRPC's C-core
threads are grpc), and what is left (threads that ended during the phase)
is `other`. Every stepguard module a sample reaches must be in the tables:
one that is not is listed under `unmapped` (tests/benchmarks/test_profile_bench.py
fails then), so a module moved or added on the miss path cannot silently
turn into `other`.

Without --write the table is printed and the record kept in
benchmarks/.work/profile/profile.json (or --json PATH); --write also saves
it as benchmarks/data/profile-<date>.json and writes the "profile" block of
benchmarks/RESULTS.md. Exit status 3 means py-spy is absent or may not attach
(ptrace refused: Yama's ptrace_scope or a missing CAP_SYS_PTRACE); the
message says which.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import load, machine, workload
from benchmarks.procs import ROOT, WORK, python_server
from benchmarks.results import save_data, table, write_block

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PROFILER_UNAVAILABLE = 3
_TICK = os.sysconf("SC_CLK_TCK")

# Bucket key -> what the table calls it, in the table's order.
BUCKETS: dict[str, str] = {
    "grpc": "gRPC + protobuf (C core, cygrpc, upb; request parse, response encoding)",
    "loop": "event loop (uvloop, asyncio)",
    "convert": "request conversion + validation (validate, jsonreq, call metadata, now)",
    "engine": "engine: policy index, Cedar request and result",
    "entities": "entity assembly (engine request entities)",
    "cedarpy": "cedarpy is_authorized (incl. its JSON in and out)",
    "audit_encode": "audit event building + encoding (event, redact, canonical JSON)",
    "audit_write": "audit write (hash chain, write(2), commit bookkeeping)",
    "metrics": "metrics (prometheus_client)",
    "cache": "cache bookkeeping (wire key, lookup, entry, hit template)",
    "glue": "handler glue (servicer, decider, decision ids)",
    "gc": "garbage collector",
    "other": "other (no bucket matched; CPU no sample explains)",
}

# The stage of stepguard's own code, by module (None: look further out, at the caller).
SIDECAR_MODULES: dict[str, str | None] = {
    "sidecar/serving/servicer.py": "glue",
    "sidecar/serving/aiohandlers.py": "glue",
    "sidecar/serving/answer.py": "grpc",
    "sidecar/serving/streams.py": "glue",
    "sidecar/serving/aioserver.py": None,  # starts the loop: what runs under it is the loop's
    "sidecar/serving/server.py": None,
    "sidecar/core/validate.py": "convert",
    "sidecar/core/jsonreq.py": "convert",
    "sidecar/core/decoderefusal.py": "convert",
    "sidecar/core/limits.py": "convert",
    "sidecar/core/textsafe.py": "convert",
    "sidecar/decision/identity.py": "convert",
    "sidecar/core/engine.py": "engine",
    "sidecar/core/index.py": "engine",
    "sidecar/core/bundle.py": "engine",
    "sidecar/core/entitystore.py": "entities",
    "sidecar/core/model.py": None,  # value objects: their work is their caller's
    "sidecar/core/errors.py": None,
    "sidecar/core/ids.py": "glue",
    "sidecar/core/event.py": "audit_encode",
    "sidecar/audit/redact.py": "audit_encode",
    "sidecar/audit/chain.py": "audit_write",
    "sidecar/audit/commit.py": "audit_write",
    "sidecar/audit/filesink.py": "audit_write",
    "sidecar/audit/rotation.py": "audit_write",
    "sidecar/audit/recovery.py": "audit_write",
    "sidecar/audit/pinning.py": "audit_write",
    "sidecar/audit/segments.py": "audit_write",
    "sidecar/audit/anchor.py": "audit_write",
    "sidecar/audit/stream.py": "audit_write",
    "sidecar/audit/files.py": "audit_write",
    "sidecar/audit/sink.py": "audit_write",
    "sidecar/decision/metrics.py": "metrics",
    "sidecar/decision/cache.py": "cache",
    "sidecar/decision/decider.py": "glue",
    "sidecar/decision/evaluation.py": "glue",  # below the cache: hands on to the rooms it asks
    # IndexingSink: the trail's writes pass through it (the decisions outcomes look up).
    "sidecar/decision/outcomes.py": "audit_write",
}

# Functions whose stage differs from their module's (matched on the last dotted name).
SIDECAR_FUNCTIONS: dict[tuple[str, str], str] = {
    ("sidecar/core/engine.py", "_is_authorized"): "cedarpy",
    ("sidecar/core/engine.py", "_is_authorized_many"): "cedarpy",
    ("sidecar/core/engine.py", "_entities_for"): "entities",
    ("sidecar/core/engine.py", "request_entities"): "entities",
    ("sidecar/audit/chain.py", "canonical"): "audit_encode",
    ("sidecar/audit/commit.py", "encode_event"): "audit_encode",
    ("sidecar/core/event.py", "template"): "cache",  # kept for the hits to come
    ("sidecar/decision/decider.py", "now"): "convert",
    ("sidecar/serving/servicer.py", "call_meta"): "convert",
    ("sidecar/serving/servicer.py", "_time_bound_ms"): "convert",
    ("sidecar/serving/servicer.py", "_timestamp_ms"): "convert",
    ("sidecar/serving/aiohandlers.py", "invocation_metadata"): "convert",
    ("sidecar/serving/aiohandlers.py", "peer"): "convert",
    ("sidecar/serving/aiohandlers.py", "auth_context"): "convert",
    ("sidecar/serving/servicer.py", "handler"): "grpc",  # FromString of the request
    ("sidecar/serving/aiohandlers.py", "handler"): "grpc",
    ("sidecar/serving/servicer.py", "_serialized"): "grpc",
}

# A native protobuf call made directly by one of these functions is this stage's work:
# the cache's `lookup` encodes the request deterministically for its key (the
# handler's `_decide` did, before the decider owned the lookup).
PROTOBUF_UNDER: dict[tuple[str, str], str] = {
    ("sidecar/decision/cache.py", "lookup"): "cache",
    ("sidecar/serving/servicer.py", "_decide"): "cache",
}

# Frames outside stepguard, innermost first: (bucket, pattern on "function (file)").
LIBRARIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "grpc",
        re.compile(r"\((?:grpc/|[^)]*cygrpc|[^)]*_message\.abi3|google/|protobuf/|[^)]*_pb2\.py)"),
    ),
    (
        "loop",
        re.compile(
            r"^(?:uv_|uv__|Loop__|Handle__|UVHandle|UVStream|UVPoll|loop_|run_forever )"
            r"|\((?:uvloop/|asyncio/|_asynciomodule\.c|loop\.c:)"
        ),
    ),
)
# Libraries that are one bucket wherever they are called from (a cache miss counts itself
# in prometheus_client: that is metrics, not cache bookkeeping).
ANYWHERE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("gc", re.compile(r"^(?:gc_collect|collect_generations)")),
    ("metrics", re.compile(r"\(prometheus_client/")),
)
# Inside cedarpy, by its native frames (Rust, symbols mangled; py-spy unwinds only a few).
CEDARPY_PARTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "JSON: the context in, the answer out (serde in Rust, orjson)",
        re.compile(r"serde|\(orjson/"),
    ),
    ("policy evaluation", re.compile(r"evaluator|partial_interpret")),
    ("Python side of the call (wrapper, AuthzResult)", re.compile(r"\(cedarpy/__init__\.py")),
)
_PROTOBUF = re.compile(r"\([^)]*(?:_message\.abi3|google/_upb|protobuf/)")
# Where a sample waits rather than works: the innermost named frame.
_WAIT_CALLS = re.compile(
    r"^(?:epoll_wait|epoll_pwait2?|poll|ppoll|select|pselect6?|nanosleep|clock_nanosleep"
    r"|pthread_cond_wait|pthread_cond_timedwait|pthread_cond_clockwait|sem_wait"
    r"|sem_timedwait|sem_clockwait|accept4?|syscall|futex|__futex\w*|PyThread_acquire_lock_timed"
    r"|lock_PyThread_acquire_lock|pysleep|time_sleep|gpr_cv_wait|do_futex_wait\w*) "
)
# A sample in (or just back from) a system call: its thread's *system* CPU time is split over
# these, its user time over the rest. py-spy samples by the wall clock, and a thread that is
# runnable but not running (preempted, typically at the exit of a call that woke another
# task: sendmsg to the client, a write to an eventfd) shows the frame it stopped at; on a
# busy machine that inflates these frames far beyond the CPU they use.
_SYSCALL = re.compile(
    r"^(?:sendmsg|sendto|send|recv|recvfrom|recvmsg|read|write|writev|readv|pread64|pwrite64"
    r"|fsync|fdatasync|open|open64|openat|openat64|close|epoll_ctl|getpid|gettid|getrandom"
    r"|sem_post|pthread_cond_signal|pthread_cond_broadcast|eventfd_write|eventfd_read|ioctl"
    r"|fstat|fstat64|newfstatat|lseek|lseek64|mmap|mmap64|munmap|madvise|brk|sched_yield"
    r"|__lll_lock_wake\w*|__lll_lock_wait\w*) \(libc"
)
_STDIN = re.compile(r"^main \(benchmarks/serve\.py")
_UNNAMED = re.compile(r"^(?:0x[0-9a-f]+ |\? )|\((?:libc\.so[^)]*|\?|libpthread[^)]*)\)$")
_FRAME = re.compile(r"^(?P<name>.*) \((?P<where>[^()]*)\)$")
_THREAD = re.compile(r"^thread \((?P<tid>0x[0-9A-Fa-f]+|\d+)\)(?::\s*(?P<name>.*))?$")
_GRPC_THREADS = re.compile(
    r"grpc|event_engine|lifeguard|_poll_wrapper|default-execu|resolver-execu|timer_manager"
)


def _split(frame: str) -> tuple[str, str]:
    """('function', 'file without its line') of a py-spy frame; where is '' if unknown."""
    m = _FRAME.match(frame)
    if not m:
        return frame, ""
    return m["name"], re.sub(r":\d+$", "", m["where"])


def _sidecar_module(where: str) -> str | None:
    i = where.find("sidecar/")
    if i < 0 or not where.endswith(".py") or (i and where[i - 1] != "/"):
        return None
    return where[i:]


def in_kernel(stack: list[str]) -> bool:
    """Whether a working sample's innermost named frame is a system call."""
    for frame in reversed(stack):
        if not _UNNAMED.search(frame) or _SYSCALL.match(frame):
            return bool(_SYSCALL.match(frame))
    return False


def waiting(stack: list[str]) -> bool:
    """Whether a sample's innermost frames are a blocking wait, not work."""
    for frame in reversed(stack):
        if _WAIT_CALLS.match(frame) or _STDIN.match(frame):
            return True
        if not _UNNAMED.search(frame):  # the innermost frame with a name decides
            return False
    return False


@dataclass(frozen=True, slots=True)
class Verdict:
    bucket: str
    frame: str  # the frame that decided it
    unmapped: str | None = None  # a stepguard module the tables do not know


def classify(stack: list[str]) -> Verdict:
    """The bucket of one working sample (frames outermost first)."""
    for bucket, pattern in ANYWHERE:
        for frame in stack:
            if pattern.search(frame):
                return Verdict(bucket, frame)
    below_protobuf = False  # a native protobuf frame lies between the leaf and here
    for frame in reversed(stack):
        name, where = _split(frame)
        module = _sidecar_module(where)
        if module is None:
            if _PROTOBUF.search(frame):
                below_protobuf = True
            continue
        func = name.rsplit(".", 1)[-1]
        if below_protobuf and (module, func) in PROTOBUF_UNDER:
            return Verdict(PROTOBUF_UNDER[(module, func)], frame)
        if (module, func) in SIDECAR_FUNCTIONS:
            return Verdict(SIDECAR_FUNCTIONS[(module, func)], frame)
        if module not in SIDECAR_MODULES:
            return Verdict("other", frame, unmapped=module)
        stage = SIDECAR_MODULES[module]
        if stage is not None:
            return Verdict(stage, frame)
    for frame in reversed(stack):
        for library, pattern in LIBRARIES:
            if pattern.search(frame):
                return Verdict(library, frame)
    return Verdict("other", stack[-1] if stack else "")


def cedarpy_part(stack: list[str]) -> str:
    """What a cedarpy sample was doing, from the frames under `_is_authorized`."""
    at = max(
        (
            i
            for i, f in enumerate(stack)
            if f.startswith(("_is_authorized ", "_is_authorized_many "))
        ),
        default=-1,
    )
    inner = stack[at + 1 :]
    for part, pattern in CEDARPY_PARTS:
        if any(pattern.search(f) for f in inner):
            return part
    return "other (allocator, drops, collections, unresolved frames)"


@dataclass
class ThreadSamples:
    tid: int | None
    name: str
    samples: int = 0
    waiting: int = 0
    buckets: Counter[str] = field(default_factory=Counter)  # working samples, all
    user: Counter[str] = field(default_factory=Counter)  # ... outside system calls
    system: Counter[str] = field(default_factory=Counter)  # ... in system calls


@dataclass
class Profile:
    threads: dict[str, ThreadSamples] = field(default_factory=dict)
    top_frames: dict[str, Counter[str]] = field(default_factory=dict)
    top_leaves: dict[str, Counter[str]] = field(default_factory=dict)
    unmapped: Counter[str] = field(default_factory=Counter)
    cedarpy_parts: Counter[str] = field(default_factory=Counter)


def _short(frame: str) -> str:
    name, where = _split(frame)
    return (f"{name[:100]} ({where})" if where else name[:100]).strip()


def read_raw(text: str) -> Profile:
    """py-spy's raw (collapsed) output, `--threads`: one line per distinct stack and count."""
    prof = Profile()
    for line in text.splitlines():
        if not line.strip():
            continue
        stack_text, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack_text.split(";")
        head = _THREAD.match(frames[0])
        if head:
            raw_tid = head["tid"]
            tid = int(raw_tid, 16) if raw_tid.lower().startswith("0x") else int(raw_tid)
            key, tname, frames = raw_tid, (head["name"] or "").strip(), frames[1:]
        else:
            tid, key, tname = None, "?", "?"
        th = prof.threads.setdefault(key, ThreadSamples(tid, tname))
        th.samples += count
        if waiting(frames):
            th.waiting += count
            continue
        verdict = classify(frames)
        th.buckets[verdict.bucket] += count
        (th.system if in_kernel(frames) else th.user)[verdict.bucket] += count
        prof.top_frames.setdefault(verdict.bucket, Counter())[_short(verdict.frame)] += count
        if frames:
            prof.top_leaves.setdefault(verdict.bucket, Counter())[_short(frames[-1])] += count
        if verdict.unmapped:
            prof.unmapped[verdict.unmapped] += count
        if verdict.bucket == "cedarpy":
            prof.cedarpy_parts[cedarpy_part(frames)] += count
    return prof


# -- the process's CPU time, per thread ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThreadTimes:
    name: str
    user_s: float
    system_s: float
    run_s: float | None = None  # /proc schedstat: on a CPU
    runqueue_s: float | None = None  # ... runnable, waiting for a CPU


def thread_cpu(pid: int) -> dict[int, ThreadTimes]:
    """Every thread's user and system CPU time (/proc stat) and scheduler times (schedstat)."""
    out: dict[int, ThreadTimes] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as fh:
                stat = fh.read()
        except OSError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        run = runq = None
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                run_ns, wait_ns, _ = fh.read().split()
            run, runq = int(run_ns) / 1e9, int(wait_ns) / 1e9
        except (OSError, ValueError):
            pass
        out[int(task)] = ThreadTimes(
            name, int(fields[11]) / _TICK, int(fields[12]) / _TICK, run, runq
        )
    return out


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, b - a)


def _fallback_bucket(name: str) -> str:
    if _GRPC_THREADS.search(name):
        return "grpc"
    if name.startswith("stepguard-audit"):
        return "audit_write"
    return "other"


def _spread(cpu: dict[str, float], used: float, counts: Counter[str]) -> None:
    total = sum(counts.values())
    for bucket, n in counts.items():
        cpu[bucket] += used * n / total


def attribute(
    prof: Profile,
    before: dict[int, ThreadTimes],
    after: dict[int, ThreadTimes],
    process_cpu_s: float,
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, float]]:
    """Split the process's CPU time over the buckets: (bucket CPU s, threads, other's parts).

    A thread's user time goes to the buckets of its working samples outside
    system calls, its system time to those in system calls (either to all of
    its working samples when the other kind has none), each in proportion to
    the samples; a thread with no working sample goes by its name. The process
    time no living thread explains (threads that ended during the phase) is
    `other`. The buckets add up to `process_cpu_s`.
    """
    cpu: dict[str, float] = dict.fromkeys(BUCKETS, 0.0)
    other_parts = {"no bucket matched": 0.0, "thread with no working sample": 0.0, "ended": 0.0}
    by_tid = {t.tid: t for t in prof.threads.values() if t.tid is not None}
    threads: list[dict[str, Any]] = []
    zero = ThreadTimes("", 0.0, 0.0)
    deltas = {
        tid: (
            t,
            max(0.0, t.user_s - before.get(tid, zero).user_s),
            max(0.0, t.system_s - before.get(tid, zero).system_s),
        )
        for tid, t in after.items()
    }
    total_threads = sum(u + k for _, u, k in deltas.values())
    # /proc counts whole clock ticks per thread: scale to the process's own count.
    scale = process_cpu_s / total_threads if total_threads > process_cpu_s > 0 else 1.0
    for tid, (t, user, system) in sorted(deltas.items()):
        user, system = user * scale, system * scale
        th = by_tid.get(tid)
        name = th.name if th and th.name else t.name
        before_t = before.get(tid, zero)
        entry: dict[str, Any] = {
            "tid": tid,
            "name": name,
            "cpu_s": round(user + system, 6),
            "user_s": round(user, 6),
            "system_s": round(system, 6),
            "run_s": _round(_delta(before_t.run_s, t.run_s) if tid in before else t.run_s),
            "runqueue_s": _round(
                _delta(before_t.runqueue_s, t.runqueue_s) if tid in before else t.runqueue_s
            ),
            "samples": th.samples if th else 0,
            "waiting": th.waiting if th else 0,
            "user_samples": dict(th.user.most_common()) if th else {},
            "system_samples": dict(th.system.most_common()) if th else {},
        }
        if th is not None and th.buckets:
            before_cpu = dict(cpu)
            for used, counts in ((user, th.user), (system, th.system)):
                _spread(cpu, used, counts if counts else th.buckets)
            other_parts["no bucket matched"] += cpu["other"] - before_cpu["other"]
        else:
            bucket = _fallback_bucket(name)
            cpu[bucket] += user + system
            entry["counted_as"] = bucket
            if bucket == "other":
                other_parts["thread with no working sample"] += user + system
        threads.append(entry)
    ended = max(0.0, process_cpu_s - sum(cpu.values()))
    cpu["other"] += ended
    other_parts["ended"] = ended
    return cpu, threads, other_parts


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# -- running it ---------------------------------------------------------------------------


def find_py_spy() -> str | None:
    """The py-spy beside this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("py-spy")


class ProfilerUnavailable(RuntimeError):
    """py-spy is not installed, or may not attach to the server."""


class Spy:
    """`py-spy record --pid` on the server until `stop()`; raw output to `out`."""

    def __init__(self, exe: str, pid: int, rate: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--native",
                "--threads",
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._sampling = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not self._sampling.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(5)
                self.proc.kill()
                raise ProfilerUnavailable(
                    "py-spy could not attach to the server: "
                    + (" ".join(self.lines).strip() or f"exit status {self.proc.returncode}")
                    + " (ptrace refused? /proc/sys/kernel/yama/ptrace_scope must be 0, or py-spy"
                    " needs CAP_SYS_PTRACE)"
                )

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "Sampling process" in line:
                self._sampling.set()

    def stop(self) -> tuple[int, int]:
        """Stop sampling (SIGINT: py-spy writes its file); (samples, errors) it reports."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        text = " ".join(self.lines)
        m = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        if not m or not self.out.is_file():
            raise ProfilerUnavailable(f"py-spy wrote no profile: {text.strip()}")
        return int(m[1]), int(m[2])


def _py_spy_version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _trail_counts(directory: Path) -> dict[str, int]:
    """Decisions in the server's trail and how many were cache hits (a miss-only run: none)."""
    decisions = cached = 0
    for path in sorted(directory.glob("audit*.jsonl")):
        with path.open("rb") as fh:
            for line in fh:
                if b'"kind":"decision"' in line:
                    decisions += 1
                    cached += b'"cached":true' in line
    return {"decisions": decisions, "cached": cached}


def measure(args: argparse.Namespace, exe: str) -> dict[str, Any]:
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    raw = work / "py-spy.raw"
    server_args = [
        "stepguard",
        "--policies",
        args.policies,
        "--audit-file",
        str(work / "audit.jsonl"),
        *(["--mode", args.mode] if args.mode else []),
    ]
    with python_server("profile-server", server_args) as srv:
        subject = load.Subject(
            "miss",
            srv.target,
            srv.pid,
            workload.METHOD + "Authorize",
            workload.distinct(workload.example_request(), tag="p"),
        )
        counter = load.Counter()
        plain = load.concurrent(subject, args.clients, args.seconds, counter, args.warmup)
        spy = Spy(exe, srv.pid, args.rate, raw)
        try:
            before, cpu0 = thread_cpu(srv.pid), load.process_cpu_s(srv.pid)
            t0 = time.perf_counter()
            watched = load.concurrent(subject, args.clients, args.seconds, counter, 0.0)
            elapsed = time.perf_counter() - t0
            after, cpu1 = thread_cpu(srv.pid), load.process_cpu_s(srv.pid)
        finally:
            samples, errors = spy.stop()
    assert cpu0 is not None and cpu1 is not None
    prof = read_raw(raw.read_text())
    misses = len(watched.latencies_ns)
    process_cpu = cpu1 - cpu0
    cpu, threads, other_parts = attribute(prof, before, after, process_cpu)
    per_miss = 1e6 / misses if misses else 0.0
    bucket_samples: Counter[str] = Counter()
    for th in prof.threads.values():
        bucket_samples.update(th.buckets)
    buckets = [
        {
            "bucket": key,
            "label": label,
            "samples": bucket_samples[key],
            "cpu_s": round(cpu[key], 6),
            "cpu_us_per_miss": round(cpu[key] * per_miss, 3),
            "share": round(cpu[key] / process_cpu, 6) if process_cpu else 0.0,
            "top_frames": prof.top_frames.get(key, Counter()).most_common(8),
            "top_leaves": prof.top_leaves.get(key, Counter()).most_common(8),
        }
        for key, label in BUCKETS.items()
    ]
    plain_misses = len(plain.latencies_ns)
    return {
        "settings": {
            "clients": args.clients,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rate_hz": args.rate,
            "mode": args.mode or "default",
            "policies": args.policies,
            "profiler": f"{_py_spy_version(exe)} record --native --threads --format raw",
        },
        "unprofiled": {
            "misses": plain_misses,
            "seconds": round(plain.seconds, 3),
            "misses_per_s": round(plain_misses / plain.seconds, 1) if plain.seconds else 0.0,
            "cpu_us_per_miss": round((plain.cpu_s or 0.0) * 1e6 / plain_misses, 1)
            if plain_misses
            else 0.0,
        },
        "profiled": {
            "misses": misses,
            "seconds": round(elapsed, 3),
            "misses_per_s": round(misses / elapsed, 1) if elapsed else 0.0,
            "cpu_s": round(process_cpu, 6),
            "cpu_us_per_miss": round(process_cpu * per_miss, 3),
            "samples": {
                "reported": samples,
                "errors": errors,
                "total": sum(t.samples for t in prof.threads.values()),
                "waiting": sum(t.waiting for t in prof.threads.values()),
                "working": sum(bucket_samples.values()),
            },
        },
        "trail": _trail_counts(work),
        "buckets": buckets,
        "other_parts_cpu_s": {k: round(v, 6) for k, v in other_parts.items()},
        "cedarpy_parts": dict(prof.cedarpy_parts.most_common()),
        "threads": threads,
        "busiest_thread": max(threads, key=lambda t: t["cpu_s"]) if threads else None,
        "unmapped": dict(prof.unmapped.most_common()),
    }


def render_table(record: dict[str, Any]) -> str:
    prof = record["profiled"]
    rows = [
        [
            b["label"],
            f"{b['cpu_us_per_miss']:.0f}",
            f"{100 * b['share']:.1f}%",
            str(b["samples"]),
        ]
        for b in record["buckets"]
    ]
    rows.append(
        [
            "**total** (server process CPU / misses)",
            f"**{prof['cpu_us_per_miss']:.0f}**",
            "100%",
            str(prof["samples"]["working"]),
        ]
    )
    return table(["bucket", "µs CPU per miss", "share", "working samples"], rows)


def _busiest(t: dict[str, Any] | None) -> str:
    """What the deciding thread's clocks say: why samples alone would mislead."""
    if not t:
        return ""
    text = (
        f"The busiest thread, {t['name']}, used {t['cpu_s']:.1f} s of CPU ({t['user_s']:.1f} s "
        f"user, {t['system_s']:.1f} s system)"
    )
    if t.get("runqueue_s") is not None:
        text += (
            f" and was runnable but waiting for a CPU for {t['runqueue_s']:.1f} s (schedstat): "
            "py-spy samples by the wall clock, and that waiting shows as the system call the "
            "thread was preempted at, hence the split of user and system time"
        )
    return text + "."


def render(record: dict[str, Any], data: str) -> str:
    s, m, plain, prof = (
        record["settings"],
        record["machine"],
        record["unprofiled"],
        record["profiled"],
    )
    smp = prof["samples"]
    la = record["load_average"]
    return "\n".join(
        [
            "## Where a miss's CPU goes (profile, issue 19)",
            "",
            f"Command: `{record['command']}`, run {record['started']} on commit "
            f"{record['commit']}; data (buckets, threads, top frames): `{data}`. Machine: "
            f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, grpcio {m['grpcio']}, "
            f"protobuf {m['protobuf']}, cedarpy {m['cedarpy']}; 1-minute load average {la[0]} "
            f"at the start, {la[1]} at the end (the machine is shared with other work).",
            "",
            f"The real sidecar (`benchmarks.serve stepguard`, {s['policies']}/, file trail, "
            f"server mode {s['mode']}) answers misses only (a new `run_id` per call) from "
            f"{s['clients']} concurrent clients (a connection each), {s['seconds']:g} s unprofiled "
            f"after a {s['warmup']:g} s warm-up, then {s['seconds']:g} s under "
            f"{s['profiler']} at {s['rate_hz']} Hz, every thread, native frames included. "
            f"The trail holds {record['trail']['decisions']} decisions, "
            f"{record['trail']['cached']} of them cache hits.",
            "",
            f"Server CPU per miss: {plain['cpu_us_per_miss']:.0f} µs unprofiled "
            f"({plain['misses_per_s']:.0f} misses/s); {prof['cpu_us_per_miss']:.0f} µs while "
            f"profiled ({prof['misses_per_s']:.0f} misses/s: py-spy stops the process at every "
            "sample, so throughput drops while it watches; the CPU per miss is what the "
            "buckets split).",
            "",
            "Each thread's CPU time (/proc) is split over the buckets in proportion to its "
            f"working samples ({smp['working']} of {smp['total']}; {smp['waiting']} were in a "
            f"blocking wait, {smp['errors']} stacks py-spy could not read): its user time over "
            "the samples outside system calls, its system time over those in one. A working "
            "sample belongs to the innermost stepguard frame's stage, libraries counting for "
            "the stage that called them (benchmarks/profile.py has the tables). The buckets add "
            "up to the total. " + _busiest(record.get("busiest_thread")),
            "",
            render_table(record),
            "",
            "Inside cedarpy, by the native frames py-spy could unwind under `_is_authorized` "
            "(share of its samples): "
            + "; ".join(
                f"{part} {100 * n / max(1, sum(record['cedarpy_parts'].values())):.0f}%"
                for part, n in record["cedarpy_parts"].items()
            )
            + ".",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="each phase's length")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--mode", choices=["sync", "asyncio"], default=None)
    parser.add_argument("--policies", default="policies")
    parser.add_argument(
        "--work", default=str(WORK / "profile"), help="the server's trail and py-spy's output"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the record here")
    parser.add_argument(
        "--write",
        action="store_true",
        help="record the table in benchmarks/RESULTS.md and the figures in benchmarks/data/",
    )
    args = parser.parse_args(argv)
    exe = find_py_spy()
    if exe is None:
        print(
            "py-spy is not installed: `pip install -e '.[bench]'` (./dev bench does) or "
            "put py-spy on PATH",
            file=sys.stderr,
        )
        return PROFILER_UNAVAILABLE
    started = datetime.now(UTC).isoformat(timespec="seconds")
    commit = machine.commit()  # the code measured: taken before the run
    load_before = os.getloadavg()[0]
    try:
        measured = measure(args, exe)
    except ProfilerUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return PROFILER_UNAVAILABLE
    command = "python -m benchmarks.profile " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    record: dict[str, Any] = {
        "command": command.strip(),
        "started": started,
        "commit": commit,
        "machine": machine.describe(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **measured,
    }
    data = "not written (no --write)"
    if args.write:
        data = save_data("profile", started, record).relative_to(ROOT).as_posix()
        write_block(RESULTS, "profile", record["command"], render(record, data))
    out = args.json or Path(args.work) / "profile.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(render(record, data))
    if record["unmapped"]:
        print(
            f"stepguard modules the bucket tables do not know: {record['unmapped']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
