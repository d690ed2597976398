"""tests/helpers.py's `Drained`: a child that logs more than a pipe holds keeps running
(serve_process drains `stepguard serve`'s stderr with it)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import Drained, first_line

# Writes 1 MiB of log lines (a pipe holds 64 KiB), then says so on stdout and waits.
CHATTY = """
import sys
for i in range(16384):
    sys.stderr.write(f"{i:08d} " + "x" * 55 + "\\n")
sys.stderr.flush()
print("after the logs", flush=True)
sys.stdin.read()
print("bye", file=sys.stderr, flush=True)
"""


def test_a_child_that_logs_more_than_a_pipe_holds_is_not_blocked() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHATTY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        logs = Drained(proc.stderr, timeout_s=30)
        # Undrained, the child blocks in its first 64 KiB and this line never comes.
        assert first_line(proc.stdout, timeout_s=30) == "after the logs\n"
        proc.stdin.close()
        lines = list(logs)  # waits for the pipe's end: every line, in order
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert len(lines) == 16385 and lines[-1] == "bye\n"
    assert [int(line[:8]) for line in lines[:-1]] == list(range(16384))
    assert logs.ended(1) and logs.text() == "".join(lines)
