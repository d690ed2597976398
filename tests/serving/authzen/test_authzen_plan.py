"""POST /stepguard/v1/plan: AuthorizePlan over the AuthZEN server, same answers as gRPC."""

from __future__ import annotations

from pathlib import Path

from sidecar.client import StepguardClient
from tests.helpers import POLICIES, joiner_plan, leaver_plan
from tests.serving.authzen.authzen_client import serving


def test_a_plan_over_http_answers_as_grpc_and_is_recorded(tmp_path: Path) -> None:
    with serving(tmp_path, POLICIES) as (run, pdp), StepguardClient(run.tcp) as client:
        reply = pdp.post("/stepguard/v1/plan", leaver_plan("run-H"))
        grpc_report = client.plan(leaver_plan("run-H"))
        weekend = pdp.post("/stepguard/v1/plan", joiner_plan("run-W", target="okta"))
        events = run.audit_events()
    assert reply.status == 200, reply.text
    answer = reply.json()
    assert answer["run_id"] == "run-H"
    assert [s["verdict"] for s in answer["steps"]] == [s.verdict for s in grpc_report.steps]
    assert [s["verdict"] for s in answer["steps"]] == ["ALLOW", "DENY", "ALLOW"]
    assert answer["steps"][1]["reason"] == grpc_report.steps[1].reason
    dep = weekend.json()["steps"][0]
    assert dep["verdict"] == "DEPENDS"
    assert "before 18:00 UTC" in dep["residuals"][0]["words"] + dep["reason"]
    plans = [e for e in events if e["kind"] == "plan"]
    assert [p["id"] for p in plans][:2] == [answer["plan_id"], grpc_report.plan_id]


def test_a_bad_plan_is_400_naming_the_field_as_grpc_does(tmp_path: Path) -> None:
    bad = leaver_plan()
    bad["steps"][0]["unknown"] = ["approvl"]
    with serving(tmp_path, POLICIES) as (run, pdp), StepguardClient(run.tcp) as client:
        reply = pdp.post("/stepguard/v1/plan", bad)
        report = client.plan(bad)
        not_a_plan = pdp.post("/stepguard/v1/plan", {"steps": "many"})
        get = pdp.get("/stepguard/v1/plan")
        again = pdp.post("/stepguard/v1/plan", leaver_plan())
    assert reply.status == 400
    assert reply.text.startswith("steps[0].unknown[0]: ")
    assert reply.text.strip() in report.reason  # exactly the INVALID_ARGUMENT message
    assert not_a_plan.status == 400 and not_a_plan.text.startswith("steps: ")
    assert get.status == 405
    assert again.status == 200  # the server goes on
