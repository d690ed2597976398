"""AuthorizeStream and the asyncio server, on the real sidecar (TCP and Unix socket)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core import engine
from sidecar.core.jsonreq import request_from_json
from sidecar.decision import decider as decider_module
from tests.helpers import Running, grant_request, notify_request, running_sidecar


@pytest.fixture(scope="module", params=["sync", "asyncio", "asyncio-stdlib-loop"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """The sync server, and the asyncio server on uvloop (default) and on the stdlib loop."""
    mode, _, loop = request.param.partition("-")
    event_loop = "asyncio" if loop else "uvloop"
    with running_sidecar(
        tmp_path_factory.mktemp(f"stream-{request.param}"),
        server_mode=mode,
        event_loop=event_loop,
        threads=4,
    ) as running:
        assert running.sidecar.settings.server_mode == mode
        if mode == "asyncio":
            aio: Any = running.sidecar._grpc
            kind = type(aio._loop).__module__.split(".")[0]
            assert kind == ("uvloop" if event_loop == "uvloop" else "asyncio")
        yield running


@pytest.fixture(scope="module", params=["tcp", "unix"])
def channel(request: pytest.FixtureRequest, server: Running) -> Iterator[grpc.Channel]:
    target = server.tcp if request.param == "tcp" else f"unix://{server.socket}"
    with grpc.insecure_channel(target) as ch:
        yield ch


def _items(*reqs: pb.AuthorizeRequest) -> Iterator[pb.AuthorizeStreamRequest]:
    for i, r in enumerate(reqs):
        yield pb.AuthorizeStreamRequest(id=100 + i, request=r)


def test_stream_answers_each_request_in_order(channel: grpc.Channel, server: Running) -> None:
    stub = pb_grpc.AuthorizerStub(channel)
    allow = request_from_json(notify_request())
    deny = request_from_json(grant_request(approver=None))
    invalid = pb.AuthorizeRequest()  # no principal
    answers = list(stub.AuthorizeStream(_items(allow, deny, invalid, allow), timeout=10))
    assert [a.id for a in answers] == [100, 101, 102, 103]
    assert answers[0].response.decision == pb.DECISION_ALLOW
    assert answers[1].response.decision == pb.DECISION_DENY
    assert answers[2].WhichOneof("outcome") == "error"
    assert answers[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[2].error.message == "principal: is required"
    assert answers[3].response.decision == pb.DECISION_ALLOW
    # Every decision is audited, like a unary one; the repeat came from the cache.
    events = {e["id"]: e for e in server.audit_events() if e.get("kind") == "decision"}
    for a in (answers[0], answers[1], answers[3]):
        assert events[a.response.decision_id]["decision"] in ("ALLOW", "DENY")
    assert events[answers[3].response.decision_id]["cached"] is True


def test_stream_pipelines_many(channel: grpc.Channel) -> None:
    stub = pb_grpc.AuthorizerStub(channel)
    reqs = [request_from_json(notify_request()) for _ in range(200)]
    answers = list(stub.AuthorizeStream(_items(*reqs), timeout=30))
    assert [a.id for a in answers] == list(range(100, 300))
    assert {a.response.decision for a in answers} == {pb.DECISION_ALLOW}


def test_undecodable_stream_message_is_invalid_argument(channel: grpc.Channel) -> None:
    call = channel.stream_stream(
        "/stepguard.v1.Authorizer/AuthorizeStream",
        request_serializer=lambda b: b,
        response_deserializer=pb.AuthorizeStreamResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(call(iter([b"\xff\xff\xff"]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "AuthorizeStreamRequest" in str(info.value.details())


def test_unary_and_batch_on_both_servers(channel: grpc.Channel) -> None:
    stub = pb_grpc.AuthorizerStub(channel)
    assert stub.Authorize(request_from_json(notify_request()), timeout=5).decision == (
        pb.DECISION_ALLOW
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Authorize(pb.AuthorizeRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "principal: is required"
    batch = stub.AuthorizeBatch(
        pb.AuthorizeBatchRequest(
            items=[request_from_json(notify_request()), pb.AuthorizeRequest()]
        ),
        timeout=5,
    )
    assert batch.results[0].response.decision == pb.DECISION_ALLOW
    assert batch.results[1].error.message == "items[1].principal: is required"
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(
        health_pb2.HealthCheckRequest(service="stepguard.v1.Authorizer"), timeout=5
    )
    assert status.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_open_streams_are_limited(tmp_path: Path, mode: str) -> None:
    """Each stream holds a worker; past the limit a new one is RESOURCE_EXHAUSTED."""
    with running_sidecar(tmp_path, server_mode=mode, threads=2) as running:
        assert running.sidecar.settings.threads // 2 == 1
        with grpc.insecure_channel(running.tcp) as ch:
            stub = pb_grpc.AuthorizerStub(ch)
            gate = threading.Event()

            def held() -> Iterator[pb.AuthorizeStreamRequest]:
                yield pb.AuthorizeStreamRequest(id=1, request=request_from_json(notify_request()))
                gate.wait(10)

            first = stub.AuthorizeStream(held(), timeout=20)
            opened = next(iter(first))
            assert opened.response.decision == pb.DECISION_ALLOW  # the stream is open
            with pytest.raises(grpc.RpcError) as info:
                list(stub.AuthorizeStream(_items(request_from_json(notify_request())), timeout=10))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            assert list(first) == []
            # Released once the first stream ended.
            again: list[Any] = list(
                stub.AuthorizeStream(_items(request_from_json(notify_request())), timeout=10)
            )
            assert again[0].response.decision == pb.DECISION_ALLOW


def test_asyncio_server_stops_gracefully(tmp_path: Path) -> None:
    with running_sidecar(tmp_path, server_mode="asyncio") as running:
        with grpc.insecure_channel(running.tcp) as ch:
            stub = pb_grpc.AuthorizerStub(ch)
            assert stub.Authorize(request_from_json(notify_request()), timeout=5).decision == (
                pb.DECISION_ALLOW
            )
        running.sidecar.stop(grace=1.0)
        with grpc.insecure_channel(running.tcp) as ch, pytest.raises(grpc.RpcError) as info:
            pb_grpc.AuthorizerStub(ch).Authorize(request_from_json(notify_request()), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _committing_threads(running: Running) -> list[str]:
    """Names of the threads that write the sink's batches to the file from now on."""
    sink: Any = running.sidecar.sink
    names: list[str] = []
    append = sink._append

    def spy(data: bytes) -> None:
        names.append(threading.current_thread().name)
        append(data)

    sink._append = spy
    return names


