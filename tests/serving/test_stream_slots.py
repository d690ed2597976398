"""AuthorizeStream slots on the real sidecar (issue 25 point 9).

Idle streams used to hold their slot for as long as the caller kept them
open, and one caller could hold every slot: eight idle streams locked every
other stream out. Now a caller holds at most its share, and an idle stream is
closed by the server with RESOURCE_EXHAUSTED saying so.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.errors import ConfigError
from sidecar.core.jsonreq import request_from_json
from sidecar.serving.config import Settings
from sidecar.serving.streams import caller_key
from tests.helpers import Running, notify_request, running_sidecar
from tests.pki import Pki, make_pki, tls_settings

MODES = ["sync", "asyncio"]
TEAM_A = "spiffe://example.org/ns/etl/sa/team-a"
TEAM_B = "spiffe://example.org/ns/etl/sa/team-b"


class IdleStream:
    """A stream that sends one request, reads its answer, then sends nothing more."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._done = threading.Event()
        self.call: Any = pb_grpc.AuthorizerStub(channel).AuthorizeStream(
            self._requests(), timeout=30
        )

    def _requests(self) -> Iterator[pb.AuthorizeStreamRequest]:
        yield pb.AuthorizeStreamRequest(id=1, request=request_from_json(notify_request()))
        self._done.wait(30)

    def first(self) -> pb.AuthorizeStreamResponse:
        answer: pb.AuthorizeStreamResponse = next(self.call)
        return answer

    def close(self) -> None:
        self._done.set()
        self.call.cancel()


def _metric(running: Running, line_start: str) -> float:
    with urllib.request.urlopen(f"http://{running.metrics}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def _channel(stack: ExitStack, running: Running, pki: Pki, identity: str) -> grpc.Channel:
    pair = pki.domain.issue(spiffe=identity)
    creds = grpc.ssl_channel_credentials(pki.domain.pem, pair.key, pair.cert)
    # A channel of its own per stream: callers are told apart by identity, not connection.
    options = [
        ("grpc.ssl_target_name_override", "localhost"),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return stack.enter_context(grpc.secure_channel(running.tcp, creds, options=options))


@pytest.mark.parametrize("mode", MODES)
def test_one_caller_cannot_take_every_stream(tmp_path: Path, pki: Pki, mode: str) -> None:
    settings = tls_settings(tmp_path / "tls", pki)
    with running_sidecar(tmp_path, server_mode=mode, threads=8, **settings) as running:
        assert running.sidecar.settings.threads // 2 == 4  # four streams in all
        with ExitStack() as stack:
            held, refused = [], None
            for _ in range(4):  # team A opens idle streams until it is refused
                stream = IdleStream(_channel(stack, running, pki, TEAM_A))
                stack.callback(stream.close)
                try:
                    assert stream.first().response.decision == pb.DECISION_ALLOW
                except grpc.RpcError as exc:
                    refused = exc
                    break
                held.append(stream)
            assert refused is not None, "one caller took every stream"
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"this caller ({TEAM_A}) has 2 AuthorizeStream calls open" in (
                refused.details() or ""
            )
            assert len(held) == 2  # its share: half of the four
            # Another caller still gets a stream, and answers on it.
            other = IdleStream(_channel(stack, running, pki, TEAM_B))
            stack.callback(other.close)
            assert other.first().response.decision == pb.DECISION_ALLOW
            assert _metric(running, "stepguard_streams_open") == 3
            refusals = 'stepguard_streams_refused_total{reason="per_caller"}'
            assert _metric(running, refusals) == 1


@pytest.mark.parametrize("mode", MODES)
def test_an_idle_stream_is_closed_and_its_slot_freed(tmp_path: Path, mode: str) -> None:
    with (
        running_sidecar(
            tmp_path, server_mode=mode, threads=2, stream_idle_timeout_s=0.5
        ) as running,
        grpc.insecure_channel(running.tcp) as channel,
    ):  # a single stream slot
        idle = IdleStream(channel)
        try:
            assert idle.first().response.decision == pb.DECISION_ALLOW
            with pytest.raises(grpc.RpcError) as ended:
                next(idle.call)  # nothing more is sent: the server ends the stream
        finally:
            idle.close()
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = ended.value.details() or ""
        assert "idle for 0.5 s (stream_idle_timeout_s)" in details
        _wait_for(lambda: _metric(running, "stepguard_streams_open") == 0, "the slot")
        assert _metric(running, "stepguard_streams_idle_closed_total") == 1
        again = IdleStream(channel)  # the one slot is free again
        try:
            assert again.first().response.decision == pb.DECISION_ALLOW
        finally:
            again.close()
    decisions = [e for e in running.audit_events() if e.get("kind") == "decision"]
    assert len(decisions) == 2  # one per answer received, nothing decided in the dark


def test_a_busy_stream_is_not_idle(tmp_path: Path) -> None:
    """Requests keep coming, each within the timeout: the stream stays open."""
    with (
        running_sidecar(tmp_path, threads=2, stream_idle_timeout_s=5.0) as running,
        grpc.insecure_channel(running.tcp) as channel,
    ):
        stub = pb_grpc.AuthorizerStub(channel)
        sent = threading.Semaphore(0)

        def requests() -> Iterator[pb.AuthorizeStreamRequest]:
            for i in range(12):
                yield pb.AuthorizeStreamRequest(id=i, request=request_from_json(notify_request()))
                sent.acquire(timeout=30)  # the next one once this one was answered

        answers = []
        for answer in stub.AuthorizeStream(requests(), timeout=60):
            answers.append(answer.response.decision)
            time.sleep(0.5)  # well within the idle timeout; 12 of them outlast it
            sent.release()
    assert answers == [pb.DECISION_ALLOW] * 12


def test_the_caller_is_the_identity_else_the_peer_without_its_port() -> None:
    assert caller_key("ipv4:10.0.0.7:41234", "") == "ipv4:10.0.0.7"
    assert caller_key("ipv6:[::1]:41234", "") == "ipv6:[::1]"
    assert caller_key("unix:", "") == "unix:"
    assert caller_key("ipv4:10.0.0.7:41234", TEAM_A) == TEAM_A


def test_stream_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="stream_idle_timeout_s must be positive"):
        Settings(stream_idle_timeout_s=0)
    with pytest.raises(ConfigError, match="stream_max_per_caller must not be negative"):
        Settings(stream_max_per_caller=-1)
