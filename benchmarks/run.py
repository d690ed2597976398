"""`./dev bench`: start the servers, drive them with one load generator, report.

    ./dev bench            # default run (a few minutes)
    ./dev bench --quick    # a short smoke run (about 30 s)

Servers started in every run (each in its own process):
- `empty`: baseline A, an Authorizer that returns an empty response on the
  same gRPC stack, options and transport as stepguard;
- `stepguard`: the real sidecar on policies/, audit trail to a real file.
Each figure is reported with its ratio to the baseline measured in this run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from benchmarks import load, machine
from benchmarks.procs import ROOT, WORK, python_server
from benchmarks.results import table, write_section
from benchmarks.workload import example_request
from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc

RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./dev bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run: 1 s per measurement")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 5)")
    p.add_argument(
        "--clients", default="8", help="comma-separated concurrent client counts (default 8)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results file to update")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    return p.parse_args(argv)


def _unary(req: pb.AuthorizeRequest) -> Callable[[grpc.aio.Channel], Callable[[], Awaitable[Any]]]:
    def make(channel: grpc.aio.Channel) -> Callable[[], Awaitable[Any]]:
        stub = pb_grpc.AuthorizerStub(channel)
        return lambda: stub.Authorize(req)

    return make


def _call(stub: pb_grpc.AuthorizerStub, req: pb.AuthorizeRequest) -> Callable[[], Any]:
    return lambda: stub.Authorize(req)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    duration = args.duration or (1.0 if args.quick else 5.0)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    command = "./dev bench" + ("".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])))
    started = datetime.now(UTC)
    audit = WORK / "audit.jsonl"
    audit.unlink(missing_ok=True)
    req = example_request()
    results: dict[str, dict[str, Any]] = {}

    with (
        python_server("empty", ["empty"]) as empty,
        python_server("stepguard", ["stepguard", "--audit-file", str(audit)]) as sg,
    ):
        servers = (empty, sg)
        channels = {s.name: grpc.insecure_channel(s.target) for s in servers}
        stubs = {n: pb_grpc.AuthorizerStub(c) for n, c in channels.items()}
        answer = stubs["stepguard"].Authorize(req)
        if answer.decision != pb.DECISION_ALLOW:
            raise SystemExit(f"the example request is not ALLOWed: {answer.reason}")
        for s in servers:
            stub = stubs[s.name]
            print(f"sequential  {s.name:10s}", end=" ", flush=True)
            st = load.sequential(_call(stub, req), duration, server_pid=s.pid)
            print(_line(st))
            results.setdefault("sequential", {})[s.name] = st.to_json()
        for n in clients:
            for s in servers:
                print(f"{n:2d} clients  {s.name:10s}", end=" ", flush=True)
                st = load.concurrent(s.target, _unary(req), n, duration, server_pid=s.pid)
                print(_line(st))
                results.setdefault(f"concurrent_{n}", {})[s.name] = st.to_json()
        for c in channels.values():
            c.close()
    audited = sum(1 for _ in audit.open("rb"))
    info = machine.describe()
    record = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": duration,
        "machine": info,
        "audit_events": audited,
        "results": results,
    }
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.json").write_text(json.dumps(record, indent=2))
    body = render(record)
    print(body)
    if not args.no_write:
        write_section(args.out, body)
        print(f"wrote {args.out}")
    return 0


def _line(st: load.Stats) -> str:
    cpu = f"  server cpu {st.server_cpu_us:7.1f} us/dec" if st.server_cpu_us is not None else ""
    return f"p50 {st.p50_us:8.1f} us  p99 {st.p99_us:8.1f} us  {st.decisions_per_s:9.0f} dec/s{cpu}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def render(record: dict[str, Any]) -> str:
    m = record["machine"]
    res = record["results"]
    rows = []
    for scenario, by_server in res.items():
        e, s = by_server["empty"], by_server["stepguard"]
        label = (
            "sequential (1 client)"
            if scenario == "sequential"
            else (scenario.replace("concurrent_", "") + " concurrent clients")
        )
        rows.append(
            [
                label,
                f"{e['p50_us']:.0f} / {s['p50_us']:.0f}",
                _ratio(s["p50_us"], e["p50_us"]),
                f"{e['p99_us']:.0f} / {s['p99_us']:.0f}",
                _ratio(s["p99_us"], e["p99_us"]),
                f"{e['decisions_per_s']:.0f} / {s['decisions_per_s']:.0f}",
                _ratio(s["decisions_per_s"], e["decisions_per_s"]),
                f"{e['server_cpu_us']} / {s['server_cpu_us']}",
            ]
        )
    return "\n".join(
        [
            "## Authorize against an empty servicer",
            "",
            f"Command: `{record['command']}` ({record['duration_s']:g} s per measurement, "
            f"after a 0.5 s warm-up), run {record['started']}.",
            "",
            f"Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; Python {m['python']}, "
            f"grpcio {m['grpcio']}, protobuf {m['protobuf']}, cedarpy {m['cedarpy']}.",
            "",
            "Both servers run in their own process on TCP loopback, built the same way "
            "(grpcio sync server, 16 worker threads). stepguard serves policies/ with its "
            "audit trail written to a real file "
            f"(benchmarks/.work/audit.jsonl, {record['audit_events']} events in this run). "
            "The request is an approved `grant_access` on `jira` by the provisioning workload "
            "(ALLOW; every example policy is evaluated). Latencies are measured in the client "
            "(Python, grpcio), per call; concurrent clients are asyncio tasks on one channel.",
            "",
            table(
                [
                    "load",
                    "p50 us (empty / stepguard)",
                    "p50 ratio",
                    "p99 us (empty / stepguard)",
                    "p99 ratio",
                    "decisions/s (empty / stepguard)",
                    "throughput ratio",
                    "server CPU us/decision",
                ],
                rows,
            ),
        ]
    )