def test_asyncio_with_fsync_commits_off_the_loop(tmp_path: Path) -> None:
    """With fsync durability the loop never waits for the disk: it queues events for
    the trail's committer thread, and each answer waits until its event is written."""
    with running_sidecar(tmp_path, server_mode="asyncio", audit_durability="fsync") as running:
        committers = _committing_threads(running)
        with grpc.insecure_channel(running.tcp) as ch:
            stub = pb_grpc.AuthorizerStub(ch)
            futures = [
                stub.Authorize.future(request_from_json(notify_request()), timeout=10)
                for _ in range(40)
            ]
            answers = [f.result() for f in futures]
            assert {a.decision for a in answers} == {pb.DECISION_ALLOW}
            streamed = list(
                stub.AuthorizeStream(_items(request_from_json(notify_request())), timeout=10)
            )
            assert streamed[0].response.decision == pb.DECISION_ALLOW
        ids = {e["id"] for e in running.audit_events() if e.get("kind") == "decision"}
        assert {a.decision_id for a in answers} <= ids
        assert committers and set(committers) == {"stepguard-audit-commit"}


def test_asyncio_with_flush_writes_on_the_loop(tmp_path: Path) -> None:
    """With the default durability the loop writes each event itself: one write(2), no hand-off."""
    with running_sidecar(tmp_path, server_mode="asyncio") as running:
        committers = _committing_threads(running)
        with grpc.insecure_channel(running.tcp) as ch:
            stub = pb_grpc.AuthorizerStub(ch)
            answer = stub.Authorize(request_from_json(notify_request()), timeout=5)
            assert answer.decision == pb.DECISION_ALLOW
        assert committers == ["stepguard-aio"]


