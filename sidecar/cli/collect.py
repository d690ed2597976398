"""`stepguard collect`: the stream's records into PostgreSQL (docs/fleet.md).

Several collectors may run at once (one durable consumer shares the work).
The store's DSN is `--store` or `STEPGUARD_STORE`; keep its password in
`PGPASSFILE` or `PGPASSWORD` (libpq reads them), not in the DSN on a command
line. NATS settings as for `stepguard ship` (sidecar/cli/ship.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_OK
from sidecar.cli.ship import fleet_flags, load_settings


def store_flag(parser: argparse.ArgumentParser, *, help_text: str) -> None:
    parser.add_argument(
        "--store",
        default=None,
        metavar="postgresql://...",
        help=help_text + " (or STEPGUARD_STORE; the password from PGPASSFILE/PGPASSWORD)",
    )


def store_dsn(args: argparse.Namespace) -> str | None:
    dsn: str | None = args.store or None
    return dsn


def register(subparsers: Any) -> None:
    collect = subparsers.add_parser(
        "collect",
        help="write the fleet's shipped records into PostgreSQL, checking every chain",
        description="Pull the trail records from the JetStream stream (a durable consumer "
        "shared by every collector), write each once into PostgreSQL, check each chain's "
        "continuity (gaps, forks, bad hashes become findings) and publish the committed "
        "watermarks for the shippers' retention hold. Runs until SIGTERM.",
    )
    store_flag(collect, help_text="the PostgreSQL store")
    collect.add_argument(
        "--key-file", type=Path, help="the sidecars' audit HMAC key (to check keyed hashes)"
    )
    collect.add_argument("--batch", type=int, default=500, help="records per fetch")
    collect.add_argument(
        "--gap-grace",
        type=float,
        default=60.0,
        help="seconds a missing record may be late before it is a gap finding",
    )
    collect.add_argument("--metrics-listen", help="host:port for Prometheus metrics")
    fleet_flags(collect)
    collect.set_defaults(run=_collect)


def _collect(args: argparse.Namespace) -> int:
    from sidecar.audit.chain import load_key
    from sidecar.fleet import metrics
    from sidecar.fleet.collect import Collector

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dsn = store_dsn(args) or os.environ.get("STEPGUARD_STORE", "")
    if not dsn:
        print("stepguard: error: collect needs --store postgresql://...", file=sys.stderr)
        return EXIT_ERROR
    settings = load_settings(args)
    key = load_key(args.key_file) if args.key_file else None
    registry = metrics.collect_metrics()
    port = metrics.serve(args.metrics_listen, registry.registry)
    collector = Collector(
        settings, dsn, key=key, batch=args.batch, gap_grace_s=args.gap_grace, metrics=registry
    )
    print(json.dumps({"event": "collecting", "metrics_port": port}))
    sys.stdout.flush()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, collector.stop.set)
        await collector.run()

    asyncio.run(main())
    return EXIT_OK
