"""What a request may say about entities, against the real server (issue 16: 2, 3, 6, 10).

A request names its principal and resource; the entity store says who they
are. A request may describe an entity the store lacks only as far as the
bundle's `request-entities.yaml` allows, per entity type and attribute, so a
workload cannot grant itself a group or a target call itself harmless. Free-form
attribute values are data: Cedar's JSON escapes (`__entity`, `__extn`,
`__expr`) inside them are refused, so typed values arrive only through the
typed fields. Every refusal names its field path, even for nesting too deep for
protobuf's own decoder.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.jsonreq import request_from_json
from tests.helpers import POLICIES, PROVISIONER, Running, grant_request, running_sidecar

# Sunday 2026-11-29, 03:00 UTC: out of hours in the example calendar.
SUNDAY_NIGHT = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
ONBOARDING_WORKLOAD = "spiffe://example.org/ns/hr/sa/onboarding"
DEPROVISIONER = {"type": "Workload", "id": "spiffe://example.org/ns/identity/sa/deprovisioner"}


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.AuthorizerStub]:
    """The example bundle, its clock at Sunday 03:00, default limits."""
    with (
        running_sidecar(tmp_path_factory.mktemp("night"), clock=lambda: SUNDAY_NIGHT) as running,
        grpc.insecure_channel(running.tcp) as channel,
    ):
        yield pb_grpc.AuthorizerStub(channel)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The example bundle in business hours, default limits."""
    with running_sidecar(tmp_path_factory.mktemp("day")) as running:
        yield running


@pytest.fixture()
def stub(day: Running) -> Iterator[pb_grpc.AuthorizerStub]:
    with grpc.insecure_channel(day.tcp) as channel:
        yield pb_grpc.AuthorizerStub(channel)


