"""A sidecar that cannot start every listener exits with a message, serving nothing.

A taken metrics or AuthZEN port used to surface after gRPC had started: the
main thread died with a traceback while the gRPC and HTTP threads kept the
process alive in interpreter shutdown, answering every call (health
included) with UNKNOWN "cannot schedule new futures after interpreter
shutdown", forever. A Kubernetes probe then sees a process that neither
serves nor exits.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sidecar.cli.exitcodes import EXIT_ERROR

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@contextmanager
def taken_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as held:
        yield held.getsockname()[1]


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`stepguard serve` that must exit by itself (killed, and failed, if it hangs)."""
    argv = [sys.executable, "-m", "sidecar.cli", "serve", "--policies", str(POLICIES)]
    argv += ["--listen", "127.0.0.1:0", "--socket", str(tmp_path / "grpc.sock")]
    argv += ["--audit-file", str(tmp_path / "audit.jsonl"), "--watch", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"stepguard serve neither served nor exited: {err[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("flag", "others"),
    [
        # The chart's mTLS pod: AuthZEN (its own threads) starts before the metrics port.
        ("--metrics-listen", ["--authzen-listen", "127.0.0.1:0"]),
        ("--authzen-listen", ["--metrics-listen", "127.0.0.1:0"]),
    ],
)
def test_a_taken_port_stops_the_sidecar_with_a_message(
    tmp_path: Path, flag: str, others: list[str]
) -> None:
    with taken_port() as port:
        done = serve(tmp_path, "--workers", "1", *others, flag, f"127.0.0.1:{port}")
    assert done.returncode == EXIT_ERROR, done.stderr
    assert '"event": "serving"' not in done.stdout  # it never said it serves
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stepguard: error: "), done.stderr
    assert f"127.0.0.1:{port}" in last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "grpc.sock").exists()  # nothing left to connect to


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    """Worker 1's own socket path is a directory (nothing the supervisor checks or
    cleans): worker 1 cannot listen, exits, and so does the whole."""
    (tmp_path / "grpc.w1.sock").mkdir()
    done = serve(tmp_path, "--workers", "2")
    assert done.returncode == EXIT_ERROR, done.stderr
    assert "worker 1 exited" in done.stderr
    assert '"event": "serving"' not in done.stdout
    assert not [p for p in tmp_path.glob("grpc*.sock") if not p.is_dir()]
