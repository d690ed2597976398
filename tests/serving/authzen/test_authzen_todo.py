"""The AuthZEN interop "todo" scenario over HTTP, against the real sidecar.

The decision file (40 single evaluations, 3 batch cases) comes from
../shared/conformance/authzen; the policies and entity data that implement the
todo application are tests/serving/authzen/authzen_todo. Batch answers are compared as exact
JSON, as the interop runner does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.client import StepguardClient
from tests.conftest import shared_dir
from tests.helpers import Running
from tests.serving.authzen.authzen_client import TODO, Pdp, decisions, serving

RICK = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
MORTY = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
BETH = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
TODOS = [f"7240d0db-8ff0-41ec-98b2-34a096273b9{i}" for i in range(1, 6)]
# Fields of an audit event that differ between two calls deciding the same request.
VOLATILE = {"id", "time", "latency_us", "caller", "cached", "seq", "prev", "hash"}


@pytest.fixture(scope="module")
def interop() -> dict[str, Any]:
    path = shared_dir("conformance", "authzen", "todo") / "decisions-authorization-api-1_0-02.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="module")
def todo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Pdp]]:
    with serving(tmp_path_factory.mktemp("authzen-todo"), TODO) as served:
        yield served


def test_the_interop_file_is_the_one_described(interop: dict[str, Any]) -> None:
    single = [c["expected"] for c in interop["evaluation"]]
    assert (len(single), single.count(True), single.count(False)) == (40, 26, 14)
    assert len(interop["evaluations"]) == 3


def test_every_single_evaluation_decides_as_expected(
    todo: tuple[Running, Pdp], interop: dict[str, Any]
) -> None:
    _, pdp = todo
    wrong = []
    for i, case in enumerate(interop["evaluation"]):
        reply = pdp.evaluation(case["request"])
        assert reply.status == 200, (i, reply.text)
        # Only what the spec asks for: a deny is `"decision": false`, not an error.
        if reply.json() != {"decision": case["expected"]}:
            wrong.append((i, case["request"], reply.json()))
    assert not wrong


def test_every_batch_answer_is_the_exact_expected_json(
    todo: tuple[Running, Pdp], interop: dict[str, Any]
) -> None:
    _, pdp = todo
    for case in interop["evaluations"]:
        reply = pdp.evaluations(case["request"])
        assert reply.status == 200, reply.text
        assert reply.json() == {"evaluations": case["expected"]}


def test_every_decision_has_its_audit_event(
    todo: tuple[Running, Pdp], interop: dict[str, Any]
) -> None:
    run, pdp = todo
    before = len(decisions(run))
    answers = []
    for case in interop["evaluation"]:
        body = {**case["request"], "options": {"stepguard_explain": True}}
        answers.append((case["request"], pdp.evaluation(body).json()))
    batch = interop["evaluations"][1]["request"]
    batch_answers = pdp.evaluations(batch).json()["evaluations"]
    events = decisions(run)[before:]
    assert len(events) == len(answers) + len(batch_answers)
    by_id = {e["id"]: e for e in events}
    for request, answer in answers:
        event = by_id[answer["context"]["decision_id"]]
        assert event["principal"] == request["subject"]
        assert event["resource"] == {
            "type": request["resource"]["type"],
            "id": request["resource"]["id"],
        }
        assert event["action"] == {"type": "Action", "id": request["action"]["name"]}
        assert event["decision"] == ("ALLOW" if answer["decision"] else "DENY")
        assert event["policy_revision"] == answer["context"]["policy_revision"]
        assert event["entities"] == []  # the todos are in the store, which wins
    batch_events = events[len(answers) :]
    assert [e["decision"] == "ALLOW" for e in batch_events] == [
        a["decision"] for a in batch_answers
    ]


def test_an_authzen_event_is_a_grpc_event_for_the_same_request(
    todo: tuple[Running, Pdp],
) -> None:
    """Both APIs decide one Cedar request the same way and record it the same way."""
    run, pdp = todo
    todo_id, owner = TODOS[0], "morty@the-citadel.com"
    authzen = pdp.evaluation(
        {
            "subject": {"type": "user", "id": MORTY},
            "action": {"name": "can_update_todo"},
            "resource": {"type": "todo", "id": todo_id, "properties": {"ownerID": owner}},
        }
    )
    with StepguardClient(run.tcp) as client:
        grpc = client.authorize(
            {
                "principal": {"type": "user", "id": MORTY},
                "action": {"type": "Action", "id": "can_update_todo"},
                "resource": {"type": "todo", "id": todo_id, "attributes": {"ownerID": owner}},
            }
        )
    assert authzen.json() == {"decision": True} and grpc.allowed
    a_event, g_event = decisions(run)[-2:]
    assert g_event["id"] == grpc.decision_id
    assert a_event.keys() == g_event.keys()
    assert {k: v for k, v in a_event.items() if k not in VOLATILE} == {
        k: v for k, v in g_event.items() if k not in VOLATILE
    }


def test_request_data_for_an_entity_the_store_lacks_is_decided_on_and_audited(
    todo: tuple[Running, Pdp],
) -> None:
    run, pdp = todo
    fresh = {"type": "todo", "id": "not-in-the-store", "properties": {"ownerID": "x@example.org"}}

    def update(pid: str, owner: str) -> Any:
        resource = {**fresh, "properties": {"ownerID": owner}}
        body = {"subject": {"type": "user", "id": pid}, "action": {"name": "can_update_todo"}}
        return pdp.evaluation({**body, "resource": resource}).json()

    assert update(MORTY, "morty@the-citadel.com") == {"decision": True}
    event = decisions(run)[-1]
    uid = {"type": "todo", "id": "not-in-the-store"}
    assert event["entities"] == [
        {"uid": uid, "attrs": {"ownerID": "morty@the-citadel.com"}, "parents": []}
    ]
    assert update(MORTY, "rick@the-citadel.com") == {"decision": False}


def test_decisions_are_counted_in_the_shared_metrics(todo: tuple[Running, Pdp]) -> None:
    run, pdp = todo

    def total() -> float:
        registry = run.sidecar.metrics.registry
        return sum(
            s.value
            for metric in registry.collect()
            if metric.name == "stepguard_decisions"
            for s in metric.samples
            if s.name == "stepguard_decisions_total"
        )

    before = total()
    body = {
        "subject": {"type": "user", "id": BETH},
        "action": {"name": "can_create_todo"},
        "evaluations": [{"resource": {"type": "todo", "id": t}} for t in TODOS[:3]],
    }
    assert pdp.evaluations(body).json() == {"evaluations": [{"decision": False}] * 3}
    assert total() == before + 3


def test_resource_search_lists_the_todos_a_user_may_update(todo: tuple[Running, Pdp]) -> None:
    _, pdp = todo

    def updatable(pid: str) -> list[str]:
        body = {
            "subject": {"type": "user", "id": pid},
            "action": {"name": "can_update_todo"},
            "resource": {"type": "todo"},
        }
        reply = pdp.search("resource", body)
        assert reply.status == 200, reply.text
        results = reply.json()["results"]
        assert all(r["type"] == "todo" for r in results)
        return [r["id"] for r in results]

    assert updatable(RICK) == TODOS  # evil genius
    assert updatable(MORTY) == [TODOS[0]]  # his own
    assert updatable(BETH) == []  # viewer


def test_subject_search_lists_who_may_delete_a_todo(todo: tuple[Running, Pdp]) -> None:
    _, pdp = todo
    body = {
        "subject": {"type": "user"},
        "action": {"name": "can_delete_todo"},
        "resource": {"type": "todo", "id": TODOS[0]},
    }
    reply = pdp.search("subject", body)
    assert reply.json() == {
        "results": [{"type": "user", "id": RICK}, {"type": "user", "id": MORTY}]
    }


def test_action_search_lists_what_a_user_may_do_to_a_todo(todo: tuple[Running, Pdp]) -> None:
    _, pdp = todo
    mine = {
        "subject": {"type": "user", "id": MORTY},
        "resource": {"type": "todo", "id": TODOS[0]},
    }
    names = ["can_create_todo", "can_delete_todo", "can_read_todos", "can_update_todo"]
    assert pdp.search("action", mine).json() == {"results": [{"name": n} for n in names]}
    ricks = {**mine, "resource": {"type": "todo", "id": TODOS[1]}}
    names = ["can_create_todo", "can_read_todos"]
    assert pdp.search("action", ricks).json() == {"results": [{"name": n} for n in names]}


def test_paging_walks_the_whole_result_set(todo: tuple[Running, Pdp]) -> None:
    _, pdp = todo
    body: dict[str, Any] = {
        "subject": {"type": "user", "id": RICK},
        "action": {"name": "can_delete_todo"},
        "resource": {"type": "todo"},
        "page": {"limit": 2},
    }
    seen: list[str] = []
    pages = 0
    while True:
        reply = pdp.search("resource", body)
        assert reply.status == 200, reply.text
        page = reply.json()["page"]
        results = reply.json()["results"]
        assert page["count"] == len(results) <= 2
        seen += [r["id"] for r in results]
        pages += 1
        if not page["next_token"]:
            break
        body["page"] = {"limit": 2, "token": page["next_token"]}
    assert seen == TODOS and pages == 3
