"""The real gRPC server on TCP loopback and a Unix socket."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.jsonreq import request_from_json
from sidecar.core.validate import Limits
from tests.helpers import Running, grant_request, notify_request, running_sidecar


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_sidecar(
        tmp_path_factory.mktemp("server"),
        limits=Limits(max_request_bytes=4096, max_attribute_depth=4, max_batch_items=5),
    ) as running:
        yield running


@pytest.fixture(scope="module", params=["tcp", "unix"])
def stub(request: pytest.FixtureRequest, server: Running) -> Iterator[pb_grpc.AuthorizerStub]:
    target = server.tcp if request.param == "tcp" else f"unix://{server.socket}"
    with grpc.insecure_channel(target) as channel:
        yield pb_grpc.AuthorizerStub(channel)


def _invalid(stub: pb_grpc.AuthorizerStub, msg: pb.AuthorizeRequest) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.Authorize(msg, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(info.value.details())


def test_allow_carries_id_revision_and_reasons(
    stub: pb_grpc.AuthorizerStub, server: Running
) -> None:
    resp = stub.Authorize(request_from_json(notify_request()), timeout=5)
    assert resp.decision == pb.DECISION_ALLOW
    assert [p.id for p in resp.determining_policies] == ["step-runners-read-and-notify"]
    assert resp.determining_policies[0].source.startswith("read_only.cedar:")
    assert resp.policy_revision == server.sidecar.holder.current().revision
    assert len(resp.decision_id) == 36 and resp.decision_id[14] == "7"


def test_deny_without_independent_approval(stub: pb_grpc.AuthorizerStub) -> None:
    allowed = stub.Authorize(request_from_json(grant_request()), timeout=5)
    assert allowed.decision == pb.DECISION_ALLOW, allowed.reason
    for bad in (grant_request(approver=None), grant_request(approver="maria", requester="maria")):
        resp = stub.Authorize(request_from_json(bad), timeout=5)
        assert resp.decision == pb.DECISION_DENY
        assert "identity-change-requires-independent-approval" in {
            p.id for p in resp.determining_policies
        }
        assert not resp.HasField("obligations") or not resp.obligations.HasField(
            "max_credential_ttl"
        )


def test_obligation_is_smallest_ttl(stub: pb_grpc.AuthorizerStub) -> None:
    req = grant_request()
    req["action"] = {"type": "Action", "id": "issue_credential"}
    req["resource"] = {"type": "TargetSystem", "id": "github"}
    req["context"]["sensitivity"] = "high"
    resp = stub.Authorize(request_from_json(req), timeout=5)
    assert resp.decision == pb.DECISION_ALLOW, resp.reason
    assert resp.obligations.max_credential_ttl.ToSeconds() == 15 * 60


def _with(mutate: Any) -> pb.AuthorizeRequest:
    msg = request_from_json(notify_request())
    mutate(msg)
    return msg


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m.ClearField("principal"), "principal: is required"),
        (lambda m: m.ClearField("action"), "action: is required"),
        (lambda m: m.ClearField("resource"), "resource: is required"),
        (lambda m: setattr(m.principal, "type", ""), "principal.type: is required"),
        (
            lambda m: setattr(m.principal, "type", "Robot"),
            "principal.type: 'Robot' is not an entity",
        ),
        (lambda m: setattr(m.resource, "type", "no spaces"), "resource.type: 'no spaces' is not a"),
        (lambda m: setattr(m.action, "id", "launch_missiles"), 'action: Action::"launch_missiles"'),
        (lambda m: setattr(m.context, "sensitivity", 42), "context.sensitivity: unknown value 42"),
        (lambda m: setattr(m.context, "attempt", -1), "context.attempt: must not be negative"),
        (
            lambda m: m.context.attributes["now"].CopyFrom(pb.Value(bool_value=True)),
            "context.attributes['now']: is reserved",
        ),
        (
            lambda m: m.context.attributes["x"].CopyFrom(pb.Value()),
            "context.attributes['x']: value has no kind set",
        ),
        (
            lambda m: m.context.attributes["x"].extension_value.CopyFrom(
                pb.ExtensionValue(function="eval", argument="1")
            ),
            "context.attributes['x'].extension_value.function",
        ),
        (
            lambda m: m.context.approval.approved_at.GetCurrentTime(),
            "context.approval.approver: is required",
        ),
        (
            lambda m: (
                m.context.time_bound.not_before.FromSeconds(2_000_000_000),
                m.context.time_bound.not_after.FromSeconds(1_000_000_000),
            ),
            "context.time_bound: not_before is after not_after",
        ),
        (
            lambda m: setattr(m.context.time_bound.not_after, "nanos", -5),
            "context.time_bound.not_after: nanos -5 out of range",
        ),
        (
            lambda m: m.context.attributes["deep"].CopyFrom(
                pb.Value(
                    record_value=pb.ValueMap(
                        fields={
                            "a": pb.Value(
                                record_value=pb.ValueMap(
                                    fields={
                                        "b": pb.Value(
                                            record_value=pb.ValueMap(
                                                fields={
                                                    "c": pb.Value(
                                                        set_value=pb.ValueList(
                                                            values=[pb.Value(long_value=1)]
                                                        )
                                                    )
                                                }
                                            )
                                        )
                                    }
                                )
                            )
                        }
                    )
                )
            ),
            "nests deeper than the attribute depth limit",
        ),
        (
            lambda m: m.context.attributes["big"].CopyFrom(pb.Value(string_value="x" * 5000)),
            "request: is 5",
        ),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(
    stub: pb_grpc.AuthorizerStub, mutate: Any, field: str
) -> None:
    assert field in _invalid(stub, _with(mutate))
    # The service keeps serving.
    assert (
        stub.Authorize(request_from_json(notify_request()), timeout=5).decision == pb.DECISION_ALLOW
    )


def test_request_cedar_cannot_build_is_deny_with_diagnostics(stub: pb_grpc.AuthorizerStub) -> None:
    # An attribute the schema does not declare: Cedar refuses to build the request.
    msg = _with(lambda m: m.context.attributes["undeclared"].CopyFrom(pb.Value(long_value=1)))
    resp = stub.Authorize(msg, timeout=5)
    assert resp.decision == pb.DECISION_DENY
    assert any("failed to build request" in e.message for e in resp.errors)


def test_request_attributes_conflicting_with_store_are_rejected(
    stub: pb_grpc.AuthorizerStub,
) -> None:
    msg = _with(lambda m: m.principal.attributes["shared"].CopyFrom(pb.Value(bool_value=True)))
    assert "principal.attributes['shared']: conflicts with the value" in _invalid(stub, msg)


def test_request_entities_cannot_declare_their_own_groups(stub: pb_grpc.AuthorizerStub) -> None:
    """The example's request-entities.yaml admits bare workloads only (issue 16); what an
    admitted description adds lasts one call (tests/core/test_request_entities.py)."""
    unknown = {"type": "Workload", "id": "spiffe://example.org/ns/new/sa/job"}
    req = notify_request()
    req["principal"] = {
        **unknown,
        "attributes": {"shared": False},
        "parents": [{"type": "WorkloadGroup", "id": "step-runners"}],
    }
    assert _invalid(stub, request_from_json(req)).startswith("principal.parents[0]: ")
    req["principal"] = unknown
    assert stub.Authorize(request_from_json(req), timeout=5).decision == pb.DECISION_DENY


def test_batch_in_order_with_item_errors(stub: pb_grpc.AuthorizerStub) -> None:
    items = [
        request_from_json(notify_request()),
        request_from_json(grant_request(approver=None)),
        _with(lambda m: m.ClearField("principal")),
        request_from_json(grant_request()),
    ]
    resp = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(items=items), timeout=5)
    kinds = [r.WhichOneof("outcome") for r in resp.results]
    assert kinds == ["response", "response", "error", "response"]
    assert resp.results[0].response.decision == pb.DECISION_ALLOW
    assert resp.results[1].response.decision == pb.DECISION_DENY
    assert resp.results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert resp.results[2].error.message.startswith("items[2].principal")
    assert resp.results[3].response.decision == pb.DECISION_ALLOW
    ids = [r.response.decision_id for r in resp.results if r.HasField("response")]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_batch_over_limit(stub: pb_grpc.AuthorizerStub) -> None:
    items = [request_from_json(notify_request())] * 6
    with pytest.raises(grpc.RpcError) as info:
        stub.AuthorizeBatch(pb.AuthorizeBatchRequest(items=items), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items: 6 items, over the limit of 5" in str(info.value.details())


def test_every_decision_is_audited(server: Running) -> None:
    with grpc.insecure_channel(server.tcp) as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        resp = stub.Authorize(request_from_json(grant_request(approver=None)), timeout=5)
    events = {e["id"]: e for e in server.audit_events()}
    event = events[resp.decision_id]
    assert event["decision"] == "DENY"
    assert event["policy_revision"] == resp.policy_revision
    assert event["principal"]["id"].startswith("spiffe://")
    assert event["workflow_id"] == "onboarding" and event["step_id"] == "grant"
    assert event["context"]["now"] == {
        "__extn": {"fn": "datetime", "arg": "2026-11-25T10:00:00.000Z"}
    }
    assert {r["policy"] for r in event["reasons"]} == {p.id for p in resp.determining_policies}


def test_request_ids_reach_the_audit_event_misses_and_hits_alike(server: Running) -> None:
    """A well-formed x-request-id is recorded; a malformed one is ignored, never refused."""
    msg = request_from_json(notify_request())
    sent = [
        ("wf-7/run-3/notify", "wf-7/run-3/notify"),
        ("wf-7/run-3/notify-again", "wf-7/run-3/notify-again"),  # a cache hit now
        ("x" * 129, None),  # over 128 characters (gRPC itself refuses non-printable ones)
    ]
    with grpc.insecure_channel(server.tcp) as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        answers = [
            stub.Authorize(msg, metadata=(("x-request-id", value),), timeout=5) for value, _ in sent
        ]
    events = {e["id"]: e for e in server.audit_events()}
    for resp, (_, recorded) in zip(answers, sent, strict=True):
        assert resp.decision == pb.DECISION_ALLOW
        assert events[resp.decision_id].get("request_id") == recorded
    assert events[answers[1].decision_id]["cached"] is True


def test_health_and_reflection(server: Running) -> None:
    with grpc.insecure_channel(server.tcp) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "stepguard.v1.Authorizer"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"stepguard.v1.Authorizer", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint(server: Running) -> None:
    with grpc.insecure_channel(server.tcp) as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        stub.Authorize(request_from_json(notify_request()), timeout=5)
        _invalid(stub, _with(lambda m: m.ClearField("principal")))
    text = urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=5).read().decode()
    assert 'stepguard_decisions_total{cached="false",decision="ALLOW"}' in text
    assert "stepguard_decision_duration_seconds_bucket" in text
    assert 'stepguard_invalid_requests_total{api="grpc",field="principal"}' in text
    revision = server.sidecar.holder.current().revision
    assert f'stepguard_policy_revision_info{{revision="{revision}"}} 1.0' in text


def test_audit_failure_denies(tmp_path: Path) -> None:
    from sidecar.audit.sink import MemorySink

    sink = MemorySink()
    with running_sidecar(tmp_path, sink=sink) as run, grpc.insecure_channel(run.tcp) as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        sink.fail_with = "disk full"
        resp = stub.Authorize(request_from_json(notify_request()), timeout=5)
        assert resp.decision == pb.DECISION_DENY
        assert "audit trail unavailable" in resp.errors[0].message
        sink.fail_with = None
        assert (
            stub.Authorize(request_from_json(notify_request()), timeout=5).decision
            == pb.DECISION_ALLOW
        )
    assert len(sink.events) == 1


def test_graceful_shutdown_drains_in_flight_calls(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as running:
        channel = grpc.insecure_channel(f"unix://{running.socket}")
        stub = pb_grpc.AuthorizerStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        results: list[int] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    results.append(
                        stub.Authorize(request_from_json(notify_request()), timeout=5).decision
                    )
                except grpc.RpcError as exc:
                    # After shutdown begins, new calls are refused, never allowed.
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                    return

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        while len(results) < 20:
            time.sleep(0.01)
        watcher = running.sidecar.health
        running.sidecar.stop(grace=2.0)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert all(r == pb.DECISION_ALLOW for r in results)
        # Health went NOT_SERVING before the port closed, and every answered call was audited.
        assert watcher is not None
        with pytest.raises(grpc.RpcError):
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        audited = {e["id"] for e in running.audit_events()}
        assert len(audited) >= len(results)
        channel.close()


def test_caller_cannot_extend_a_stored_entity(stub: pb_grpc.AuthorizerStub) -> None:
    """A read-only worker naming itself a provisioner is refused, not allowed."""
    req = grant_request()
    req["principal"] = {
        "type": "Workload",
        "id": "spiffe://example.org/ns/etl/sa/worker",
        "parents": [{"type": "WorkloadGroup", "id": "provisioning"}],
    }
    assert "principal.parents[0]" in _invalid(stub, request_from_json(req))
    req["principal"] = {
        "type": "Workload",
        "id": "spiffe://example.org/ns/etl/sa/worker",
        "parents": [{"type": "WorkloadGroup", "id": "step-runners"}],
        "attributes": {"shared": False},
    }
    # Restating what the store holds is fine; the worker is still not a provisioner.
    assert stub.Authorize(request_from_json(req), timeout=5).decision == pb.DECISION_DENY


def test_unix_socket_is_group_writable_only(server: Running) -> None:
    import stat

    mode = stat.S_IMODE(Path(server.socket).stat().st_mode)
    assert mode == 0o660
