"""`python -m benchmarks.serve stepguard --workers N`: the benchmark measures workers (19)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sidecar.client import StepguardClient
from tests.helpers import ROOT, first_line, notify_request

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def test_the_benchmark_server_runs_workers(tmp_path: Path) -> None:
    args = ["stepguard", "--workers", "2", "--audit-file", str(tmp_path / "audit.jsonl")]
    args += ["--socket", str(tmp_path / "sg.sock")]
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
        assert ready == "READY" and unix == f"unix:{tmp_path / 'sg.sock'}"
        for _ in range(30):  # a connection each: the kernel spreads them
            with StepguardClient(tcp, options=OWN_CONNECTION) as client:
                assert client.authorize(notify_request()).allowed
        proc.stdin.close()  # the benchmark's way to stop a server
        assert proc.wait(timeout=60) == 0
    counts = []
    for i in (0, 1):
        lines = (tmp_path / f"audit.w{i}.jsonl").read_text().splitlines()
        counts.append(sum(1 for line in lines if "decision" in json.loads(line)))
    assert sum(counts) == 30 and all(counts), counts
