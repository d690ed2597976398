"""Each decision says what it is: `kind` and the gRPC `code`, against the real server.

A worker must tell a bug in its own request (INVALID_REQUEST: do not retry,
fix it) from a sidecar outage (UNAVAILABLE, DEADLINE: retry) and from a DENY by
policy, without parsing reasons and without an exception (issue 16 point 8).
Before, an INVALID_ARGUMENT read "stepguard call failed (INVALID_ARGUMENT)",
worded like a transport failure, and nothing else told them apart.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.client import (
    AsyncStepguardClient,
    DecisionKind,
    StepDecision,
    StepguardClient,
    denied,
)
from tests.helpers import Running, grant_request, notify_request, running_sidecar

OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_sidecar(tmp_path_factory.mktemp("kinds")) as running:
        yield running


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A port that accepts connections and never speaks: every call runs out of time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def server_invalid() -> dict[str, Any]:
    """Well-formed for the client, refused by the sidecar (an action the schema lacks)."""
    return {**notify_request(), "action": {"type": "Action", "id": "no_such_action"}}


def client_invalid() -> dict[str, Any]:
    """Not even a request: the client refuses to send it."""
    return {"principal": "nonsense"}


REQUESTS = [notify_request(), grant_request(approver=None), server_invalid(), client_invalid()]
EXPECTED = [
    (DecisionKind.ALLOW, OK),
    (DecisionKind.DENY, OK),
    (DecisionKind.INVALID_REQUEST, INVALID),
    (DecisionKind.INVALID_REQUEST, INVALID),
]


def kinds(decisions: list[StepDecision]) -> list[tuple[DecisionKind, grpc.StatusCode | None]]:
    return [(d.kind, d.code) for d in decisions]


def test_unary_kinds(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        out = [client.authorize(r) for r in REQUESTS]
    assert kinds(out) == EXPECTED
    assert [d.allowed for d in out] == [True, False, False, False]
    assert out[2].reason.startswith("invalid request: ") and "action" in out[2].reason
    assert "call failed" not in out[2].reason  # not worded like an outage
    assert out[1].decision_id and not out[2].decision_id
    assert [d.kind.decided for d in out] == [True, True, False, False]
    assert not any(d.kind.retryable for d in out)


def test_batch_kinds(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        out = client.authorize_batch(REQUESTS)
    assert kinds(out) == EXPECTED


def test_stream_kinds(server: Running) -> None:
    with StepguardClient(server.tcp) as client, client.stream() as stream:
        out = [stream.authorize(r) for r in REQUESTS]
        assert stream.broken == ""
    assert kinds(out) == EXPECTED


def test_async_kinds(server: Running) -> None:
    async def run() -> tuple[list[StepDecision], list[StepDecision]]:
        async with AsyncStepguardClient(f"unix://{server.socket}") as client:
            one = [await client.authorize(r) for r in REQUESTS]
            batch = await client.authorize_batch(REQUESTS)
        return one, batch

    one, batch = asyncio.run(run())
    assert kinds(one) == EXPECTED
    assert kinds(batch) == EXPECTED


def test_unreachable_is_unavailable_and_retryable() -> None:
    unavailable = (DecisionKind.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    with StepguardClient(_closed_port(), timeout=5) as client:
        one = client.authorize(notify_request())
        batch = client.authorize_batch([notify_request(), client_invalid()])
    assert (one.kind, one.code) == unavailable and one.kind.retryable
    # The item the client could not build is still its caller's bug, not the outage.
    assert kinds(batch) == [unavailable, (DecisionKind.INVALID_REQUEST, INVALID)]

    async def run() -> StepDecision:
        async with AsyncStepguardClient(_closed_port(), timeout=5) as client:
            return await client.authorize(notify_request())

    down = asyncio.run(run())
    assert (down.kind, down.code) == unavailable


def test_no_answer_in_time_is_deadline(silent_port: str) -> None:
    with StepguardClient(silent_port, timeout=0.5) as client:
        one = client.authorize(notify_request())
        batch = client.authorize_batch([notify_request()])
    deadline = (DecisionKind.DEADLINE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert (one.kind, one.code) == deadline and one.kind.retryable
    assert kinds(batch) == [deadline]


def test_a_broken_stream_is_unavailable(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        client = StepguardClient(running.tcp, timeout=1.0)
        stream = client.stream()
        assert stream.authorize(notify_request()).kind is DecisionKind.ALLOW
        running.sidecar.stop(grace=0.5)
        after = stream.authorize(notify_request())
        assert not after.allowed and after.kind.retryable, after
        stream.close()
        client.close()


def test_a_deny_can_never_claim_to_be_an_allow() -> None:
    assert (
        StepDecision(allowed=False, reason="x", kind=DecisionKind.ALLOW).kind is DecisionKind.DENY
    )
    assert StepDecision(allowed=True, reason="x").kind is DecisionKind.ALLOW
    assert denied("x").kind is DecisionKind.DENY and denied("x").code is None
