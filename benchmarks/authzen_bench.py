"""AuthZEN evaluation latency beside gRPC Authorize, one server, same run.

    .venv/bin/python -m benchmarks.authzen_bench            # about a minute
    .venv/bin/python -m benchmarks.authzen_bench --quick    # a smoke run
    .venv/bin/python -m benchmarks.authzen_bench --no-write # print only

One `stepguard serve` child process serves policies/ on gRPC and AuthZEN
(loopback TCP), with its audit trail written to a real file. Both APIs are
sent the same Cedar request: the harness's example (an approved `grant_access`
on `jira`, ALLOW), as an `AuthorizeRequest` and as an AuthZEN evaluation; the
run checks that both decide it alike first. Every load is measured as misses
(a new `run_id` per decision: evaluated, as orchestrators' steps are) and as
hits (one request repeated: answered by the decision cache), labelled so.
gRPC Authorize is the baseline of every ratio. Each figure is measured in two
halves in A-B-B-A order, so drift over the run does not favour either API.

Scenarios: one client calling back to back; one client sending batches of 10
(AuthorizeBatch vs /access/v1/evaluations); 4 client threads (one gRPC channel
shared, as an orchestrator worker pool shares it; one keep-alive HTTP/1.1
connection per thread, as HTTP clients pool them). Latency is measured in the
client per call (perf_counter_ns); server CPU per decision from /proc.

Results go to benchmarks/RESULTS.md between this module's own markers, under
an "AuthZEN" heading, and to benchmarks/.work/authzen.json.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks import machine
from benchmarks.workload import example_json
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.jsonreq import request_from_json

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN = "<!-- authzen-bench:begin (written by `python -m benchmarks.authzen_bench`) -->"
END = "<!-- authzen-bench:end -->"
BATCH = 10
THREADS = 4
_TICK = os.sysconf("SC_CLK_TCK")

Call = Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Server:
    pid: int
    grpc: str
    authzen: str


@contextmanager
def stepguard(audit: Path) -> Iterator[Server]:
    """`stepguard serve` with gRPC and AuthZEN on loopback, until the block ends."""
    WORK.mkdir(parents=True, exist_ok=True)
    log_path = WORK / "authzen-bench-server.log"
    argv = [
        *(sys.executable, "-m", "sidecar.cli", "serve", "--policies", str(ROOT / "policies")),
        *("--listen", "127.0.0.1:0", "--authzen-listen", "127.0.0.1:0"),
        *("--metrics-listen", "off", "--audit-file", str(audit), "--log-level", "WARNING"),
    ]
    with log_path.open("w") as log:  # the serving line is on stdout, the log on stderr
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        serving = _serving_line(log_path, proc)
        yield Server(proc.pid, serving["grpc"], serving["authzen"])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _serving_line(log_path: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if line.startswith("{") and '"serving"' in line:
                data: dict[str, Any] = json.loads(line)
                return data
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"stepguard did not start (see {log_path})")


def authzen_form(request: dict[str, Any]) -> dict[str, Any]:
    """The harness's JSON request as an AuthZEN evaluation of the same Cedar request."""
    ctx = dict(request["context"])
    ctx.update(ctx.pop("attributes", {}))
    return {
        "subject": request["principal"],
        "action": {"name": request["action"]["id"]},
        "resource": request["resource"],
        "context": ctx,
    }


