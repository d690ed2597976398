"""`record_outcome` on the sync and async clients: it reports, and it never raises.

An orchestrator calls it from task hooks (success, failure, skip, retry): a
report that cannot be made must come back as `recorded=False` saying why,
never as an exception that would fail the task.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import AsyncStepguardClient, DecisionKind, StepguardClient, error_class_of
from tests.helpers import BUSINESS_HOURS, Running, grant_request, running_sidecar

ID = "01a24a69-8228-7000-8f19-46017a570b02"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_sidecar(tmp_path_factory.mktemp("outcome-client")) as running:
        yield running


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_sidecar_never_raises() -> None:
    with StepguardClient(_closed_port(), timeout=0.5) as client:
        report = client.record_outcome(ID, "succeeded")
    assert not report.recorded and report.outcome_id == ""
    assert report.kind is DecisionKind.UNAVAILABLE and report.kind.retryable
    assert "UNAVAILABLE" in report.reason


def test_stopped_sidecar_never_raises(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        target = f"unix://{running.socket}"
    with StepguardClient(target, timeout=0.5) as client:
        report = client.record_outcome(ID, "failed", error_class="OSError")
    assert not report.recorded and report.kind is not None and report.kind.retryable


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": "failed"}, "error_class"),
        ({"status": "succeeded", "effect": {"identity": "maria"}}, "effect.identity"),
        (
            {"status": "succeeded", "effect": {"credential": {"id": "k", "change": "issued"}}},
            "effect.credential.issued_at",
        ),
        ({"status": "succeeded", "effect": object()}, ""),  # not even JSON: still no exception
    ],
)
def test_a_report_the_client_cannot_build_is_refused_without_raising(
    server: Running, kwargs: dict[str, Any], field: str
) -> None:
    with StepguardClient(server.tcp) as client:
        report = client.record_outcome(ID, **kwargs)
    assert not report.recorded
    assert report.kind in (DecisionKind.INVALID_REQUEST, DecisionKind.ERROR)
    assert field in report.reason


def test_recorded_with_datetimes_in_the_effect(server: Running) -> None:
    issued = BUSINESS_HOURS - timedelta(minutes=1)
    with StepguardClient(f"unix://{server.socket}") as client:
        decision = client.authorize(grant_request())
        report = client.record_outcome(
            decision.decision_id,
            "succeeded",
            effect={
                "credential": {
                    "id": "k-1",
                    "change": "issued",
                    "issued_at": issued,
                    "expires_at": issued + timedelta(minutes=5),
                }
            },
            request_id="hook-7",
        )
    assert report.recorded and report.violation == "" and report.decision == "ALLOW"
    event = next(e for e in server.audit_events() if e["id"] == report.outcome_id)
    assert event["effect"]["credential"]["expires_at"] == "2026-11-25T10:04:00.000000Z"
    assert event["request_id"] == "hook-7"


def test_async_client_records_and_never_raises(server: Running) -> None:
    async def run() -> tuple[Any, Any, Any]:
        async with AsyncStepguardClient(server.tcp) as client:
            decision = await client.authorize(grant_request(approver=None))
            flagged = await client.record_outcome(decision.decision_id, "succeeded")
            invalid = await client.record_outcome("nope", "succeeded")
        async with AsyncStepguardClient(_closed_port(), timeout=0.5) as dead:
            down = await dead.record_outcome(ID, "skipped")
        return flagged, invalid, down

    flagged, invalid, down = asyncio.run(run())
    assert flagged.recorded and flagged.violation == "decision_denied"
    assert not invalid.recorded and invalid.kind is DecisionKind.INVALID_REQUEST
    assert invalid.reason.startswith("invalid request: decision_id: ")
    assert not down.recorded and down.kind is DecisionKind.UNAVAILABLE


def test_error_class_of_names_the_exception_never_its_message(server: Running) -> None:
    class Odd(Exception):
        pass

    exc = Odd("password=hunter2")
    name = error_class_of(exc)
    assert name.endswith("Odd") and "hunter2" not in name
    assert error_class_of(ValueError("x")) == "ValueError"
    odd_name = error_class_of(type("É" * 200, (Exception,), {})())
    assert len(odd_name) == 128 and set(odd_name) == {"_"}  # cut to the limit, characters fit
    with StepguardClient(server.tcp) as client:
        decision = client.authorize(grant_request())
        report = client.record_outcome(decision.decision_id, "failed", error_class=name)
    assert report.recorded, report.reason


def test_batch_reports_each_item_in_order_and_never_raises(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        allowed = client.authorize(grant_request()).decision_id
        denied = client.authorize(grant_request(approver=None)).decision_id
        items: list[dict[str, Any]] = [
            {"decision_id": allowed, "status": "succeeded", "finished_at": BUSINESS_HOURS},
            {"decision_id": "nope", "status": "succeeded"},  # refused by the client, alone
            {"decision_id": denied, "status": "failed", "error_class": "E", "attempt": 2},
        ]
        reports = client.record_outcomes(items)
        nothing = client.record_outcomes([])
    assert [r.recorded for r in reports] == [True, False, True]
    assert reports[1].kind is DecisionKind.INVALID_REQUEST
    assert reports[2].violation == "decision_denied"
    assert nothing == []
    recorded = {e["id"]: e for e in server.audit_events() if e["kind"] == "outcome"}
    assert recorded[reports[2].outcome_id]["attempt"] == 2

    async def down() -> list[Any]:
        async with AsyncStepguardClient(_closed_port(), timeout=0.5) as dead:
            return await dead.record_outcomes(items)

    unreachable = asyncio.run(down())
    assert [r.recorded for r in unreachable] == [False, False, False]
    assert unreachable[0].kind is DecisionKind.UNAVAILABLE
    assert unreachable[1].kind is DecisionKind.INVALID_REQUEST  # its own reason, kept