def _refused(stub: pb_grpc.AuthorizerStub, msg: pb.AuthorizeRequest) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.Authorize(msg, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


# -- point 2: a request cannot grant itself rights ------------------------------------------


def test_unknown_workload_cannot_declare_its_group_and_unshared_flag(
    night: pb_grpc.AuthorizerStub,
) -> None:
    """Measured: this was ALLOWed grant_access (issue 16, point 2)."""
    req = grant_request()
    req["principal"] = {
        "type": "Workload",
        "id": ONBOARDING_WORKLOAD,
        "attributes": {"shared": False},
        "parents": [{"type": "WorkloadGroup", "id": "provisioning"}],
    }
    req["resource"] = {"type": "TargetSystem", "id": "slack"}  # low: no break-glass needed
    details = _refused(night, request_from_json(req))
    assert details.startswith("principal.parents[0]: "), details
    assert "request-entities.yaml" in details
    # Without the parent, the attribute is refused on its own.
    del req["principal"]["parents"]
    details = _refused(night, request_from_json(req))
    assert details.startswith("principal.attributes['shared']: "), details


def test_unknown_target_cannot_declare_itself_low(night: pb_grpc.AuthorizerStub) -> None:
    """Measured: this was ALLOWed at Sunday 03:00 with no break-glass approval."""
    req = grant_request()
    req["resource"] = {
        "type": "TargetSystem",
        "id": "payroll-new",
        "attributes": {"sensitivity": "low"},
    }
    details = _refused(night, request_from_json(req))
    assert details.startswith("resource.attributes['sensitivity']: "), details
    assert "payroll-new" in details


def test_stored_entities_still_may_restate_what_the_store_holds(
    stub: pb_grpc.AuthorizerStub,
) -> None:
    req = grant_request()
    req["principal"] = {**PROVISIONER, "attributes": {"shared": False}}
    assert stub.Authorize(request_from_json(req), timeout=10).decision == pb.DECISION_ALLOW


def test_unknown_resource_is_a_deny_that_says_it_is_unknown(
    stub: pb_grpc.AuthorizerStub, day: Running
) -> None:
    req = grant_request()
    req["resource"] = {"type": "TargetSystem", "id": "payroll-new"}
    resp = stub.Authorize(request_from_json(req), timeout=10)
    assert resp.decision == pb.DECISION_DENY
    assert not resp.determining_policies  # no misleading policy name
    assert 'TargetSystem::"payroll-new" is not in the entity store' in resp.reason
    assert [e.message for e in resp.errors] == [resp.reason.removeprefix("denied: ")]
    event = day.audit_events()[-1]
    assert event["id"] == resp.decision_id and event["decision"] == "DENY"
    assert "not in the entity store" in json.dumps(event)


def test_an_unknown_resource_is_explained_as_evaluating_no_policy(
    stub: pb_grpc.AuthorizerStub,
) -> None:
    """No policy ran, so none is shown satisfied or overridden in the explanation."""
    req = request_from_json(grant_request())
    req.resource.id = "payroll-new"
    req.explain = True
    resp = stub.Authorize(req, timeout=10)
    assert resp.decision == pb.DECISION_DENY
    outcomes = {p.outcome for p in resp.explanation.policies}
    assert outcomes == {pb.POLICY_OUTCOME_NOT_EVALUATED}
    assert "not in the entity store" in resp.explanation.request_errors[0]


def test_unknown_workload_is_denied_by_a_policy_that_says_so(
    stub: pb_grpc.AuthorizerStub,
) -> None:
    """The example bundle admits workloads the store lacks (bare: no attributes, no parents)
    so that an unregistered workload gets a DENY that says why."""
    req = grant_request()
    req["principal"] = {"type": "Workload", "id": ONBOARDING_WORKLOAD}
    resp = stub.Authorize(request_from_json(req), timeout=10)
    assert resp.decision == pb.DECISION_DENY
    ids = [p.id for p in resp.determining_policies]
    assert "unregistered-workloads-never-act" in ids
    assert "shared-accounts-never-act" not in ids


def test_unknown_principal_of_an_undeclared_type_is_refused(
    stub: pb_grpc.AuthorizerStub,
) -> None:
    req = grant_request()
    req["principal"] = {"type": "ServiceAccount", "id": "svc-not-in-store"}
    details = _refused(stub, request_from_json(req))
    assert details.startswith("principal: "), details
    assert 'ServiceAccount::"svc-not-in-store" is not in the entity store' in details


def _bundle_copy(tmp: Path, declaration: dict[str, Any] | None) -> Path:
    target = tmp / "policies"
    shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns("tests"))
    path = target / "request-entities.yaml"
    if declaration is None:
        path.unlink()
    else:
        path.write_text(yaml.safe_dump(declaration))
    return target


def test_without_a_declaration_every_principal_must_be_stored(tmp_path: Path) -> None:
    with (
        running_sidecar(tmp_path, policies=_bundle_copy(tmp_path, None)) as running,
        grpc.insecure_channel(running.tcp) as channel,
    ):
        stub = pb_grpc.AuthorizerStub(channel)
        req = grant_request()
        req["principal"] = {"type": "Workload", "id": ONBOARDING_WORKLOAD}
        details = _refused(stub, request_from_json(req))
        assert details.startswith("principal: "), details
        assert stub.Authorize(request_from_json(grant_request()), timeout=10).decision == (
            pb.DECISION_ALLOW
        )