class Http:
    """One keep-alive connection; a call posts pre-encoded JSON and decodes the answer."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: bytes) -> Any:
        self._conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = self._conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {data[:200]!r}")
        return json.loads(data)

    def close(self) -> None:
        self._conn.close()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _percentile(sorted_ns: list[int], q: float) -> float:
    rank = max(0, min(len(sorted_ns) - 1, round(q * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[rank] / 1000


@dataclass
class Run:
    """Samples of one API in one scenario, accumulated over the measurement halves."""

    samples: list[int]
    seconds: float = 0.0
    cpu_s: float = 0.0
    halves: list[dict[str, float]] = field(default_factory=list)  # each half's own figures

    def summary(self, per_call: int) -> dict[str, Any]:
        s = sorted(self.samples)
        return {
            "halves": [
                {**h, "decisions_per_s": round(h["calls_per_s"] * per_call, 1)} for h in self.halves
            ],
            "calls": len(s),
            "p50_us": round(_percentile(s, 0.50), 1),
            "p99_us": round(_percentile(s, 0.99), 1),
            "mean_us": round(sum(s) / len(s) / 1000, 1),
            "decisions_per_s": round(len(s) * per_call / self.seconds, 1),
            "server_cpu_us": round(self.cpu_s * 1e6 / (len(s) * per_call), 1),
        }


def _loop(make: Callable[[], Call], threads: int, duration: float, warmup: float) -> list[int]:
    """`threads` clients calling back to back; samples from after the warm-up."""
    clock = time.perf_counter_ns
    start_at = clock() + int(warmup * 1e9)
    stop_at = start_at + int(duration * 1e9)
    per_thread: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def client(out: list[int]) -> None:
        try:
            call = make()
            while True:
                t = clock()
                if t >= stop_at:
                    return
                call()
                if t >= start_at:
                    out.append(clock() - t)
        except BaseException as exc:  # reported once the others finish
            errors.append(exc)

    workers = [threading.Thread(target=client, args=(out,)) for out in per_thread]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return [x for out in per_thread for x in out]


def measure(
    apis: dict[str, Callable[[], Call]], pid: int, threads: int, duration: float
) -> dict[str, Run]:
    """Each API for `duration` seconds, in halves ordered A-B-B-A."""
    names = list(apis)
    runs = {name: Run([]) for name in names}
    for name in [*names, *reversed(names)]:
        cpu0 = _cpu_s(pid)
        samples = _loop(apis[name], threads, duration / 2, warmup=0.3)
        runs[name].cpu_s += _cpu_s(pid) - cpu0
        half = sorted(samples)
        runs[name].halves.append(
            {
                "p50_us": round(_percentile(half, 0.50), 1),
                "p99_us": round(_percentile(half, 0.99), 1),
                "calls_per_s": round(len(half) / (duration / 2), 1),
            }
        )
        runs[name].samples += samples
        runs[name].seconds += duration / 2
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.authzen_bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1 s per measurement")
    p.add_argument("--duration", type=float, help="seconds per API per scenario (default 6)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    args = p.parse_args(argv)
    duration = args.duration or (1.0 if args.quick else 6.0)
    command = "python -m benchmarks.authzen_bench" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    audit = WORK / "authzen-bench-audit.jsonl"
    WORK.mkdir(parents=True, exist_ok=True)
    for old in WORK.glob(audit.name + "*"):
        old.unlink()

    request = example_json()
    grpc_one = request_from_json(request)
    one = authzen_form(request)
    # A miss names a new run each call, as each step of each run does: the
    # server evaluates it. A hit repeats one request: the cache answers it.
    grpc_runs, az_runs = _RunIds("g"), _RunIds("a")

    def grpc_item(kind: str) -> pb.AuthorizeRequest:
        if kind == "hit":
            return grpc_one
        item = pb.AuthorizeRequest()
        item.CopyFrom(grpc_one)
        item.context.run_id = grpc_runs.next()
        return item

    def az_body(kind: str, batch: bool) -> bytes:
        def ctx() -> dict[str, Any]:
            return one["context"] if kind == "hit" else {**one["context"], "run_id": az_runs.next()}

        if not batch:
            return json.dumps({**one, "context": ctx()}).encode()
        return json.dumps(
            {
                "subject": one["subject"],
                "action": one["action"],
                "evaluations": [{"resource": one["resource"], "context": ctx()}] * BATCH,
            }
            if kind == "hit"
            else {
                "subject": one["subject"],
                "action": one["action"],
                "evaluations": [
                    {"resource": one["resource"], "context": ctx()} for _ in range(BATCH)
                ],
            }
        ).encode()

    results: dict[str, dict[str, Any]] = {}
    with stepguard(audit) as server:
        channel = grpc.insecure_channel(server.grpc)
        stub = pb_grpc.AuthorizerStub(channel)
        _check_alike(stub, grpc_one, Http(server.authzen), one)
        clients: list[Http] = []

        def http_call(path: str, kind: str, batch: bool) -> Callable[[], Call]:
            def make() -> Call:
                client = Http(server.authzen)
                clients.append(client)
                if kind == "hit":
                    body = az_body(kind, batch)
                    return lambda: client.post(path, body)
                return lambda: client.post(path, az_body(kind, batch))

            return make

        def grpc_call(kind: str, batch: bool) -> Callable[[], Call]:
            def make() -> Call:
                if batch:
                    if kind == "hit":
                        msg = pb.AuthorizeBatchRequest(items=[grpc_one] * BATCH)
                        return lambda: stub.AuthorizeBatch(msg)
                    return lambda: stub.AuthorizeBatch(
                        pb.AuthorizeBatchRequest(items=[grpc_item(kind) for _ in range(BATCH)])
                    )
                if kind == "hit":
                    return lambda: stub.Authorize(grpc_one)
                return lambda: stub.Authorize(grpc_item(kind))

            return make

        scenarios: list[tuple[str, int, int, dict[str, Callable[[], Call]]]] = []
        for kind in KINDS:
            scenarios += [
                (
                    f"{LABELS[kind]}: sequential, 1 decision per call",
                    1,
                    1,
                    {
                        "grpc": grpc_call(kind, False),
                        "authzen": http_call("/access/v1/evaluation", kind, False),
                    },
                ),
                (
                    f"{LABELS[kind]}: sequential, batches of {BATCH}",
                    1,
                    BATCH,
                    {
                        "grpc": grpc_call(kind, True),
                        "authzen": http_call("/access/v1/evaluations", kind, True),
                    },
                ),
                (
                    f"{LABELS[kind]}: {THREADS} client threads, 1 decision per call",
                    THREADS,
                    1,
                    {
                        "grpc": grpc_call(kind, False),
                        "authzen": http_call("/access/v1/evaluation", kind, False),
                    },
                ),
            ]
        for label, threads, per_call, apis in scenarios:
            runs = measure(apis, server.pid, threads, duration)
            results[label] = {name: run.summary(per_call) for name, run in runs.items()}
            g, a = results[label]["grpc"], results[label]["authzen"]
            print(
                f"{label:40s} p50 grpc {g['p50_us']:8.1f} us  authzen {a['p50_us']:8.1f} us  "
                f"({a['p50_us'] / g['p50_us']:.2f}x)",
                flush=True,
            )
        for client in clients:
            client.close()
        channel.close()
    audited, cached = _audited(audit)
    record = {
        "command": command,
        "commit": machine.commit(),
        "started": started.isoformat(timespec="seconds"),
        "cached_decisions": cached,
        "duration_s": duration,
        "machine": machine.describe(),
        "audited_decisions": audited,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    data = DATA / f"authzen-{started.strftime('%Y-%m-%dT%H%M')}.json"
    record["data_file"] = "not written" if args.no_write else data.relative_to(ROOT).as_posix()
    (WORK / "authzen.json").write_text(json.dumps(record, indent=2))
    body = render(record)
    print(body)
    if not args.no_write:
        DATA.mkdir(parents=True, exist_ok=True)
        data.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        write_section(args.out, body)
        print(f"wrote {args.out} and {data.relative_to(ROOT)}")
    return 0


KINDS = ("miss", "hit")
LABELS = {"miss": "misses (evaluated)", "hit": "hits (cached)"}


class _RunIds:
    """A new run id per call (thread-safe enough: itertools.count is atomic in CPython)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._count = itertools.count()

    def next(self) -> str:
        return f"bench-{self._prefix}-{next(self._count)}"


