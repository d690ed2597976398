"""`stepguard serve --fixed-clock`: a fixed clock for demonstrations, never by accident (22.13).

Real `stepguard serve` subprocesses: refused without --non-production; with it,
the example calendar decides by the fixed time, and every decision event (cache
hits too) records the clock in its `note`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sidecar.cli.exitcodes import EXIT_ERROR
from sidecar.client import StepguardClient
from sidecar.core.errors import ConfigError
from sidecar.serving.config import build_settings
from tests.helpers import POLICIES, ROOT, grant_request, serve_process

# The example calendar's business hours (tests/integrations/orchestration.py).
WEDNESDAY_10 = "2026-11-25T10:00:00Z"
SUNDAY_03 = "2026-11-29T03:00:00Z"
STEPGUARD = [sys.executable, "-m", "sidecar.cli"]


def _args(tmp: Path, *extra: str) -> tuple[str, ...]:
    return (
        *("--policies", str(POLICIES), "--listen", "127.0.0.1:0", "--socket", "off"),
        *("--metrics-listen", "off", "--audit-file", str(tmp / "audit.jsonl"), *extra),
        *("--workers", "1"),  # reads audit.jsonl: one trail
    )


def _sensitive_grant() -> dict[str, Any]:
    """An approved grant on a critical target: allowed in business hours only."""
    request = grant_request()
    request["resource"] = {"type": "TargetSystem", "id": "okta"}
    return request


def _decide_twice(tmp: Path, at: str) -> tuple[list[Any], list[dict[str, Any]], str]:
    """Two identical calls (the second a cache hit) to a sidecar fixed at `at`."""
    with serve_process(*_args(tmp, "--fixed-clock", at, "--non-production")) as server:
        with StepguardClient(server.serving["grpc"]) as client:
            answers = [client.authorize(_sensitive_grant()) for _ in range(2)]
        assert server.terminate() == 0
        log = server.stderr.read()
    lines = (tmp / "audit.jsonl").read_text().splitlines()
    events = [e for e in map(json.loads, lines) if e["kind"] == "decision"]
    return answers, events, log


def test_serve_refuses_a_fixed_clock_without_non_production(tmp_path: Path) -> None:
    for how, env in (
        (["--fixed-clock", SUNDAY_03], {}),
        ([], {"STEPGUARD_FIXED_CLOCK": SUNDAY_03}),
        (["--fixed-clock", SUNDAY_03], {"STEPGUARD_NON_PRODUCTION": "false"}),
    ):
        done = subprocess.run(
            [*STEPGUARD, "serve", *_args(tmp_path), *how],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == EXIT_ERROR, done.stderr
        assert "fixed_clock" in done.stderr and "--non-production" in done.stderr, done.stderr
        assert done.stdout == ""  # never said it serves
    assert not (tmp_path / "audit.jsonl").exists()


def test_serve_refuses_a_fixed_clock_that_is_no_rfc3339_time(tmp_path: Path) -> None:
    for bad in ("sunday", "2026-11-29T03:00:00", "2026-11-29"):
        done = subprocess.run(
            [*STEPGUARD, "serve", *_args(tmp_path, "--fixed-clock", bad, "--non-production")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == EXIT_ERROR and "RFC 3339" in done.stderr, done.stderr


def test_a_fixed_clock_decides_by_the_calendar_and_every_event_says_so(tmp_path: Path) -> None:
    (tmp_path / "sun").mkdir()
    (tmp_path / "wed").mkdir()
    sunday, sunday_events, sunday_log = _decide_twice(tmp_path / "sun", SUNDAY_03)
    wednesday, wednesday_events, _ = _decide_twice(tmp_path / "wed", WEDNESDAY_10)

    assert [a.allowed for a in wednesday] == [True, True], wednesday[0].reason
    assert [a.allowed for a in sunday] == [False, False]
    assert "sensitive-target-after-hours-requires-break-glass" in sunday[0].reason

    for at, events, answers in (
        (SUNDAY_03, sunday_events, sunday),
        (WEDNESDAY_10, wednesday_events, wednesday),
    ):
        assert [e["id"] for e in events] == [a.decision_id for a in answers]
        assert [e["cached"] for e in events] == [False, True]
        stamp = at.replace(":00Z", ":00.000000Z")
        for event in events:  # the hit carries it too
            assert event["note"] == f"non-production: fixed clock {stamp}"
            assert event["time"] == stamp
            assert event["context"]["now"]["__extn"]["arg"].startswith(at[:19])
    assert "NON-PRODUCTION: the clock is fixed at 2026-11-29T03:00:00+00:00" in sunday_log
    schema = json.loads((ROOT / "sidecar/audit/event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for event in sunday_events:  # the published schema describes the marked events
        assert [e.message for e in validator.iter_errors(event)] == []


def test_without_a_fixed_clock_events_have_no_note(tmp_path: Path) -> None:
    with serve_process(*_args(tmp_path)) as server:
        with StepguardClient(server.serving["grpc"]) as client:
            client.authorize(_sensitive_grant())
        assert server.terminate() == 0
        assert "NON-PRODUCTION" not in server.stderr.read()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    events = [e for e in map(json.loads, lines) if e["kind"] == "decision"]
    assert len(events) == 1 and "note" not in events[0]


def test_fixed_clock_from_a_config_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "stepguard.yaml"
    # YAML reads an unquoted timestamp as a datetime: taken as UTC
    config.write_text(
        yaml.safe_dump({"non_production": True}) + "fixed_clock: 2026-11-29 03:00:00\n"
    )
    assert build_settings({}, {}, config).fixed_clock == datetime(2026, 11, 29, 3, tzinfo=UTC)
    env = {"STEPGUARD_FIXED_CLOCK": "2026-11-25T11:00:00+01:00", "STEPGUARD_NON_PRODUCTION": "1"}
    assert build_settings({}, env).fixed_clock == datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert build_settings({"fixed_clock": "off"}, env).fixed_clock is None
    with pytest.raises(ConfigError, match="--non-production"):
        build_settings({}, {"STEPGUARD_FIXED_CLOCK": SUNDAY_03})