def test_a_declaration_admits_exactly_what_it_names(tmp_path: Path) -> None:
    declaration = {"entity_types": {"TargetSystem": {"attributes": ["sensitivity"]}}}
    with (
        running_sidecar(
            tmp_path, policies=_bundle_copy(tmp_path, declaration), clock=lambda: SUNDAY_NIGHT
        ) as running,
        grpc.insecure_channel(running.tcp) as channel,
    ):
        stub = pb_grpc.AuthorizerStub(channel)
        req = grant_request()
        req["resource"] = {
            "type": "TargetSystem",
            "id": "new-wiki",
            "attributes": {"sensitivity": "low"},
        }
        resp = stub.Authorize(request_from_json(req), timeout=10)
        assert resp.decision == pb.DECISION_ALLOW, resp.reason
        # What the request said lasts that call: bare, the target counts as high again.
        bare = {**req, "resource": {"type": "TargetSystem", "id": "new-wiki"}}
        resp = stub.Authorize(request_from_json(bare), timeout=10)
        assert resp.decision == pb.DECISION_DENY
        assert [p.id for p in resp.determining_policies] == [
            "sensitive-target-after-hours-requires-break-glass"
        ]
        req["resource"]["parents"] = [{"type": "WorkloadGroup", "id": "provisioning"}]
        assert _refused(stub, request_from_json(req)).startswith("resource.parents[0]: ")


# -- point 3: empty ids ----------------------------------------------------------------------


@pytest.mark.parametrize("part", ["principal", "action", "resource"])
def test_empty_ids_are_refused(stub: pb_grpc.AuthorizerStub, part: str) -> None:
    msg = request_from_json(grant_request())
    getattr(msg, part).id = ""
    assert _refused(stub, msg).startswith(f"{part}.id: "), part


# -- point 6: nesting too deep for protobuf's decoder ----------------------------------------


def _nested(levels: int) -> pb.Value:
    value = pb.Value(string_value="bottom")
    for _ in range(levels - 1):
        outer = pb.Value()
        outer.record_value.fields["a"].CopyFrom(value)
        value = outer
    return value


