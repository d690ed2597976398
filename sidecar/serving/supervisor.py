"""`serve --workers N`: N worker processes that are one server to the user.

One Python process decides on one core; a worker process per usable core uses
them all. The supervisor (the `serve` process) starts each worker as a fresh
`stepguard serve` process (fork + exec, never a bare fork: gRPC's core is not
fork-safe, and a fresh interpreter loads the same configuration the same way
a single sidecar does) with an internal worker index, and then:

- shares the TCP ports: it reserves the gRPC port and the AuthZEN one
  (refusing a taken one, resolving port 0) and every worker listens on each
  with SO_REUSEPORT, so the kernel spreads new connections over them;
- spreads the Unix socket: worker i listens on its own socket next to the
  well-known path (`grpc.sock` -> `grpc.w<i>.sock`), and the well-known path
  is a relative symbolic link to a serving worker's socket, repointed when that
  worker dies; sidecar.client spreads its calls over every worker socket it
  finds (docs/deployment.md weighs this design);
- is one health: each worker reports its health detail on its stdout, the
  supervisor serves the combination at /healthz, and tells every worker
  (on its stdin) whether all serve, so any worker's gRPC health of the
  Authorizer is SERVING only when every worker serves;
- is one metrics endpoint: workers write prometheus-client's multiprocess
  files into a private temporary directory, which the supervisor serves;
- restarts a worker that dies, with the same index (so it continues its own
  audit chain), backing off when it keeps dying;
- on SIGTERM sends SIGTERM to every worker, each drains within the grace, and
  removes its sockets, its link and the metrics directory.

A worker whose stdin closes (the supervisor is gone) shuts down too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sidecar.core.errors import StepguardError
from sidecar.core.workernames import worker_name_pattern, worker_path
from sidecar.decision.metrics import forget_worker, multiprocess_registry
from sidecar.serving.config import Settings, split_host_port
from sidecar.serving.httpstatus import StatusServer, start_status_server
from sidecar.serving.server import Endpoints, Sidecar

log = logging.getLogger(__name__)

# The internal flag that makes `stepguard serve` one worker of a supervisor.
WORKER_FLAG = "--worker-index"
# prometheus-client reads it when a worker starts (multiprocess mode).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often a worker reports its health detail when nothing changed.
REPORT_EVERY_S = 2.0
# A worker that dies within this long of its start counts as crashing: its
# restarts back off (1, 2, 4 ... 30 s) instead of spinning.
QUICK_DEATH_S = 10.0
MAX_BACKOFF_S = 30.0
# Beyond the grace: how long a worker may take to exit after its drain.
EXIT_MARGIN_S = 15.0


class WorkerStartError(StepguardError):
    """A worker process could not start; the supervisor stops the others."""


def reserve_port(listen: str, field: str = "listen") -> tuple[socket.socket, str]:
    """Reserve `listen` for the workers: (a bound socket to keep open, HOST:PORT resolved).

    A port another process listens on is refused here (a plain bind fails),
    so the workers never silently join someone else's SO_REUSEPORT group. The
    kept socket is bound with SO_REUSEPORT but never listens: it receives no
    connection, and keeps port 0's pick for the workers while they start.
    """
    host, port = split_host_port(listen, field)
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        port = probe.getsockname()[1]
    except OSError as exc:
        raise WorkerStartError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    hold = socket.socket(family, socket.SOCK_STREAM)
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        hold.bind((address[0], port, *address[2:]))
    except OSError as exc:
        hold.close()
        raise WorkerStartError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    shown = f"[{host}]" if ":" in host else host
    return hold, f"{shown}:{port}"


@dataclass(eq=False)
class _Worker:
    index: int
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    serving: dict[str, Any] | None = None  # its serving line, once it listens
    detail: dict[str, Any] | None = None  # {"terse": ..., "verbose": ...} health detail
    restart_at: float | None = None  # when it died: when to start it again
    quick_deaths: int = 0
    restarts: int = 0
    told: bool = False  # it heard the fleet state since it (re)started


class Supervisor:
    """Start, watch and stop `settings.workers` worker processes (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        command: Sequence[str],
        *,
        environ: dict[str, str] | None = None,
    ) -> None:
        """`command`: the argv of one worker (`python -m sidecar.cli serve <its flags>`);
        the supervisor appends the worker index and the listeners it resolved."""
        self.settings = settings
        self.count = settings.workers
        self._command = list(command)
        self._environ = dict(os.environ if environ is None else environ)
        self._workers = [_Worker(i) for i in range(self.count)]
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._fleet: bool | None = None
        self._extra: list[str] = []
        self._hold: socket.socket | None = None
        self._authzen_hold: socket.socket | None = None
        self._status: StatusServer | None = None
        self._monitor: threading.Thread | None = None
        self._readers: list[threading.Thread] = []
        self.metrics_dir: Path | None = None
        self.endpoints = Endpoints(None, None, None)

    # --- start ---------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> Endpoints:
        """Start every worker and wait until each listens; the endpoints, resolved."""
        s = self.settings
        # Private (0700) and new, so no file of an earlier run is counted.
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="stepguard-metrics-"))
        self._environ[MULTIPROC_ENV] = str(self.metrics_dir)
        extra = ["--workers", str(self.count), "--metrics-listen", "off"]
        tcp = None
        try:
            if s.listen is not None:
                self._hold, tcp = reserve_port(s.listen)
                extra += ["--listen", tcp]
            if s.authzen_listen is not None:
                self._authzen_hold, authzen = reserve_port(s.authzen_listen, "authzen_listen")
                extra += ["--authzen-listen", authzen]
            if s.socket is not None:
                self._clean_sockets(s.socket)
            self._extra = extra
            for worker in self._workers:
                self._spawn(worker)
            self._wait_serving(timeout_s)
            metrics = None
            if s.metrics_listen is not None:
                host, port = split_host_port(s.metrics_listen, "metrics_listen")
                registry = multiprocess_registry(self.metrics_dir)
                self._status = start_status_server(host, port, registry, self.health_detail)
                metrics = f"{host}:{self._status.server_port}"
        except BaseException:
            self.stop(grace=0.0)
            raise
        self._point_socket()
        first = self._workers[0].serving or {}
        self.endpoints = Endpoints(
            tcp, str(s.socket) if s.socket else None, metrics, first.get("authzen")
        )
        self._monitor = threading.Thread(target=self._watch, name="stepguard-supervisor")
        self._monitor.daemon = True
        self._monitor.start()
        log.info("stepguard supervisor: %d workers serving", self.count)
        return self.endpoints

    def _spawn(self, worker: _Worker) -> None:
        argv = [*self._command, *self._extra, WORKER_FLAG, str(worker.index)]
        worker.serving = worker.detail = None
        worker.restart_at = None
        worker.told = False
        worker.started = time.monotonic()
        # Its own session: a Ctrl-C in the terminal reaches the supervisor only,
        # which stops the workers in order (a worker would otherwise exit and be
        # restarted in the moment before the supervisor knows it is stopping).
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the supervisor's: one log stream
            text=True,
            env=self._environ,
            start_new_session=True,
        )
        worker.proc = proc
        reader = threading.Thread(
            target=self._read, args=(worker, proc), name=f"stepguard-worker-{worker.index}"
        )
        reader.daemon = True
        reader.start()
        self._readers.append(reader)
        log.info("stepguard worker %d started (pid %d)", worker.index, proc.pid)

    def _read(self, worker: _Worker, proc: subprocess.Popen[str]) -> None:
        """Follow one worker's stdout: its serving line, then health reports."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("worker %d wrote a line that is not a report: %r", worker.index, line)
                continue
            with self._lock:
                if worker.proc is not proc:
                    return
                if message.get("event") == "serving":
                    worker.serving = message
                elif message.get("event") == "health":
                    worker.detail = message
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def _wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for worker in self._workers:
                    assert worker.proc is not None
                    code = worker.proc.poll()
                    if code is not None:
                        raise WorkerStartError(
                            f"worker {worker.index} exited with code {code} before serving "
                            "(its log above says why)"
                        )
                if all(w.serving is not None and w.detail is not None for w in self._workers):
                    self._sync_fleet()
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerStartError(f"the workers did not all start within {timeout_s:g}s")
                self._lock.wait(min(left, 0.2))

    def _clean_sockets(self, well_known: Path) -> None:
        """Remove the well-known path and worker sockets left by an earlier run."""
        well_known.parent.mkdir(parents=True, exist_ok=True)
        pattern = worker_name_pattern(well_known)
        for entry in well_known.parent.iterdir():
            if pattern.fullmatch(entry.name) and _is_socket(entry):
                entry.unlink(missing_ok=True)
        if well_known.is_symlink() or well_known.exists():
            well_known.unlink(missing_ok=True)

    # --- while serving -------------------------------------------------------

    def _watch(self) -> None:
        """Restart workers that die; keep the fleet health and the socket link current."""
        while not self._stopping.is_set():
            with self._lock:
                now = time.monotonic()
                for worker in self._workers:
                    if self._stopping.is_set():
                        break
                    proc = worker.proc
                    if proc is not None and proc.poll() is not None and worker.restart_at is None:
                        self._died(worker, proc, now)
                    elif worker.restart_at is not None and now >= worker.restart_at:
                        worker.restarts += 1
                        self._spawn(worker)
                if not self._stopping.is_set():
                    self._sync_fleet()
                    self._point_socket()
                self._lock.wait(0.2)

    def _died(self, worker: _Worker, proc: subprocess.Popen[str], now: float) -> None:
        quick = now - worker.started < QUICK_DEATH_S
        worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
        delay = 0.0 if not quick else min(MAX_BACKOFF_S, 2.0 ** (worker.quick_deaths - 1))
        log.error(
            "stepguard worker %d (pid %d) exited with code %s: restarting it%s",
            worker.index,
            proc.pid,
            proc.returncode,
            f" in {delay:g}s" if delay else "",
        )
        worker.serving = worker.detail = None
        worker.restart_at = now + delay
        if self.metrics_dir is not None:
            forget_worker(self.metrics_dir, proc.pid)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()

    def _sync_fleet(self) -> None:
        """Tell every worker whether all of them serve (under the lock)."""
        fleet = all(_serves(w) for w in self._workers)
        changed = fleet != self._fleet
        self._fleet = fleet
        for worker in self._workers:
            # A worker hears the state when it changes, and once it is (re)started.
            if worker.serving is not None and (changed or not worker.told):
                worker.told = True
                _send(worker, f"fleet {1 if fleet else 0}\n")

    def _point_socket(self) -> None:
        """Point the well-known socket path at the first serving worker's socket."""
        well_known = self.settings.socket
        if well_known is None:
            return
        live = [w for w in self._workers if w.serving is not None]
        if not live:
            return
        try:
            current = os.readlink(well_known)
        except OSError:
            current = None
        if current in {worker_path(well_known, w.index).name for w in live}:
            return
        name = worker_path(well_known, live[0].index).name
        link = well_known.with_name(f".{well_known.name}.link")
        link.unlink(missing_ok=True)
        os.symlink(name, link)
        os.replace(link, well_known)

    def health_detail(self, verbose: bool = False) -> dict[str, Any]:
        """/healthz of the whole: ok only when every worker serves and is ok."""
        with self._lock:
            workers = []
            for w in self._workers:
                own = dict((w.detail or {}).get("verbose" if verbose else "terse") or {})
                entry: dict[str, Any] = {
                    "worker": w.index,
                    "pid": w.proc.pid if w.proc is not None else None,
                    "serving": w.serving is not None,
                    "restarts": w.restarts,
                }
                entry.update(own)
                workers.append(entry)
        revisions = {w.get("policy_revision") for w in workers}
        problem = next((w for w in workers if not (w["serving"] and w.get("ok"))), None)
        first = workers[0]
        return {
            "ok": problem is None,
            "policy_revision": revisions.pop() if len(revisions) == 1 else None,
            "policies": first.get("policies"),
            "audit_healthy": all(w.get("audit_healthy") for w in workers),
            "reload": (problem or first).get("reload", {"watching": False}),
            "workers": workers,
        }

    # --- stop ----------------------------------------------------------------

    def stop(self, grace: float | None = None) -> bool:
        """SIGTERM every worker, wait for each to drain and exit; True if all exited 0."""
        if self._stopping.is_set():
            return True
        self._stopping.set()
        grace = self.settings.grace_s if grace is None else grace
        with self._lock:
            self._lock.notify_all()
            procs = [w.proc for w in self._workers if w.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + EXIT_MARGIN_S
        clean = True
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not exit in time: killing it", proc.pid)
                proc.kill()
                proc.wait()
            clean = clean and proc.returncode == 0
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        if self._status is not None:
            self._status.shutdown()
            self._status.server_close()
        if self.settings.socket is not None:
            self._clean_sockets(self.settings.socket)
        for hold in (self._hold, self._authzen_hold):
            if hold is not None:
                hold.close()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("stepguard supervisor stopped (%s)", "clean" if clean else "not clean")
        return clean


def _serves(worker: _Worker) -> bool:
    terse = (worker.detail or {}).get("terse") or {}
    return worker.serving is not None and bool(terse.get("audit_healthy"))


def _send(worker: _Worker, line: str) -> None:
    proc = worker.proc
    if proc is None or proc.stdin is None:
        return
    with contextlib.suppress(OSError, ValueError):  # it died: the watcher restarts it
        proc.stdin.write(line)
        proc.stdin.flush()


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


class WorkerLink:
    """A worker's end of the supervisor's pipes: reports on stdout, orders on stdin.

    Reports its health detail (on start, when it changes, and every
    REPORT_EVERY_S); applies "fleet 1|0" to its gRPC health; a closed stdin
    means the supervisor is gone, and `on_orphaned` is called (the worker stops).
    """

    def __init__(
        self,
        sidecar: Sidecar,
        on_orphaned: Callable[[], None],
        *,
        out: IO[str] | None = None,
        orders: IO[str] | None = None,
    ) -> None:
        self._sidecar = sidecar
        self._on_orphaned = on_orphaned
        self._out = out or sys.stdout
        self._orders = orders or sys.stdin
        self._stop = threading.Event()
        self._write_lock = threading.Lock()

    def start(self, serving: dict[str, Any]) -> None:
        """Report `serving` (the worker's endpoints); the sidecar started not SERVING."""
        self._write(serving)
        self._report()
        for target, name in ((self._listen, "orders"), (self._reports, "reports")):
            threading.Thread(target=target, name=f"stepguard-link-{name}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _write(self, message: dict[str, Any]) -> None:
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            self._out.write(json.dumps(message) + "\n")
            self._out.flush()

    def _report(self) -> str:
        terse = self._sidecar.health_detail(False)
        verbose = self._sidecar.health_detail(True)
        text = json.dumps({"event": "health", "terse": terse, "verbose": verbose})
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            self._out.write(text + "\n")
            self._out.flush()
        return text

    def _reports(self) -> None:
        last, sent_at = "", time.monotonic()
        while not self._stop.wait(0.25):
            now_text = json.dumps(
                [self._sidecar.health_detail(False), self._sidecar.health_detail(True)]
            )
            if now_text != last or time.monotonic() - sent_at >= REPORT_EVERY_S:
                self._report()
                last, sent_at = now_text, time.monotonic()

    def _listen(self) -> None:
        for line in self._orders:
            order = line.split()
            if order[:1] == ["fleet"] and len(order) == 2:
                self._sidecar.set_fleet_serving(order[1] == "1")
        if not self._stop.is_set():
            log.warning("the supervisor is gone (its pipe closed): stopping")
            self._on_orphaned()
