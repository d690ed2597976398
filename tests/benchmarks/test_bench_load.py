"""The load generator measures what worker processes do (issue 19): server CPU is the
whole process tree's, and concurrent clients each have a connection of their own, so the
kernel spreads them over `serve --workers N`'s workers; over the Unix socket a client
dials every worker's socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import load
from benchmarks.workload import METHOD, distinct, example_request
from sidecar.client import StepguardClient
from tests.helpers import ROOT, first_line, notify_request

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]

# A child that starts a grandchild burning CPU, says when it has burned BURN_S of it,
# then, told "reap", lets it end and waits for it (its CPU moves into the child's cutime).
BURN_S = 0.4
TICKS = 2 / os.sysconf("SC_CLK_TCK")
GRANDCHILD = f"""
import sys, time
while time.process_time() < {BURN_S}:
    pass
print("burned", flush=True)
sys.stdin.read()
"""
CHILD = f"""
import subprocess, sys
g = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
print(g.stdout.readline().strip(), g.pid, flush=True)
assert sys.stdin.readline() == "reap\\n"
g.stdin.close()
g.wait()
print("reaped", flush=True)
sys.stdin.read()
"""


def test_server_cpu_sums_the_process_tree_before_and_after_a_child_ends() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        said, grandchild = first_line(child.stdout).split()
        assert said == "burned"
        own = load.process_cpu_s(child.pid)
        tree = load.tree_cpu_s(child.pid)
        assert own is not None and tree is not None
        # the grandchild's CPU is the tree's, not the child's (/proc counts whole clock
        # ticks of user and of system time: up to two ticks less than process_time)
        assert own < BURN_S - TICKS <= tree
        assert load.tree_cpu_s(int(grandchild)) == pytest.approx(tree - own, abs=0.05)
        child.stdin.write("reap\n")
        child.stdin.flush()
        assert first_line(child.stdout) == "reaped\n"
        after = load.tree_cpu_s(child.pid)
        assert load.tree_cpu_s(int(grandchild)) is None  # gone ...
        # ... and its CPU still counted (the same ticks, summed as floats in another order)
        assert after is not None and after >= tree - 1e-9
        child.stdin.close()
    assert load.tree_cpu_s(child.pid) is None


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """The benchmark's stepguard with 2 worker processes: TCP target, Unix target, trail dir."""
    tmp = tmp_path_factory.mktemp("bench-load")
    # `python -m benchmarks.serve stepguard --workers N`: the benchmark's server with workers.
    args = ["stepguard", "--workers", "2", "--audit-file", str(tmp / "audit.jsonl")]
    args += ["--socket", str(tmp / "sg.sock")]
    with subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serve", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        ready, tcp, unix = first_line(proc.stdout).split()
        assert ready == "READY" and unix == f"unix:{tmp / 'sg.sock'}"
        yield tcp, unix, tmp
        proc.stdin.close()  # the benchmark's way to stop a server
        assert proc.wait(timeout=60) == 0


def _decisions_by_worker(trail: Path, tag: str) -> list[int]:
    """Decisions of requests whose run_id starts with `tag`, in worker 0's and 1's chains."""
    counts = []
    for i in (0, 1):
        lines = (trail / f"audit.w{i}.jsonl").read_text().splitlines()
        counts.append(sum(1 for line in lines if f'"{tag}' in json.dumps(json.loads(line))))
    return counts


def _subject(target: str, tag: str, pid: int | None = None) -> load.Subject:
    return load.Subject(tag, target, pid, METHOD + "Authorize", distinct(example_request(), tag))


def test_concurrent_clients_each_connect_so_tcp_load_reaches_every_worker(
    two_workers: tuple[str, str, Path],
) -> None:
    tcp, _, trail = two_workers
    # 16 connections all hashed onto one of 2 workers: 1 chance in 32,768.
    got = load.concurrent(_subject(tcp, "tcp16-"), 16, 0.5, load.Counter(), 0.1)
    assert got.latencies_ns
    counts = _decisions_by_worker(trail, "tcp16-")
    assert all(counts), counts


def test_a_unix_socket_client_spreads_its_calls_over_every_worker(
    two_workers: tuple[str, str, Path],
) -> None:
    _, unix, trail = two_workers
    got = load.sequential(_subject(unix, "unix1-"), 0.3, load.Counter(), 0.05)
    assert len(got.latencies_ns) >= 2
    counts = _decisions_by_worker(trail, "unix1-")
    assert all(counts), counts  # one client, round-robin over both workers' sockets


def test_clients_of_their_own_connection_reach_every_worker_of_the_benchmark_server(
    two_workers: tuple[str, str, Path],
) -> None:
    """Each decision of 30 one-shot clients lands in one worker's chain, and both get some."""
    tcp, _, trail = two_workers
    request = notify_request()
    for i in range(30):  # a connection each: the kernel spreads them
        request["context"]["run_id"] = f"serve30-{i}"
        with StepguardClient(tcp, options=OWN_CONNECTION) as client:
            assert client.authorize(request).allowed
    counts = _decisions_by_worker(trail, "serve30-")
    assert sum(counts) == 30 and all(counts), counts