def _audited(audit: Path) -> tuple[int, int]:
    """Decision events in the trail (every segment: it rotates at 64 MiB), and how many of
    them the cache answered."""
    total = cached = 0
    for segment in sorted(audit.parent.glob(audit.name + "*")):
        with segment.open("rb") as f:
            for line in f:
                event = json.loads(line)
                if event.get("kind") == "decision":
                    total += 1
                    cached += bool(event.get("cached"))
    return total, cached


def _check_alike(
    stub: pb_grpc.AuthorizerStub, grpc_one: pb.AuthorizeRequest, http: Http, one: dict[str, Any]
) -> None:
    """Both APIs must decide the benchmark request the same way, by the same policy."""
    g = stub.Authorize(grpc_one)
    a = http.post(
        "/access/v1/evaluation",
        json.dumps({**one, "options": {"stepguard_explain": True}}).encode(),
    )
    http.close()
    g_policies = [p.id for p in g.determining_policies]
    a_policies = [p["id"] for p in a["context"]["determining_policies"]]
    if g.decision != pb.DECISION_ALLOW or not a["decision"] or g_policies != a_policies:
        raise SystemExit(
            f"the APIs disagree on the benchmark request: gRPC {g.reason!r}, "
            f"AuthZEN {a['context']['reason']!r}"
        )