def test_nesting_beyond_protobufs_limit_names_the_field(day: Running) -> None:
    msg = request_from_json(grant_request())
    msg.context.attributes["deep"].CopyFrom(_nested(60))
    raw = msg.SerializeToString()
    with pytest.raises(Exception, match=r"MaxDepth|recursion|depth"):
        pb.AuthorizeRequest.FromString(raw)  # the decoder itself refuses it
    with grpc.insecure_channel(day.tcp) as channel:
        call = channel.unary_unary(
            "/stepguard.v1.Authorizer/Authorize",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(raw, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    path = "context.attributes['deep']" + ".a" * 12
    assert info.value.details() == f"{path}: nests deeper than the attribute depth limit (12)"


def test_nesting_beyond_protobufs_limit_in_a_batch_and_a_stream(day: Running) -> None:
    msg = request_from_json(grant_request())
    msg.principal.attributes["deep"].CopyFrom(_nested(60))
    # upb will not even copy such a message into another: the wire form is written by hand.
    items = [request_from_json(grant_request()).SerializeToString(), msg.SerializeToString()]
    batch = b"".join(_field(1, item) for item in items)
    path = "principal.attributes['deep']" + ".a" * 12
    with grpc.insecure_channel(day.tcp) as channel:
        call = channel.unary_unary(
            "/stepguard.v1.Authorizer/AuthorizeBatch",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(batch, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(info.value.details()).startswith(f"items[1].{path}: nests deeper")
        stream = channel.stream_stream(
            "/stepguard.v1.Authorizer/AuthorizeStream",
            request_serializer=None,
            response_deserializer=pb.AuthorizeStreamResponse.FromString,
        )
        item = pb.AuthorizeStreamRequest(id=7).SerializeToString() + _field(
            2, msg.SerializeToString()
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([item]), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(info.value.details()).startswith(f"request.{path}: nests deeper")


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited field in protobuf's wire format."""
    size, prefix = len(body), bytearray([number << 3 | 2])
    while True:
        prefix.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            return bytes(prefix) + body


# -- point 10: smuggled entity markers -------------------------------------------------------


def _record(**fields: pb.Value) -> pb.Value:
    value = pb.Value()
    value.record_value.SetInParent()
    for name, item in fields.items():
        value.record_value.fields[name].CopyFrom(item)
    return value


def _text(s: str) -> pb.Value:
    return pb.Value(string_value=s)


def _leaver_step() -> pb.AuthorizeRequest:
    return request_from_json(
        {
            "principal": DEPROVISIONER,
            "action": {"type": "Action", "id": "delete_account"},
            "resource": {"type": "TargetSystem", "id": "aws-prod"},
            "context": {"requester": {"type": "User", "id": "maria"}, "workflow_id": "leaver"},
        }
    )


def test_a_record_smuggling_an_entity_reference_is_refused(
    night: pb_grpc.AuthorizerStub,
) -> None:
    """Measured: the leaver exemption written as an `__entity` record ALLOWed delete_account
    on aws-prod at night."""
    msg = _leaver_step()
    assert night.Authorize(msg, timeout=10).decision == pb.DECISION_DENY  # no exemption
    smuggled = _record(__entity=_record(type=_text("Workflow"), id=_text("leaver")))
    msg.context.attributes["workflow"].CopyFrom(smuggled)
    details = _refused(night, msg)
    assert details.startswith("context.attributes['workflow'].__entity: "), details
    assert "entity_value" in details
    # The typed field carries the same reference, and the trail can tell it is one.
    msg.context.attributes["workflow"].entity_value.type = "Workflow"
    msg.context.attributes["workflow"].entity_value.id = "leaver"
    assert night.Authorize(msg, timeout=10).decision == pb.DECISION_ALLOW


@pytest.mark.parametrize("marker", ["__entity", "__extn", "__expr"])
def test_reserved_keys_are_refused_wherever_they_hide(
    stub: pb_grpc.AuthorizerStub, marker: str
) -> None:
    inner = _record(fn=_text("ip"), arg=_text("10.0.0.1"), type=_text("User"), id=_text("x"))
    deep = pb.Value()
    deep.set_value.values.append(_record(**{marker: inner}))
    cases: list[tuple[str, str, pb.Value]] = [
        ("context", "extra", deep),
        ("principal", "note", deep),
        ("context", marker, _text("x")),
    ]
    for where, name, value in cases:
        msg = request_from_json(grant_request())
        getattr(msg, where).attributes[name].CopyFrom(value)
        rest = f"[{name!r}][0]" if value is deep else ""
        details = _refused(stub, msg)
        expected = f"{where}.attributes{rest}.{marker}: " if rest else f"{where}.attributes["
        assert details.startswith(expected), details
        assert marker in details


# -- the declaration file --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("entity_types: {Spaceship: {}}", "entity_types.Spaceship: not an entity type"),
        ("entity_types: {Workload: {attributes: [role]}}", "no attribute 'role'"),
        ("entity_types: {Workload: {parents: [Group]}}", "not let a Workload be in a Group"),
        ("entity_types: {Workload: {colour: [x]}}", "expected a mapping with attributes"),
        ("types: {}", "expected a mapping with one key, entity_types"),
        ("entity_types: [", "invalid YAML"),
    ],
)
def test_a_declaration_is_checked_against_the_schema(
    tmp_path: Path, text: str, message: str
) -> None:
    from sidecar.core.bundle import load_bundle
    from sidecar.core.errors import BundleError

    directory = _bundle_copy(tmp_path, {})
    (directory / "request-entities.yaml").write_text(text)
    with pytest.raises(BundleError, match=re.escape(message)) as info:
        load_bundle(directory)
    assert "request-entities.yaml" in str(info.value)


def test_the_declaration_is_part_of_the_revision(tmp_path: Path) -> None:
    from sidecar.core.bundle import load_bundle

    directory = _bundle_copy(tmp_path, {"entity_types": {"Workload": {}}})
    before = load_bundle(directory)
    (directory / "request-entities.yaml").write_text(
        yaml.safe_dump({"entity_types": {"Workload": {"attributes": ["shared"]}}})
    )
    after = load_bundle(directory)
    assert before.revision != after.revision
    assert "request-entities.yaml" in after.sources
    assert after.request_entities.admits("Workload") is not None
    assert after.request_entities.admits("TargetSystem") is None


def test_the_clients_entity_form_is_the_typed_field_not_a_record() -> None:
    """`{"__entity": {...}}` in the client's dicts (the README's form) is an entity_value;
    the same key beside others is a record, which the server refuses."""
    msg = request_from_json(grant_request())
    workflow = msg.context.attributes["workflow"]
    assert workflow.WhichOneof("kind") == "entity_value"
    assert (workflow.entity_value.type, workflow.entity_value.id) == ("Workflow", "onboarding")
    mixed = grant_request()
    mixed["context"]["attributes"]["workflow"] = {
        "__entity": {"type": "Workflow", "id": "onboarding"},
        "note": "x",
    }
    assert request_from_json(mixed).context.attributes["workflow"].WhichOneof("kind") == (
        "record_value"
    )


def test_check_refuses_the_same_requests_as_the_server() -> None:
    """The real CLI, on the JSON form: a mixed `__entity` record and a self-declared group."""
    import subprocess
    import sys

    def check(request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "sidecar.cli", "check", "--policies", str(POLICIES)),
                *("--now", "2026-11-29T03:00:00Z", "--request", "-"),
            ],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    mixed = grant_request()
    mixed["context"]["attributes"]["workflow"] = {
        "__entity": {"type": "Workflow", "id": "onboarding"},
        "kind": "leaver",
    }
    out = check(mixed)
    assert out.returncode == 1, out.stdout
    assert "context.attributes['workflow'].__entity: '__entity' is reserved" in out.stderr
    grouped = grant_request()
    grouped["principal"] = {
        "type": "Workload",
        "id": ONBOARDING_WORKLOAD,
        "parents": [{"type": "WorkloadGroup", "id": "provisioning"}],
    }
    out = check(grouped)
    assert out.returncode == 1 and "principal.parents[0]: " in out.stderr, out.stderr


def test_with_binding_the_callers_own_unregistered_workload_is_decided(tmp_path: Path) -> None:
    """--bind-workload-identity: the authenticated workload may be absent from the store (it is
    then decided, and here denied as unregistered); another principal gets the binding's DENY
    even when the store lacks it."""
    from tests.helpers import tls_client
    from tests.pki import make_pki, tls_settings
    from tests.serving.test_tls import _ask

    pki = make_pki()
    policies = _bundle_copy(tmp_path, {"entity_types": {}})  # no Workload admitted
    with running_sidecar(
        tmp_path / "srv",
        policies=policies,
        bind_workload_identity=True,
        **tls_settings(tmp_path / "tls", pki),
    ) as running:
        me = pki.domain.issue(spiffe=ONBOARDING_WORKLOAD)
        request = grant_request()
        request["principal"] = {"type": "Workload", "id": ONBOARDING_WORKLOAD}
        decision = _ask(tls_client(tmp_path, running, pki.domain.pem, me), request)
        assert not decision.allowed
        assert decision.determining_policies == ("unregistered-workloads-never-act",)
        request["principal"] = {"type": "Workload", "id": ONBOARDING_WORKLOAD + "-other"}
        decision = _ask(tls_client(tmp_path, running, pki.domain.pem, me), request)
        assert not decision.allowed and "workload identity binding" in decision.reason
        # Binding does not let the caller describe itself either.
        request["principal"] = {
            "type": "Workload",
            "id": ONBOARDING_WORKLOAD,
            "parents": [{"type": "WorkloadGroup", "id": "provisioning"}],
        }
        decision = _ask(tls_client(tmp_path, running, pki.domain.pem, me), request)
        assert not decision.allowed and "principal.parents[0]" in decision.reason


def test_authzen_json_too_deep_for_the_parser_names_the_field(tmp_path: Path) -> None:
    """AuthZEN: Python's JSON parser gives up on deep nesting (RecursionError, no field);
    the 400 names the path where the body nests too deep."""
    from tests.serving.authzen.authzen_client import CERT, serving

    deep = "[" * 5000 + "]" * 5000
    body = '{"subject": {"type": "user", "id": "alice", "properties": {"role": ' + deep + "}}}"
    with serving(tmp_path, CERT) as (_, pdp):
        reply = pdp.post("/access/v1/evaluation", raw=body.encode())
        pdp.close()
    assert reply.status == 400, reply.text
    text = reply.text
    assert "subject.properties.role[0][0]" in text, text
    assert "nests more than 256 levels deep" in text


# -- the byte walker names the same field as validation ----------------------------------------

_KEYS = st.sampled_from(["a", "b", "c", "zz"])


def _values() -> st.SearchStrategy[pb.Value]:
    leaf = st.builds(lambda s: pb.Value(string_value=s), st.sampled_from(["x", "y"]))

    def record(fields: dict[str, pb.Value]) -> pb.Value:
        value = pb.Value()
        value.record_value.SetInParent()
        for name, item in fields.items():
            value.record_value.fields[name].CopyFrom(item)
        return value

    def values(items: list[pb.Value]) -> pb.Value:
        value = pb.Value()
        value.set_value.SetInParent()
        value.set_value.values.extend(items)
        return value

    def extension(items: list[pb.Value]) -> pb.Value:
        value = pb.Value()
        value.extension_value.function = "decimal"
        value.extension_value.arguments.extend(items)
        return value

    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(record, st.dictionaries(_KEYS, inner, min_size=1, max_size=2)),
            st.builds(values, st.lists(inner, min_size=1, max_size=2)),
            st.builds(extension, st.lists(inner, min_size=1, max_size=2)),
        ),
        max_leaves=12,
    )