_RUNS = itertools.count(0, 10_000)


def _misses(count: int) -> list[pb.AuthorizeRequest]:
    """Distinct requests (each a miss, never asked before), allowed, denied and invalid in turn."""
    out = []
    first = next(_RUNS)
    for i in range(first, first + count):
        shape = i % 3
        body = notify_request() if shape == 0 else grant_request(approver=None)
        body["context"]["run_id"] = f"window-{i}"
        msg = request_from_json(body)
        if shape == 2:
            msg.action.id = "fly"  # invalid: no such action
        out.append(msg)
    return out


def test_pipelined_stream_requests_are_decided_in_windows(
    channel: grpc.Channel, server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: the requests of a stream that arrived together go to Cedar in one call
    (the asyncio server), answered exactly as one by one: same order, same answers."""
    sizes: list[int] = []

    def counting(bundle: Any, requests: Any, **kw: Any) -> Any:
        sizes.append(len(requests))
        return engine.evaluate_many(bundle, requests, **kw)

    # The client and this in-process server share the GIL: the first request's
    # decision waits a moment (sleeping releases the GIL), so that the others have
    # all been sent while it is decided, as a pipelining client's would have been.
    first: list[bool] = []

    def slow_first(bundle: Any, request: Any, **kw: Any) -> Any:
        if not first:
            first.append(True)
            time.sleep(0.2)
        return engine.evaluate(bundle, request, **kw)

    monkeypatch.setattr("sidecar.decision.decider.evaluate_many", counting)
    monkeypatch.setattr("sidecar.decision.evaluation.evaluate", slow_first)
    stub = pb_grpc.AuthorizerStub(channel)
    reqs = _misses(120)
    answers = list(stub.AuthorizeStream(_items(*reqs), timeout=60))
    assert [a.id for a in answers] == list(range(100, 220))
    for req, got in zip(reqs, answers, strict=True):
        if req.action.id == "fly":
            assert got.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert got.error.message.startswith("action:")
            continue
        one = stub.Authorize(req, timeout=5)  # now a hit: the same decision
        assert got.response.decision == one.decision
        assert got.response.reason == one.reason
        assert list(got.response.determining_policies) == list(one.determining_policies)
    decided = [a for a in answers if a.HasField("response")]
    events = {e["id"]: e for e in server.audit_events() if e.get("kind") == "decision"}
    cached = [a.id for a in decided if events[a.response.decision_id]["cached"]]
    assert cached == [], (cached, sizes)
    if server.sidecar.settings.server_mode == "asyncio":
        assert max(sizes) > 1, sizes  # windows formed
        assert max(sizes) <= decider_module.BATCH_WINDOW
        assert sum(sizes) <= len(decided)  # each miss evaluated once (a lone one alone)
    else:
        assert sizes == []  # the sync server decides a stream one request at a time


def test_an_undecodable_request_ends_the_stream_after_the_answers_before_it(
    channel: grpc.Channel,
) -> None:
    call = channel.stream_stream(
        "/stepguard.v1.Authorizer/AuthorizeStream",
        request_serializer=lambda b: b,
        response_deserializer=pb.AuthorizeStreamResponse.FromString,
    )
    good = [item.SerializeToString() for item in _items(*_misses(30))]
    got: list[pb.AuthorizeStreamResponse] = []
    with pytest.raises(grpc.RpcError) as info:
        for answer in call(iter([*good, b"\xff\xff\xff", *good]), timeout=30):
            got.append(answer)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "AuthorizeStreamRequest" in str(info.value.details())
    assert [a.id for a in got] == list(range(100, 130))  # every one before it, in order