def render(record: dict[str, Any]) -> str:
    m = record["machine"]
    rows = []
    for label, by_api in record["results"].items():
        g, a = by_api["grpc"], by_api["authzen"]
        rows.append(
            "| "
            + " | ".join(
                [
                    label,
                    f"{g['p50_us']:.0f} / {a['p50_us']:.0f}",
                    f"{a['p50_us'] / g['p50_us']:.2f}x",
                    f"{g['p99_us']:.0f} / {a['p99_us']:.0f}",
                    f"{a['p99_us'] / g['p99_us']:.2f}x",
                    f"{g['decisions_per_s']:.0f} / {a['decisions_per_s']:.0f}",
                    f"{a['decisions_per_s'] / g['decisions_per_s']:.2f}x",
                    f"{g['server_cpu_us']:.0f} / {a['server_cpu_us']:.0f}",
                ]
            )
            + " |"
        )
    header = [
        "load",
        "p50 us (gRPC / AuthZEN)",
        "p50 ratio",
        "p99 us (gRPC / AuthZEN)",
        "p99 ratio",
        "decisions/s (gRPC / AuthZEN)",
        "throughput ratio",
        "server CPU us/decision",
    ]
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|", *rows]
    )
    return "\n".join(
        [
            "## AuthZEN",
            "",
            "AuthZEN evaluation (HTTP/1.1 JSON, cheroot WSGI server) beside gRPC Authorize, "
            "measured in the same run against the same `stepguard serve` process, which "
            "serves policies/ with its audit trail in a real file "
            f"({record['audited_decisions']} decisions audited in this run, "
            f"{record['cached_decisions']} of them answered from the cache).",
            "",
            "Each load is measured twice: *misses* send a new `run_id` with every decision, "
            "as every step of every run does, so each one is evaluated against every "
            "example policy; *hits* repeat one request, which the decision cache answers "
            "without evaluating. Misses are the figure an orchestrator sees.",
            "",
            f"Command: `{record['command']}` ({record['duration_s']:g} s per API per load, "
            f"in A-B-B-A halves after 0.3 s warm-ups), run {record['started']} on commit "
            f"{record.get('commit', 'unknown')}; each half's figures: "
            f"`{record.get('data_file', 'not written')}`.",
            "",
            f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; Python "
            f"{m['python']}, grpcio {m['grpcio']}, cedarpy {m['cedarpy']}. 1-minute load "
            f"average {record['load_average'][0]} at the start, {record['load_average'][1]} "
            "at the end (anything above 0 is other work sharing the CPUs: the machine is "
            "shared with other engineers running tests, so every figure is noisy; compare "
            "ratios, not absolute figures, across runs).",
            "",
            "The request is the harness's example (an approved `grant_access` on `jira`, "
            "ALLOW), sent as an AuthorizeRequest and as the "
            "equivalent AuthZEN evaluation; the run first checks both are ALLOWed by the "
            "same policy. Ratios are AuthZEN over gRPC. Batches: AuthorizeBatch vs "
            "/access/v1/evaluations with subject and action as top-level defaults and each "
            "evaluation's context its own. "
            "Threads: one shared gRPC channel vs one keep-alive HTTP connection per thread. "
            "Clients are Python (grpcio, http.client) in one process.",
            "",
            table,
        ]
    )


def write_section(path: Path, body: str) -> None:
    """Replace this module's block in RESULTS.md (or append it); leave the rest alone."""
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