@settings(max_examples=150, deadline=None)
@given(attributes=st.dictionaries(_KEYS, _values(), min_size=1, max_size=2))
def test_the_byte_walker_names_the_field_validation_names(attributes: dict[str, pb.Value]) -> None:
    """Property: for any nesting, `decode_refusal` on the request's bytes refuses the same
    field, with the same message, as validation's depth check on the parsed message."""
    from sidecar.core.decoderefusal import decode_refusal
    from sidecar.core.errors import InvalidRequest
    from sidecar.core.validate import Limits, request_from_proto

    bundle = _example_bundle()
    limits = Limits(max_attribute_depth=3)
    msg = request_from_json(grant_request())
    for name, value in attributes.items():
        msg.context.attributes[name].CopyFrom(value)
    try:
        request_from_proto(msg, bundle, limits, now=None)
        expected = None
    except InvalidRequest as exc:
        expected = str(exc) if "attribute depth limit" in exc.detail else None
    event("over the depth limit" if expected else "within the depth limit")
    raw = msg.SerializeToString(deterministic=True)
    got = decode_refusal(raw, pb.AuthorizeRequest.DESCRIPTOR, limits, ValueError("MaxDepth"))
    if expected is not None:
        assert got is not None and str(got) == expected
    else:
        assert got is None or "attribute depth limit" not in got.detail.split("(")[0]


