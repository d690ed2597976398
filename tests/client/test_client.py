"""The orchestrator client against the real server: fail closed in every way."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import AsyncStepguardClient, StepDenied, StepguardClient
from tests.helpers import Running, grant_request, notify_request, running_sidecar


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_sidecar(tmp_path_factory.mktemp("client")) as running:
        yield running


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_allow_and_deny(server: Running, transport: str) -> None:
    target = server.tcp if transport == "tcp" else f"unix://{server.socket}"
    with StepguardClient(target) as client:
        ok = client.authorize(notify_request())
        assert ok.allowed and ok.decision_id and ok.policy_revision
        assert ok.determining_policies == ("step-runners-read-and-notify",)
        no = client.authorize(grant_request(approver=None))
        assert not no.allowed
        assert "identity-change-requires-independent-approval" in no.determining_policies


def test_unreachable_sidecar_denies_without_raising() -> None:
    with StepguardClient(_closed_port(), timeout=0.5) as client:
        decision = client.authorize(notify_request())
    assert not decision.allowed
    assert "UNAVAILABLE" in decision.reason or "DEADLINE_EXCEEDED" in decision.reason


def test_invalid_request_denies_without_raising(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        bad_type = client.authorize({**notify_request(), "principal": {"type": "Robot", "id": "r"}})
        not_json_shape = client.authorize({"principal": "Workload::x"})
    assert not bad_type.allowed and "principal.type" in bad_type.reason
    assert not not_json_shape.allowed and "principal" in not_json_shape.reason


def test_batch(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        out = client.authorize_batch(
            [
                notify_request(),
                grant_request(approver=None),
                {**notify_request(), "action": {"type": "Action", "id": "x"}},
            ]
        )
    assert [d.allowed for d in out] == [True, False, False]
    assert "items[2].action" in out[2].reason


def test_batch_item_the_client_cannot_build_is_denied_alone(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        out = client.authorize_batch([{"principal": "nonsense"}, notify_request()])
    assert [d.allowed for d in out] == [False, True]
    assert out[0].reason.startswith("invalid request: ") and not out[0].decision_id
    assert out[1].decision_id
    with StepguardClient(_closed_port(), timeout=0.5) as dead:  # never called: nothing to send
        assert dead.authorize_batch([]) == []
        (alone,) = dead.authorize_batch([{"principal": "nonsense"}])
    assert alone.reason.startswith("invalid request: ")


def test_batch_unreachable_denies_every_item() -> None:
    with StepguardClient(_closed_port(), timeout=0.5) as client:
        out = client.authorize_batch([notify_request(), notify_request()])
    assert len(out) == 2 and not any(d.allowed for d in out)


def test_guard_runs_the_step_only_when_allowed(server: Running) -> None:
    ran: list[str] = []
    with StepguardClient(server.tcp) as client:
        with client.guard(notify_request()) as decision:
            ran.append(decision.decision_id)

        @client.guarded(grant_request(approver="maria"))
        def grant() -> str:
            ran.append("grant")
            return "granted"

        with pytest.raises(StepDenied) as info:
            grant()
    assert len(ran) == 1
    assert not info.value.decision.allowed
    assert "step denied by stepguard" in str(info.value)


def test_guard_with_stopped_sidecar_fails_closed(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        target = running.tcp
    ran = False
    client = StepguardClient(target, timeout=0.5)
    with pytest.raises(StepDenied) as info, client.guard(notify_request()):
        ran = True
    client.close()
    assert not ran
    assert "UNAVAILABLE" in info.value.decision.reason


def test_async_client(server: Running) -> None:
    async def run() -> tuple[bool, bool, bool]:
        async with AsyncStepguardClient(f"unix://{server.socket}") as client:
            ok = await client.authorize(notify_request())
            no = await client.authorize(grant_request(approver=None))
            try:
                await client.check(grant_request(approver=None))
                raised = False
            except StepDenied:
                raised = True
        async with AsyncStepguardClient(_closed_port(), timeout=0.5) as dead:
            down = await dead.authorize(notify_request())
        assert not down.allowed
        return ok.allowed, no.allowed, raised

    assert asyncio.run(run()) == (True, False, True)


def test_async_batch(server: Running) -> None:
    async def run() -> tuple[list[bool], list[bool]]:
        async with AsyncStepguardClient(f"unix://{server.socket}") as client:
            items = [notify_request(), grant_request(approver=None), {"principal": "nonsense"}]
            answers = await client.authorize_batch(items)
        async with AsyncStepguardClient(_closed_port(), timeout=0.5) as dead:
            down = await dead.authorize_batch([notify_request(), notify_request()])
        assert all("UNAVAILABLE" in d.reason for d in down)
        return [a.allowed for a in answers], [d.allowed for d in down]

    assert asyncio.run(run()) == ([True, False, False], [False, False])


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_trace_context_and_request_id_reach_the_audit_event(server: Running) -> None:
    """Every call form carries them; the trail records them per decision."""
    with StepguardClient(server.tcp) as client:
        one = client.authorize(notify_request(), traceparent=TRACEPARENT, request_id="run-7/a")
        batch = client.authorize_batch(
            [notify_request(), grant_request()], traceparent=TRACEPARENT, request_id="run-7/b"
        )
        with client.guard(notify_request(), request_id="run-7/c") as guarded:
            pass
        plain = client.authorize(notify_request())

    async def run() -> list[str]:
        async with AsyncStepguardClient(server.tcp) as client:
            a = await client.authorize(notify_request(), traceparent=TRACEPARENT)
            b = await client.authorize_batch([notify_request()], request_id="run-7/e")
            c = await client.check(notify_request(), request_id="run-7/f")
        return [a.decision_id, b[0].decision_id, c.decision_id]

    async_ids = asyncio.run(run())
    events = {e["id"]: e for e in server.audit_events() if e.get("kind") == "decision"}

    def recorded(decision_id: str) -> tuple[str | None, str | None]:
        event = events[decision_id]
        return event.get("trace_id"), event.get("request_id")

    assert recorded(one.decision_id) == (TRACE, "run-7/a")
    assert [recorded(d.decision_id) for d in batch] == [(TRACE, "run-7/b")] * 2
    assert recorded(guarded.decision_id) == (None, "run-7/c")
    assert recorded(plain.decision_id) == (None, None)
    assert [recorded(i) for i in async_ids] == [
        (TRACE, None),
        (None, "run-7/e"),
        (None, "run-7/f"),
    ]


def test_metadata_the_transport_refuses_fails_closed(server: Running) -> None:
    with StepguardClient(server.tcp) as client:
        decision = client.authorize(notify_request(), request_id="line\nbreak")
    assert not decision.allowed and decision.reason


def test_stream_serves_many_threads_in_order_of_their_own_requests(server: Running) -> None:
    import concurrent.futures

    asks = [notify_request(), grant_request(approver=None), grant_request()] * 30
    with StepguardClient(server.tcp) as client, client.stream(request_id="bulk-1") as stream:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(stream.authorize, asks))
        invalid = stream.authorize({**notify_request(), "action": {"type": "Action", "id": "x"}})
        after = stream.authorize(notify_request())  # the stream goes on after a bad item
        assert stream.broken == ""
    assert [a.allowed for a in answers] == [True, False, True] * 30
    assert not invalid.allowed and invalid.reason.startswith("invalid request: ")
    assert after.allowed
    events = {e["id"]: e for e in server.audit_events() if e.get("kind") == "decision"}
    assert len({a.decision_id for a in answers}) == len(answers)
    for ask, answer in zip(asks, answers, strict=True):
        event = events[answer.decision_id]  # each answer is its own request's decision
        assert event["request_id"] == "bulk-1"
        assert event["action"]["id"] == ask["action"]["id"]
        assert ("approval" in event["context"]) == ("approval" in ask["context"])


def test_stream_falls_back_to_unary_when_the_server_refuses_it(tmp_path: Path) -> None:
    with (
        running_sidecar(tmp_path, threads=2) as running,  # room for one open stream
        StepguardClient(running.tcp) as client,
        client.stream() as first,
    ):
        # The first stream holds the one place before the second opens: opened
        # together, either could get it.
        assert first.authorize(notify_request()).allowed and first.broken == ""
        with client.stream() as second:
            decision = second.authorize(notify_request())
            assert decision.allowed and decision.decision_id  # never decided on the stream
            assert "RESOURCE_EXHAUSTED" in second.broken and first.broken == ""
            assert not second.authorize(grant_request(approver=None)).allowed
    decided = [e["id"] for e in running.audit_events() if e.get("kind") == "decision"]
    assert len(decided) == 3  # one decision per question: nothing was asked twice


def test_stream_fails_closed_when_the_sidecar_goes(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        client = StepguardClient(running.tcp, timeout=1.0)
        stream = client.stream()
        assert stream.authorize(notify_request()).allowed
        running.sidecar.stop(grace=0.5)
        after = stream.authorize(notify_request())
        # Denied, whether the break was seen before the call (unary: UNAVAILABLE) or after.
        assert not after.allowed and after.reason.startswith("stepguard")
        assert stream.broken
        stream.close()
        client.close()
