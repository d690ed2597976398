"""Obligations in the answer (issue 18): an ALLOW whose determining permit carries
`@revoke_within` says so on gRPC (`AuthorizeResponse.obligations.revoke_within`),
in the Python client (`StepDecision.revoke_within`) and on AuthZEN
(`context.obligations.revoke_within_s`), and a cached answer says exactly the same.

The real sidecar serves both APIs with the example bundle, whose
`grant-access-with-independent-approval` permit carries `@revoke_within("PT24H")`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.client import StepguardClient
from sidecar.client.decisions import to_proto
from tests.helpers import POLICIES, Running, grant_request, notify_request
from tests.serving.authzen.authzen_client import serving
from tests.serving.test_api_parity import to_authzen

DAY = timedelta(hours=24)


def _decision_events(run: Running, ids: list[str]) -> list[dict[str, Any]]:
    by_id = {e["id"]: e for e in run.audit_events() if e.get("kind") == "decision"}
    return [by_id[i] for i in ids]


def test_an_allow_with_revoke_within_says_so_on_every_api_cached_or_not(tmp_path: Path) -> None:
    with serving(tmp_path, POLICIES) as (run, pdp):
        with StepguardClient(run.tcp) as client:
            first, again = client.authorize(grant_request()), client.authorize(grant_request())
            batch = client.authorize_batch([grant_request(), notify_request()])
        stub = pb_grpc.AuthorizerStub(grpc.insecure_channel(run.tcp))
        raw = [stub.Authorize(to_proto(grant_request())) for _ in range(2)]
        body = to_authzen(grant_request())
        plain = [pdp.evaluation(body).json() for _ in range(2)]
        explained = pdp.evaluation({**body, "options": {"stepguard_explain": True}}).json()
        notify = pdp.evaluation(to_authzen(notify_request())).json()

    # gRPC and the client: the first answer (decided) and the cached ones alike.
    assert first.allowed and again.allowed
    assert [first.revoke_within, again.revoke_within, batch[0].revoke_within] == [DAY] * 3
    assert batch[1].allowed and batch[1].revoke_within is None  # notify carries none
    assert first.max_credential_ttl is None
    for resp in raw:
        assert resp.obligations.revoke_within.ToTimedelta() == DAY
        assert not resp.obligations.HasField("max_credential_ttl")
    # The cache never changes an answer: byte for byte, but for the decision id.
    assert len({_without_id(r) for r in raw}) == 1
    assert _without_id(raw[0]) == _without_id(first.response)
    events = _decision_events(run, [first.decision_id, again.decision_id, raw[1].decision_id])
    assert [e["cached"] for e in events] == [False, True, True]
    assert all(e["obligations"] == {"revoke_within_s": 86400.0} for e in events)

    # AuthZEN: the duty is in the decision's context, asked for or not.
    assert (
        plain == [{"decision": True, "context": {"obligations": {"revoke_within_s": 86400.0}}}] * 2
    )
    assert explained["context"]["obligations"] == {"revoke_within_s": 86400.0}
    assert notify == {"decision": True}  # nothing to say: the spec's minimal answer


def _without_id(resp: pb.AuthorizeResponse | None) -> bytes:
    assert resp is not None
    copy = pb.AuthorizeResponse()
    copy.CopyFrom(resp)
    copy.decision_id = ""
    return copy.SerializeToString(deterministic=True)
