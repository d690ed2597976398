"""`stepguard serve` in a subprocess: the serving line, the client's address variable, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import POLICIES, first_line, notify_request, serve_process

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]


def test_serve_answers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    from sidecar.client import StepguardClient

    audit = tmp_path / "audit.jsonl"
    args = (
        "--policies",
        str(POLICIES),
        "--listen",
        "127.0.0.1:0",
        "--socket",
        str(tmp_path / "sg.sock"),
        "--metrics-listen",
        "off",
        "--audit-file",
        str(audit),
        *(
            "--workers",
            "1",
        ),  # reads audit.jsonl: one trail (workers: tests/serving/test_workers.py)
    )
    with serve_process(*args) as server:
        assert server.serving["grpc"].startswith("127.0.0.1:")
        with StepguardClient(f"unix://{server.serving['socket']}") as client:
            decision = client.authorize(notify_request())
        assert server.terminate() == 0
    assert decision.allowed, decision.reason
    ids = [
        json.loads(line)["id"] for line in audit.read_text().splitlines() if line.startswith("{")
    ]
    assert decision.decision_id in ids
    assert not (tmp_path / "sg.sock").exists()


def test_serve_starts_beside_the_clients_address_variable(tmp_path: Path) -> None:
    """STEPGUARD_ADDRESS is the integrations' (the chart sets it for workers); serve ignores it
    and still refuses a real unknown STEPGUARD_ setting."""
    import os
    import subprocess
    import sys

    from sidecar.client import StepguardClient

    args = (
        "--policies",
        str(POLICIES),
        "--listen",
        "127.0.0.1:0",
        "--socket",
        "off",
        "--metrics-listen",
        "off",
        "--audit-file",
        str(tmp_path / "audit.jsonl"),
    )
    env = {**os.environ, "STEPGUARD_ADDRESS": "unix:///run/stepguard/grpc.sock"}
    with serve_process(*args, env=env) as server:
        with StepguardClient(server.serving["grpc"]) as client:
            assert client.authorize(notify_request()).allowed
        assert server.terminate() == 0
    env["STEPGUARD_ADRESS"] = "typo"
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "unknown setting(s): adress" in done.stderr


def test_serve_says_where_it_serves_on_stdout_and_logs_on_stderr(tmp_path: Path) -> None:
    """Issue 22 point 12: one JSON line on stdout (ports asked as 0 resolved), logs on stderr."""
    from sidecar.client import StepguardClient

    with subprocess.Popen(
        [
            *STEPGUARD,
            *("serve", "--policies", str(POLICIES), "--listen", "127.0.0.1:0"),
            *("--socket", "off", "--metrics-listen", "127.0.0.1:0"),
            *("--audit-file", str(tmp_path / "audit.jsonl")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = first_line(proc.stdout)
            assert line, "no serving line on stdout"
            serving = json.loads(line)
            assert serving["event"] == "serving"
            host, port = serving["grpc"].rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
            assert int(serving["metrics"].rsplit(":", 1)[1]) > 0
            with StepguardClient(serving["grpc"]) as client:
                assert client.authorize(notify_request()).allowed
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr[-4000:]
    assert stdout == ""  # nothing but the one line
    assert "stepguard serving policies" in stderr and '"event"' not in stderr


def test_serve_with_the_trail_on_stdout_says_it_on_stderr(tmp_path: Path) -> None:
    """With --audit-file - every stdout line is a trail record: the serving line goes to stderr."""
    with subprocess.Popen(
        [
            *STEPGUARD,
            *("serve", "--policies", str(POLICIES), "--listen", "127.0.0.1:0"),
            *("--socket", "off", "--metrics-listen", "off", "--audit-file", "-"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            serving = next(json.loads(x) for x in proc.stderr if x.startswith("{"))
            assert serving["event"] == "serving" and serving["grpc"].startswith("127.0.0.1:")
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    records = [json.loads(x) for x in stdout.splitlines()]
    assert records and all("kind" in r for r in records)


# A process that waits as `serve` does, while its SIGTERM lands on another thread
# (the kernel may pick any thread: a gRPC thread, a worker's stdin reader).
_SIGNAL_ON_A_THREAD = """
import signal, sys, threading, time
from sidecar.cli.serve import stop_on_signals, wait_until_stopped
done = stop_on_signals()
def elsewhere():
    time.sleep(1.0)  # the main thread is asleep in its wait by then
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
threading.Thread(target=elsewhere).start()
wait_until_stopped(done)
print("stopped", flush=True)
"""


def test_a_sigterm_delivered_to_another_thread_still_stops_serve() -> None:
    """Python runs handlers only in the main thread: an untimed wait there never woke
    (a worker hung until its supervisor killed it, and `serve` exited 1)."""
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_ON_A_THREAD],
        capture_output=True,
        text=True,
        timeout=30,  # the old wait never returned
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stopped\n"
