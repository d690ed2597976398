"""`stepguard test --watch`, and progress on a terminal only (issue 22.6).

Real processes on real files: the CLI runs in a subprocess, a policy file is
changed on disk, and the second run's report is read from its stdout. The
terminal is a real pseudo-terminal (`pty`); the non-terminal case a pipe.
"""

from __future__ import annotations

import contextlib
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from sidecar.client import StepguardClient
from tests.helpers import POLICIES, grant_request, notify_request, running_sidecar

STEPGUARD = [sys.executable, "-m", "sidecar.cli"]
HANG_GUARD_S = 120  # only so a broken build fails instead of hanging; never asserted on


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """Lines of `stream` as they come (None at the end), read by a thread."""
    out: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            out.put(line)
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _until(lines: queue.Queue[str | None], prefix: str) -> list[str]:
    """Every line up to and including the first that starts with one of `prefix`."""
    seen: list[str] = []
    while True:
        line = lines.get(timeout=HANG_GUARD_S)
        assert line is not None, f"the output ended before {prefix!r}:\n{''.join(seen)}"
        seen.append(line)
        if line.startswith(prefix):
            return seen


@contextlib.contextmanager
def _started(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """A text-mode process that is killed if the test fails while it runs (so a hang
    fails the test: a plain `with Popen` would wait for the process for ever).

    It starts with Ctrl-C (SIGINT) at its default even when the tests were started
    with it ignored, as a shell does with a command it runs in the background without
    job control (`cmd &` in a script, `nohup`): an ignored signal stays ignored in
    every process started after, and Python then never raises KeyboardInterrupt. A
    handled one is reset to its default in the new program."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(args, text=True, **kwargs)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    with proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


SUITE = """\
cases:
  - name: ann may read the wiki
    principal: 'Person::"ann"'
    action: read
    resource: 'Doc::"wiki"'
    expect: ALLOW
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A small bundle of its own, with one suite: what the watcher sees change."""
    target = tmp_path / "policies"
    (target / "tests").mkdir(parents=True)
    (target / "schema.cedarschema").write_text(
        "entity Person;\nentity Doc;\n"
        "action read appliesTo {\n"
        "  principal: [Person], resource: [Doc], context: {now: datetime}\n};\n"
    )
    (target / "read.cedar").write_text(
        '@id("anyone-reads")\npermit (principal, action, resource);\n'
    )
    # The store holds who and what the suite names (a request may not name strangers).
    (target / "entities.json").write_text(
        '[{"uid": {"type": "Person", "id": "ann"}, "attrs": {}, "parents": []},'
        ' {"uid": {"type": "Doc", "id": "wiki"}, "attrs": {}, "parents": []}]'
    )
    (target / "tests" / "read.yaml").write_text(SUITE)
    return target


WATCH = ["--watch", "--watch-interval", "0.05"]


def test_watch_runs_again_when_a_policy_changes(bundle: Path) -> None:
    args = [*STEPGUARD, "test", str(bundle), *WATCH, "--watch-rounds", "2"]
    with _started(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines = _lines(proc.stdout)
        first = _until(lines, "OK:")
        assert any(line.startswith("PASS ") for line in first)
        # A change on disk: a new policy that forbids everything breaks every ALLOW case.
        (bundle / "freeze.cedar").write_text(
            '@id("change-freeze")\nforbid (principal, action, resource);\n'
        )
        second = _until(lines, "FAILED:")
        assert any("change-freeze" in line for line in second)
        assert proc.wait(timeout=HANG_GUARD_S) == 3  # the last run's verdict: a case failed
        assert "changed: running the suites again" in proc.stderr.read()


def test_watch_sees_a_suite_change_too(bundle: Path) -> None:
    suite = bundle / "tests" / "read.yaml"
    args = [*STEPGUARD, "test", str(suite), *WATCH, "--watch-rounds", "2"]
    with _started(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        lines = _lines(proc.stdout)
        _until(lines, "OK:")
        suite.write_text(SUITE.replace("expect: ALLOW", "expect: DENY"))
        second = _until(lines, "FAILED:")
        assert any("FAIL" in line for line in second[:-1])
        assert proc.wait(timeout=HANG_GUARD_S) == 3


def test_watch_of_a_bundle_directory_sees_its_suites_change(bundle: Path) -> None:
    """The suites under the policy directory are not bundle files, and are watched too."""
    args = [*STEPGUARD, "test", str(bundle), *WATCH, "--watch-rounds", "2"]
    with _started(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        lines = _lines(proc.stdout)
        _until(lines, "OK:")
        (bundle / "tests" / "read.yaml").write_text(SUITE.replace("expect: ALLOW", "expect: DENY"))
        second = _until(lines, "FAILED:")
        assert any("FAIL" in line for line in second[:-1])
        assert proc.wait(timeout=HANG_GUARD_S) == 3


def test_ctrl_c_stops_watching_with_exit_0(bundle: Path) -> None:
    args = [*STEPGUARD, "test", str(bundle), *WATCH]
    with _started(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        err = _lines(proc.stderr)
        _until(err, "watching ")  # the first run is done and it waits for a change
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=HANG_GUARD_S) == 0
        rest = "".join(iter(lambda: err.get(timeout=HANG_GUARD_S) or "", ""))
        assert "Traceback" not in rest


# --- progress ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("progress")
    with running_sidecar(tmp) as running:
        client = StepguardClient(running.tcp)
        try:
            for request in (notify_request(), grant_request(), grant_request(approver=None)):
                client.authorize(request)
        finally:
            client.close()
        audit = running.audit
    return audit


def _commands(trail: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, the progress label it draws)."""
    return {
        "test": (["test", str(POLICIES)], "test: "),
        "replay": (["replay", "--policies", str(POLICIES), str(trail)], "replay: "),
        "audit verify": (["audit", "verify", str(trail)], "verify "),
        "evidence": (
            ["evidence", "inventory", "--policies", str(POLICIES), str(trail)],
            "evidence: ",
        ),
    }


def _stderr_on_a_terminal(args: list[str]) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal; (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    cmd = [*STEPGUARD, *args]
    with _started(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL) as proc:
        os.close(slave)
        assert proc.stdout is not None
        out = _lines(proc.stdout)  # drained beside the terminal, so neither can fill up
        got = bytearray()
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            got.extend(chunk)
        os.close(master)
        code = proc.wait(timeout=HANG_GUARD_S)
        text = "".join(iter(lambda: out.get(timeout=HANG_GUARD_S) or "", ""))
    return code, text, got.decode(errors="replace")


@pytest.mark.parametrize("name", ["test", "replay", "audit verify", "evidence"])
def test_progress_on_a_terminal(name: str, trail: Path) -> None:
    args, label = _commands(trail)[name]
    code, out, terminal = _stderr_on_a_terminal(args)
    assert code == 0, terminal
    assert label in terminal and "\r" in terminal
    # Drawn on stderr only, and erased before the report: stdout is the report alone.
    assert label not in out
    assert terminal.split(label)[-1].split("\r")[-1].strip() == ""  # erased at the end


@pytest.mark.parametrize("name", ["test", "replay", "audit verify", "evidence"])
def test_no_progress_through_a_pipe(name: str, trail: Path) -> None:
    args, label = _commands(trail)[name]
    proc = subprocess.run(
        [*STEPGUARD, *args], capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert label not in proc.stderr and "\r" not in proc.stderr
