"""A refusal names its field unambiguously, even when a record key is odd (found by
benchmarks/fuzz.py: a key holding CR LF was printed raw in the middle of the path)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.core.errors import InvalidRequest
from sidecar.core.outcomejson import outcome_from_json
from sidecar.core.planreq import plan_from_json
from sidecar.core.validate import member
from tests.helpers import NOTIFIER, running_sidecar


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.AuthorizerStub]:
    with (
        running_sidecar(tmp_path_factory.mktemp("paths")) as running,
        grpc.insecure_channel(running.tcp) as channel,
    ):
        yield pb_grpc.AuthorizerStub(channel)


def _refusal(stub: pb_grpc.AuthorizerStub, key: str) -> str:
    request = pb.AuthorizeRequest()
    request.principal.type, request.principal.id = NOTIFIER["type"], NOTIFIER["id"]
    request.action.type, request.action.id = "Action", "notify"
    request.resource.type, request.resource.id = "TargetSystem", "slack"
    outer = request.context.attributes["x"].record_value.fields
    outer[key].SetInParent()  # a value with no kind set: refused, naming its path
    with pytest.raises(grpc.RpcError) as caught:
        stub.Authorize(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(caught.value.details())


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("plain_name", "context.attributes['x'].plain_name"),
        ("\r\n", "context.attributes['x']['\\r\\n']"),
        ("a.b", "context.attributes['x']['a.b']"),
        ("\x1b[2J", "context.attributes['x']['\\x1b[2J']"),
        ("\u202e", "context.attributes['x']['\\u202e']"),
        ("", "context.attributes['x']['']"),
    ],
)
def test_a_nested_key_is_named_plainly_or_quoted(
    stub: pb_grpc.AuthorizerStub, key: str, path: str
) -> None:
    details = _refusal(stub, key)
    assert details == f"{path}: value has no kind set"
    assert details.isprintable()


def test_member_paths_read_back_to_one_key() -> None:
    for name in ("a", "_b1", "x y", "a.b", "'", "\n"):
        path = member("f", name)
        tail = path[len("f") :]
        assert tail == f".{name}" or tail == f"[{name!r}]"
        assert path.isprintable()


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("finshed_at", "finshed_at"),
        ("", "['']"),
        ("x: y", "['x: y']"),
        ("a\nb", "['a\\nb']"),
    ],
)
def test_an_unknown_key_of_the_json_forms_is_named_plainly_or_quoted(key: str, named: str) -> None:
    """The JSON forms that refuse unknown keys (an outcome over AuthZEN, a plan) name the
    key as a path names a record member: an empty key, or one holding `: ` or a
    newline, is quoted, so the refusal's path ends where `: ` says it does."""
    with pytest.raises(InvalidRequest) as outcome:
        outcome_from_json({"decision_id": "d", "status": "succeeded", key: 1})
    assert str(outcome.value).startswith(f"{named}: unknown field; known: ")
    with pytest.raises(InvalidRequest) as nested:
        outcome_from_json({"decision_id": "d", "status": "succeeded", "effect": {key: 1}})
    assert str(nested.value).startswith(f"effect.{named}: " if named == key else f"effect{named}: ")
    with pytest.raises(InvalidRequest) as plan:
        plan_from_json({"run_id": "r", "steps": [{"request": {}, key: 1}]})
    assert str(plan.value).startswith(
        f"steps[0].{named}: " if named == key else f"steps[0]{named}: "
    )
    for refusal in (outcome.value, nested.value, plan.value):
        assert str(refusal).isprintable()
