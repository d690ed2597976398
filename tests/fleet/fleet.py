"""Running the fleet's commands for real in tests: `stepguard ship` and `stepguard collect`
as subprocesses (stopped by PID), and reading what reached the store and the trail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from sidecar.audit.segments import Trail
from sidecar.fleet import tail

CLI = [sys.executable, "-m", "sidecar.cli"]


def wait_for(check: Callable[[], bool], what: str | Callable[[], str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what() if callable(what) else what}")
        time.sleep(0.1)


def fleet_env(urls: list[str], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["STEPGUARD_NATS_SERVERS"] = ",".join(urls)
    env.update(extra)
    return env


class Proc:
    """A fleet command running as a subprocess, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*CLI, *self.args], env=self.env, stdout=out, stderr=out)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def shipper(
    trail: Path,
    urls: list[str],
    sidecar: str,
    *extra: str,
    state: Path | None = None,
    replicas: int = 1,
) -> Iterator[Proc]:
    """`stepguard ship` of a trail directory (or one trail's file); its state and log beside
    the directory."""
    home = trail.parent if trail.is_dir() else trail.parent.parent
    state = state or home / f"ship-state-{sidecar}"
    args = ["ship", "--trail", str(trail), "--state-dir", str(state), "--sidecar", sidecar]
    args += ["--replicas", str(replicas), "--poll-interval", "0.05", *extra]
    p = Proc(args, fleet_env(urls), home / f"ship-{sidecar}.log")
    try:
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def collector(
    dsn: str, urls: list[str], *extra: str, name: str = "c1", log_dir: Path, replicas: int = 1
) -> Iterator[Proc]:
    args = ["collect", "--store", dsn, "--replicas", str(replicas), *extra]
    p = Proc(args, fleet_env(urls), log_dir / f"collect-{name}.log")
    try:
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def serving(*args: str, log: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`stepguard serve ARGS` with its log in a file (a pipe nobody reads could fill and
    block it), its gRPC target read from its first stdout line; killed if still up."""
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [*CLI, "serve", *args], stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        serving_line: dict[str, Any] = json.loads(first) if first.startswith("{") else {}
        assert serving_line.get("event") == "serving", f"serve did not start: {first!r}"
        yield proc, str(serving_line["grpc"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def trail_lines(trail: Path) -> dict[tuple[str, int], bytes]:
    """Every record line of every chain of the directory, by (chain, seq)."""
    out: dict[tuple[str, int], bytes] = {}
    for chain in tail.chains_of(trail):
        name = Path(chain.name).name
        for line in tail.read_lines(chain, None, tail.SegmentIndex(), 10**9):
            out[(name, line.seq)] = line.data
    return out


def store_lines(dsn: str, sidecar: str) -> dict[tuple[str, int], bytes]:
    """The stored lines of one sidecar ({} before a collector made the tables)."""
    try:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT chain, seq, line FROM stepguard_events WHERE sidecar = %s", (sidecar,)
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {(c, int(q)): bytes(line) for c, q, line in rows}


def store_count(dsn: str) -> int:
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM stepguard_events").fetchone()
        return int(row[0]) if row else 0
    return 0


def findings(dsn: str) -> list[tuple[str, str, int, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT sidecar, chain, seq, kind FROM stepguard_findings ORDER BY id"
        ).fetchall()
    return [(str(s), str(c), int(q), str(k)) for s, c, q, k in rows]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def status(state: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def stream_messages(urls: list[str], stream: str = "STEPGUARD_AUDIT") -> int:
    import nats

    async def go() -> int:
        nc = await nats.connect(servers=urls)
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(go())


def stream_messages_tls(
    urls: list[str], ca: Path, cert: Path, key: Path, token: str, stream: str = "STEPGUARD_AUDIT"
) -> int:
    import ssl

    import nats

    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))

    async def go() -> int:
        nc = await nats.connect(servers=urls, tls=ctx, token=token)
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(go())


def chains(trail: Path) -> list[Trail]:
    return tail.chains_of(trail)