_BUNDLE: list[Any] = []


def _example_bundle() -> Any:
    from sidecar.core.bundle import load_bundle

    if not _BUNDLE:
        _BUNDLE.append(load_bundle(POLICIES))
    return _BUNDLE[0]


# -- the same rules over AuthZEN ---------------------------------------------------------------


def _authzen_grant(resource: dict[str, Any], subject: str = PROVISIONER["id"]) -> dict[str, Any]:
    def user(name: str) -> dict[str, Any]:
        return {"__entity": {"type": "User", "id": name}}

    return {
        "subject": {"type": "Workload", "id": subject},
        "action": {"name": "grant_access"},
        "resource": resource,
        "context": {
            "requester": user("maria"),
            "approval": {
                "approver": user("ines"),
                "approved_at": {"__extn": {"fn": "datetime", "arg": "2026-11-28T09:00:00Z"}},
                "ticket": "CHG-1",
            },
            "workflow": {"__entity": {"type": "Workflow", "id": "onboarding"}},
        },
        "options": {"stepguard_explain": True},
    }


def test_authzen_cannot_describe_an_unknown_target_as_low(tmp_path: Path) -> None:
    """Measured case 2 over AuthZEN: the properties of an entity the store lacks count only
    as far as request-entities.yaml admits them; an unknown target is a DENY saying so."""
    from tests.serving.authzen.authzen_client import serving

    with serving(tmp_path, POLICIES, clock=lambda: SUNDAY_NIGHT) as (_, pdp):
        known = pdp.evaluation(_authzen_grant({"type": "TargetSystem", "id": "jira"})).json()
        assert known["decision"] is True, known  # the request itself is one the policies allow
        unknown = {
            "type": "TargetSystem",
            "id": "payroll-new",
            "properties": {"sensitivity": "low"},
        }
        answer = pdp.evaluation(_authzen_grant(unknown)).json()
        assert answer["decision"] is False, answer
        assert 'TargetSystem::"payroll-new" is not in the entity store' in str(answer)
        # An unknown workload's `shared: false` is not admitted: it is denied as unregistered.
        stranger = _authzen_grant({"type": "TargetSystem", "id": "jira"}, ONBOARDING_WORKLOAD)
        stranger["subject"]["properties"] = {"shared": False}
        answer = pdp.evaluation(stranger).json()
        assert answer["decision"] is False
        assert "unregistered-workloads-never-act" in json.dumps(answer)


