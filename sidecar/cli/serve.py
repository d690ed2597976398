"""`stepguard serve`: run the decision sidecar until SIGTERM or SIGINT.

Settings come from flags, then the environment (`STEPGUARD_<NAME>`), then the
`--config` file (sidecar/serving/config.py merges them). Once listening, one
JSON line says where (`{"event": "serving", ...}`), for scripts and harnesses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sidecar.cli.exitcodes import EXIT_OK
from sidecar.core.model import PolicyErrors  # light: the standard library only

_PARSERS: list[argparse.ArgumentParser] = []


def register(sub: Any) -> None:
    """Add `stepguard serve` to the CLI."""
    serve = sub.add_parser("serve", help="run the decision sidecar")
    serve.add_argument("--policies", help="policy directory (default: policies)")
    serve.add_argument("--listen", help="HOST:PORT for gRPC, or 'none' (default 127.0.0.1:50051)")
    serve.add_argument("--socket", help="also (or only) listen on this Unix socket path")
    serve.add_argument("--metrics-listen", help="HOST:PORT for /metrics, or 'off'")
    serve.add_argument(
        "--authzen-listen",
        help="loopback HOST:PORT for the OpenID AuthZEN HTTP API (default: off)",
    )
    serve.add_argument("--audit-file", help="audit trail: a file path, or - for stdout")
    serve.add_argument(
        "--audit-durability", choices=("flush", "fsync"), help="flush (default) or fsync"
    )
    serve.add_argument("--audit-rotate-bytes", type=int, help="rotate at this size (0: never)")
    serve.add_argument(
        "--audit-rotate-age", dest="audit_rotate_age_s", type=float, help="rotate after (s)"
    )
    serve.add_argument("--audit-hmac-key-file", help="key the audit hash chain with this file")
    serve.add_argument(
        "--audit-redact", help="comma-separated event paths to redact (context.approval.ticket)"
    )
    serve.add_argument(
        "--audit-checkpoints",
        help="append signed checkpoints of the trail to this file, kept where the trail's "
        "writer cannot roll it back (docs/audit.md)",
    )
    serve.add_argument(
        "--audit-checkpoint-every", type=int, help="checkpoint every N events (default 1000)"
    )
    serve.add_argument(
        "--audit-checkpoint-interval",
        dest="audit_checkpoint_interval_s",
        type=float,
        help="checkpoint at least every T seconds while records are written (default 10)",
    )
    serve.add_argument("--grace", dest="grace_s", type=float, help="drain time on shutdown (s)")
    serve.add_argument(
        "--workers",
        dest="worker_processes",
        type=int,
        help="worker processes (default: the usable cores of the CPU quota; 1 with "
        "--audit-file -); each has its own engine, cache and audit chain",
    )
    serve.add_argument(
        "--threads", type=int, help="gRPC (and AuthZEN) threads of each worker (default 16)"
    )
    serve.add_argument(
        "--worker-index",
        type=int,
        metavar="I",
        help="internal, set by the supervisor of --workers N: serve as its worker I "
        "(docs/deployment.md, Worker processes)",
    )
    serve.add_argument(
        "--stream-idle-timeout",
        dest="stream_idle_timeout_s",
        type=float,
        help="close an AuthorizeStream idle this long (s, default 60)",
    )
    serve.add_argument(
        "--stream-max-per-caller",
        type=int,
        help="open AuthorizeStreams per caller (default 0: half of threads / 2)",
    )
    serve.add_argument(
        "--max-request-bytes", type=int, help="refuse larger requests (INVALID_ARGUMENT)"
    )
    serve.add_argument(
        "--max-attribute-depth", type=int, help="refuse attributes nested deeper than this"
    )
    serve.add_argument("--max-batch-items", type=int, help="refuse batches with more items")
    serve.add_argument("--tls-cert", help="PEM certificate chain: TLS on the TCP listener")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates (mTLS)")
    serve.add_argument(
        "--bind-workload-identity",
        action="store_true",
        default=None,
        help='deny requests whose principal is not Workload::"<caller SPIFFE ID>"',
    )
    serve.add_argument(
        "--watch",
        action="store_true",
        default=None,
        help="reload policies, schema and entities when their files change",
    )
    serve.add_argument(
        "--watch-interval", dest="watch_interval_s", type=float, help="poll period (s, default 1)"
    )
    serve.add_argument(
        "--cache-max-entries", type=int, help="decision cache entries (0: off; default 100000)"
    )
    serve.add_argument("--cache-max-bytes", type=int, help="decision cache bytes (default 64 MiB)")
    serve.add_argument(
        "--now-granularity-ms", type=int, help="context.now granularity (ms, default 1000)"
    )
    serve.add_argument(
        "--server-mode", choices=["asyncio", "sync"], help="gRPC server (default asyncio)"
    )
    serve.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        help="the asyncio server's event loop (default uvloop)",
    )
    serve.add_argument(
        "--policy-errors",
        choices=[m.value for m in PolicyErrors],
        help="what a policy that errors does: deny (default: any error of a policy that "
        "could apply makes the answer DENY) or cedar (Cedar's semantics: it is skipped)",
    )
    serve.add_argument(
        "--fixed-clock",
        metavar="RFC3339",
        help="decide as if at this time, e.g. 2026-11-25T10:00:00Z (demonstrations and "
        "tests only: needs --non-production; every decision event records it)",
    )
    serve.add_argument(
        "--non-production",
        action="store_true",
        default=None,
        help="allow settings no production sidecar may use (--fixed-clock)",
    )
    serve.add_argument("--config", type=Path, help="YAML file of settings (flags win)")
    serve.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO (default), WARNING or ERROR"
    )
    serve.set_defaults(run=_serve)
    _PARSERS.append(serve)  # to give a worker the same flags (_worker_argv)


def _serve(args: argparse.Namespace) -> int:
    from sidecar.serving.config import build_settings
    from sidecar.serving.server import Sidecar, tune_gc_for_serving

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    settings = build_settings(flags, os.environ, args.config)
    if args.worker_index is not None:
        return _serve_worker(settings, args.worker_index)
    if settings.workers > 1:
        return _supervise(settings, args)
    sidecar = Sidecar(settings)
    # Before anyone can know the address: a SIGTERM right after the serving
    # line must drain and exit 0, not kill the process half-way.
    done = stop_on_signals()
    endpoints = sidecar.start()  # a listener that cannot bind: stopped, ListenError
    try:  # whatever happens from here, nothing keeps serving without this thread
        tune_gc_for_serving()
        # The serving line: one JSON object on stdout, for scripts and harnesses (the
        # ports asked as 0 are resolved in it). Logs stay on stderr. A trail on stdout
        # (--audit-file -) owns stdout: every line there is a record, so the line goes
        # to stderr then.
        out = sys.stderr if settings.audit_file == "-" else sys.stdout
        print(json.dumps(_endpoints(endpoints)), flush=True, file=out)
        wait_until_stopped(done)
    finally:
        sidecar.stop()
    return EXIT_OK


_NOT_SETTINGS = ("run", "config", "log_level", "worker_index")


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets (wait on it with `wait_until_stopped`)."""
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("stepguard").info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return done


