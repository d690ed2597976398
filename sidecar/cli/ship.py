"""`stepguard ship` (and `stepguard ship --status`): the trail to NATS JetStream (docs/fleet.md).

The NATS settings (servers, credentials, TLS) come from `--config FILE` (its
`fleet:` section) and the environment (`STEPGUARD_NATS_SERVERS`,
`STEPGUARD_NATS_CREDS_FILE`...), never from flags that would show a secret
in `ps` (sidecar/fleet/settings.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidecar.cli.exitcodes import EXIT_ERROR, EXIT_OK

STALE_S = 30.0  # a status file older than this: the shipper is not running


def fleet_flags(parser: argparse.ArgumentParser) -> None:
    """The settings every fleet command shares (no secrets among them)."""
    parser.add_argument("--config", type=Path, help="YAML file; its `fleet:` section is read")
    parser.add_argument(
        "--nats-servers",
        help="comma-separated nats:// URLs (or STEPGUARD_NATS_SERVERS); credentials and TLS "
        "only from the config file or the environment",
    )
    parser.add_argument("--stream", help="the JetStream stream (default STEPGUARD_AUDIT)")
    parser.add_argument("--replicas", type=int, help="the stream's replicas (default 3)")


def load_settings(args: argparse.Namespace) -> Any:
    from sidecar.fleet import settings

    return settings.load(
        args.config,
        os.environ,
        nats_servers=args.nats_servers,
        stream=args.stream,
        replicas=args.replicas,
    )


def register(subparsers: Any) -> None:
    ship = subparsers.add_parser(
        "ship",
        help="publish a trail directory's records to NATS JetStream (fleet)",
        description="Tail a trail directory (every chain, across rotations) and publish each "
        "record to NATS JetStream, deduplicated by chain and seq; survives restarts by a "
        "cursor written only after the broker acknowledged. Runs until SIGTERM.",
    )
    ship.add_argument(
        "--trail",
        type=Path,
        help="the sidecar's trail: its directory (every trail in it) or its file "
        "DIR/NAME.jsonl (that trail and its workers' chains only; required)",
    )
    ship.add_argument(
        "--state-dir",
        type=Path,
        help="where the cursor, status and watermark files live (default: a directory "
        ".stepguard-ship[-NAME] beside the trail, which trail readers skip)",
    )
    ship.add_argument(
        "--sidecar",
        default=os.environ.get("STEPGUARD_SIDECAR_NAME") or socket.gethostname(),
        help="this sidecar's name in the fleet (default STEPGUARD_SIDECAR_NAME, else the "
        "host name: the pod's name in Kubernetes)",
    )
    ship.add_argument("--poll-interval", type=float, default=0.2, help="seconds between polls")
    ship.add_argument(
        "--prune-committed",
        action="store_true",
        help="delete rotated segments once the collectors' committed watermark passed them "
        "(never before; never the newest rotated one)",
    )
    ship.add_argument("--metrics-listen", help="host:port for Prometheus metrics")
    ship.add_argument(
        "--status",
        action="store_true",
        help="do not ship: print the running shipper's state and lag (its status file in "
        "the state directory) as JSON; exit 0 while it ships or is caught up, 1 when the "
        "broker is unavailable or full or the shipper is not running",
    )
    fleet_flags(ship)
    ship.set_defaults(run=_ship)


def _state_dir(args: argparse.Namespace) -> Path | None:
    """--state-dir, or the default beside the trail (None without either)."""
    if args.state_dir is not None:
        return Path(args.state_dir)
    trail: Path | None = args.trail
    if trail is None:
        return None
    return (
        trail / ".stepguard-ship"
        if trail.is_dir()
        else trail.parent / (f".stepguard-ship-{trail.name}")
    )


def _ship(args: argparse.Namespace) -> int:
    if args.status:
        return _status(args)
    from sidecar.fleet import metrics
    from sidecar.fleet.ship import Shipper

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_settings(args)
    trail = args.trail
    if trail is None or not (trail.is_dir() or trail.parent.is_dir()):
        print(f"stepguard: error: --trail {trail}: no such directory", file=sys.stderr)
        return EXIT_ERROR
    default_state = _state_dir(args)
    assert default_state is not None
    registry = metrics.ship_metrics()
    port = metrics.serve(args.metrics_listen, registry.registry)
    shipper = Shipper(
        settings,
        trail,
        default_state,
        args.sidecar,
        poll_s=args.poll_interval,
        prune=args.prune_committed,
        metrics=registry,
    )
    print(json.dumps({"event": "shipping", "sidecar": shipper.sidecar, "metrics_port": port}))
    sys.stdout.flush()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shipper.stop.set)
        await shipper.run()

    asyncio.run(main())
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    state = _state_dir(args)
    if state is None:
        print("stepguard: error: --status needs --trail or --state-dir", file=sys.stderr)
        return EXIT_ERROR
    path = state / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(json.dumps({"state": "not_running", "message": f"{path}: {exc}"}))
        return EXIT_ERROR
    try:
        at = datetime.fromisoformat(str(status.get("time", "")).replace("Z", "+00:00"))
        age = (datetime.now(UTC) - at).total_seconds()
    except ValueError:
        age = STALE_S + 1
    if age > STALE_S:
        status["state"] = "not_running"
        status["message"] = f"the status file is {age:.0f} s old: the shipper is not running"
    print(json.dumps(status, sort_keys=True))
    return EXIT_OK if status.get("state") in ("shipping", "caught_up") else EXIT_ERROR
