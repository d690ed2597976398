"""AuthorizePlan on a real sidecar (sync and asyncio servers), through the real client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import jsonschema
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.client import DecisionKind, StepguardClient
from sidecar.client.aio import AsyncStepguardClient
from tests.helpers import joiner_plan, leaver_plan, running_sidecar

SCHEMA = Path(__file__).resolve().parents[2] / "sidecar" / "audit" / "event.schema.json"


@pytest.mark.parametrize("mode", ["sync", "asyncio"])
def test_a_plan_is_answered_per_step_and_recorded_in_the_trail(tmp_path: Path, mode: str) -> None:
    with running_sidecar(tmp_path, server_mode=mode) as sc:
        with StepguardClient(sc.tcp) as client:
            leaver = client.plan(leaver_plan("run-L"))
            joiner = client.plan(joiner_plan("run-J"))
            weekend = client.plan(joiner_plan("run-W", target="okta"))
            # The plan never replaces the decision: the step is decided when it runs.
            first = leaver_plan("run-L")["steps"][0]
            decision = client.authorize(
                {k: first[k] for k in ("principal", "action", "resource", "context")}
            )
        events = sc.audit_events()
    assert leaver.made and joiner.made and weekend.made
    assert [s.verdict for s in leaver.steps] == ["ALLOW", "DENY", "ALLOW"]
    (denied,) = leaver.denied_steps
    assert denied.step_id == "revoke-okta"
    assert "no policy permits" in denied.reason
    assert [s.verdict for s in joiner.steps] == ["ALLOW", "ALLOW"]
    assert [s.verdict for s in weekend.steps] == ["DEPENDS", "DEPENDS"]
    assert "before 18:00 UTC" in weekend.steps[0].reason
    (residual,) = weekend.steps[0].residuals
    assert residual.id == "sensitive-target-after-hours-requires-break-glass"
    assert 'unknown("now")' in residual.cedar
    assert decision.allowed
    plans = [e for e in events if e["kind"] == "plan"]
    assert [p["run_id"] for p in plans] == ["run-L", "run-J", "run-W"]
    assert plans[0]["id"] == leaver.plan_id
    assert plans[0]["verdicts"] == {"ALLOW": 2, "DENY": 1, "DEPENDS": 0}
    assert plans[0]["steps"][1]["verdict"] == "DENY"
    # Chained like the decisions around it: one sequence, one hash chain.
    seqs = [e["seq"] for e in events if "seq" in e]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    decided = [e for e in events if e["kind"] == "decision"]
    assert decided[-1]["run_id"] == "run-L"  # linked to the plan by run id


def test_the_trail_with_plans_verifies_and_queries_by_run(tmp_path: Path) -> None:
    with running_sidecar(tmp_path) as sc, StepguardClient(sc.tcp) as client:
        plan = leaver_plan("run-Q")
        assert client.plan(plan).made
        step = {k: plan["steps"][0][k] for k in ("principal", "action", "resource", "context")}
        assert client.authorize(step).allowed
        events = sc.audit_events()
    cli = [sys.executable, "-m", "sidecar.cli", "audit"]
    verify = subprocess.run(
        [*cli, "verify", str(tmp_path / "audit.jsonl")], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    query = subprocess.run(
        [
            *cli,
            "query",
            str(tmp_path / "audit.jsonl"),
            "--type",
            "plan",
            "--type",
            "decision",
            "--run",
            "run-Q",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert query.returncode == 0, query.stderr
    kinds = [json.loads(line)["kind"] for line in query.stdout.splitlines() if line.strip()]
    assert kinds == ["plan", "decision"]
    (plan_event,) = [e for e in events if e["kind"] == "plan"]
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(plan_event)


def test_a_bad_unknown_field_is_invalid_argument_and_the_server_goes_on(tmp_path: Path) -> None:
    bad = leaver_plan()
    bad["steps"][2]["unknown"] = ["approvl"]
    with running_sidecar(tmp_path) as sc, StepguardClient(sc.tcp) as client:
        report = client.plan(bad)
        assert not report.made
        assert report.kind is DecisionKind.INVALID_REQUEST
        assert "steps[2].unknown[0]" in report.reason
        assert "not declared by the schema" in report.reason
        with grpc.insecure_channel(sc.tcp) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.AuthorizePlan(pb.AuthorizePlanRequest(run_id="r"), timeout=5)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "steps" in (err.value.details() or "")
            raw = channel.unary_unary(
                "/stepguard.v1.Authorizer/AuthorizePlan",
                request_serializer=lambda b: b,
                response_deserializer=pb.AuthorizePlanResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\xff\xff\xff", timeout=5)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert client.plan(leaver_plan()).made  # still serving


def test_the_asyncio_client_plans_too(tmp_path: Path) -> None:
    import asyncio

    async def go(target: str) -> list[str]:
        async with AsyncStepguardClient(target) as client:
            report = await client.plan(leaver_plan())
            return [s.verdict for s in report.steps]

    with running_sidecar(tmp_path) as sc:
        assert asyncio.run(go(sc.tcp)) == ["ALLOW", "DENY", "ALLOW"]


def test_an_unreachable_sidecar_gives_no_plan_never_raises() -> None:
    with StepguardClient("127.0.0.1:1", timeout=1) as client:
        report = client.plan(leaver_plan())
    assert not report.made
    assert report.steps == () and report.denied_steps == ()
    assert report.kind is not None and report.kind.retryable
