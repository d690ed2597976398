"""`./dev` runs from the caller's directory: relative paths given to it mean what they say."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

from sidecar.client import StepguardClient
from tests.helpers import POLICIES, ROOT, notify_request


def test_serve_takes_paths_relative_to_the_callers_directory(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path / "mine", ignore=shutil.ignore_patterns("tests"))
    proc = subprocess.Popen(
        [
            str(ROOT / "dev"),
            "serve",
            "--policies",
            "mine",
            "--audit-file",
            "trail/audit.jsonl",
            "--workers",  # reads trail/audit.jsonl: one trail
            "1",
            "--listen",
            "127.0.0.1:0",
            "--socket",
            "off",
            "--metrics-listen",
            "off",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        serving: dict[str, str] = {}
        for line in proc.stdout:  # the serving line is on stdout, logs on stderr
            if line.startswith("{") and json.loads(line).get("event") == "serving":
                serving = json.loads(line)
                break
        assert serving, f"./dev serve did not start (exit {proc.poll()})"
        with StepguardClient(serving["grpc"]) as client:
            decision = client.authorize(notify_request())
        assert decision.allowed, decision.reason
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    # the trail went where the caller said, not into the repository
    trail = tmp_path / "trail" / "audit.jsonl"
    assert decision.decision_id in trail.read_text()
    assert not (ROOT / "trail").exists()