# How often the main thread wakes to run a signal's handler (see below).
SIGNAL_POLL_S = 0.2


def wait_until_stopped(done: threading.Event) -> None:
    """Block the main thread until a signal sets `done`, waking to let its handler run.

    Python runs signal handlers only in the main thread, when it runs bytecode.
    The kernel may deliver SIGTERM to any thread (a gRPC thread, a worker's
    stdin reader): the main thread, asleep in an untimed `done.wait()`, is
    then never woken to run the handler, and the process hangs until it is
    killed. A timed wait wakes it.
    """
    while not done.wait(SIGNAL_POLL_S):
        pass


def _supervise(settings: Any, args: argparse.Namespace) -> int:
    """`serve --workers N`, N > 1: run N workers as one server (supervisor.py)."""
    from sidecar.serving.supervisor import Supervisor

    command = [sys.executable, "-m", "sidecar.cli", "serve", *_worker_argv(args)]
    supervisor = Supervisor(settings, command)
    done = stop_on_signals()
    endpoints = supervisor.start()
    serving = _endpoints(endpoints) | {"workers": supervisor.count}
    print(json.dumps(serving), flush=True)  # the trail is never on stdout with workers
    wait_until_stopped(done)
    return EXIT_OK if supervisor.stop() else 1


def _serve_worker(settings: Any, index: int) -> int:
    """One worker of a supervisor: serve, report on stdout, obey stdin (supervisor.py)."""
    from sidecar.serving.server import Sidecar, tune_gc_for_serving
    from sidecar.serving.supervisor import WorkerLink

    sidecar = Sidecar(settings, worker=index)
    sidecar.set_fleet_serving(False)  # not SERVING until the supervisor says all are up
    done = stop_on_signals()
    endpoints = sidecar.start()  # a listener that cannot bind: stopped, ListenError
    link = WorkerLink(sidecar, done.set)
    try:
        link.start(_endpoints(endpoints))
        tune_gc_for_serving()
        wait_until_stopped(done)
    finally:
        link.stop()
        sidecar.stop()
    return EXIT_OK


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The flags this `serve` was given, as a worker's command line (same settings)."""
    parser = _PARSERS[-1]
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "worker_index"):
            continue
        value = getattr(args, action.dest, None)
        if value is None or value is False:
            continue
        option = action.option_strings[0]
        argv += [option] if action.nargs == 0 else [option, str(value)]
    return argv


def _endpoints(endpoints: Any) -> dict[str, Any]:
    return {
        "event": "serving",
        "grpc": endpoints.tcp,
        "socket": endpoints.socket,
        "metrics": endpoints.metrics,
        "authzen": endpoints.authzen,
    }