def test_authzen_refuses_smuggled_markers_and_keeps_the_exact_escapes(tmp_path: Path) -> None:
    """Point 10 over AuthZEN: an object with `__entity` beside other keys (or `__expr`) is a
    400 naming the field; the exact `{"__entity": ...}` form is an entity reference."""
    from tests.serving.authzen.authzen_client import serving

    with serving(tmp_path, POLICIES) as (_, pdp):
        body = _authzen_grant({"type": "TargetSystem", "id": "jira"})
        assert pdp.evaluation(body).json()["decision"] is True
        body["context"]["workflow"] = {
            "__entity": {"type": "Workflow", "id": "onboarding"},
            "kind": "leaver",
        }
        reply = pdp.evaluation(body)
        assert reply.status == 400, reply.text
        assert "context.workflow.__entity" in reply.text and "reserved" in reply.text
        body["context"]["workflow"] = {"__expr": 'Workflow::"onboarding"'}
        reply = pdp.evaluation(body)
        assert reply.status == 400 and "context.workflow.__expr" in reply.text, reply.text


def test_the_byte_walk_is_bounded_for_messages_of_many_tiny_fields() -> None:
    """A refused message built of very many tiny fields is not walked to the end: the
    refusal then names the whole request (still INVALID_ARGUMENT, still saying why)."""
    from sidecar.core.decoderefusal import decode_refusal
    from sidecar.core.validate import Limits

    msg = request_from_json(grant_request())
    crowd = msg.context.attributes["crowd"]
    crowd.set_value.SetInParent()
    for _ in range(210_000):
        crowd.set_value.values.add().bool_value = True
    crowd.set_value.values.add().CopyFrom(_nested(40))
    raw = msg.SerializeToString()
    got = decode_refusal(raw, pb.AuthorizeRequest.DESCRIPTOR, Limits(), ValueError("MaxDepth"))
    assert got is not None
    assert str(got).startswith("request: nests more than 30 levels deep")
    # A small crowd is walked through: the deep value is named.
    del crowd.set_value.values[1000:210_000]
    got = decode_refusal(
        msg.SerializeToString(), pb.AuthorizeRequest.DESCRIPTOR, Limits(), ValueError("MaxDepth")
    )
    assert str(got).startswith("context.attributes['crowd'][1000].a.a")
    # A refusal for another reason is not this walk's to explain.
    assert decode_refusal(raw, pb.AuthorizeRequest.DESCRIPTOR, Limits(), ValueError("bad")) is None
