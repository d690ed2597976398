"""The AuthZEN 1.0 certification scenario (authorization-api-1_0-scenario) over HTTP.

The PDP under test is the real sidecar on tests/serving/authzen/authzen_cert, the scenario's
required fixture (C.1): alice, bob, record-1, record-2, read/write/delete.
Test ids in names and comments are the scenario's section numbers: every
fixture decision, every mandatory 400, the batch, search, pagination,
transport and discovery requirements.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import Running
from tests.serving.authzen.authzen_client import CERT, Pdp, decisions, serving

ALICE = {"type": "user", "id": "alice"}
BOB = {"type": "user", "id": "bob"}
BOB_ADMIN = {**BOB, "properties": {"role": "admin"}}
RECORD_1 = {"type": "record", "id": "record-1"}
RECORD_2 = {"type": "record", "id": "record-2"}
ARCHIVED_2 = {**RECORD_2, "properties": {"status": "archived"}}
READ, WRITE = {"name": "read"}, {"name": "write"}
CONTEXT = {"time": "2025-06-27T18:03-07:00", "ip": "192.168.1.1"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Pdp]]:
    with serving(tmp_path_factory.mktemp("authzen-cert"), CERT) as pair:
        yield pair


@pytest.fixture
def pdp(served: tuple[Running, Pdp]) -> Pdp:
    return served[1]


def _req(subject: Any, action: Any, resource: Any, **extra: Any) -> dict[str, Any]:
    return {"subject": subject, "action": action, "resource": resource, **extra}


# -- C.2 Basic: Access Evaluation ---------------------------------------------------------

FIXTURE_DECISIONS = {
    "2.2.1 rule 1 alice reads record-1": (_req(ALICE, READ, RECORD_1), True),
    "2.2.2 rule 4 bob may not write record-1": (_req(BOB, WRITE, RECORD_1), False),
    "1.4 rule 2 alice writes record-1": (_req(ALICE, WRITE, RECORD_1), True),
    "1.4 rule 3 bob reads record-1": (_req(BOB, READ, RECORD_1), True),
    "2.2.3 optional context": (_req(ALICE, READ, RECORD_1, context=CONTEXT), True),
    "2.2.4 rule 5 alice may not write archived": (_req(ALICE, WRITE, ARCHIVED_2), False),
    "2.2.5 rule 6 admin writes archived": (_req(BOB_ADMIN, WRITE, ARCHIVED_2), True),
    "2.2.6 rule 7 soft delete": (
        _req(ALICE, {"name": "delete", "properties": {"soft": True}}, RECORD_1),
        True,
    ),
    "2.2.7 rule 8 hard delete": (
        _req(ALICE, {"name": "delete", "properties": {"soft": False}}, RECORD_1),
        False,
    ),
    "2.2.8 additional properties": (
        _req(
            {**ALICE, "properties": {"department": "Sales", "role": "manager"}},
            {"name": "read", "properties": {"method": "GET"}},
            {**RECORD_1, "properties": {"status": "active", "owner": "bob"}},
        ),
        True,
    ),
    "2.2.9 unknown fields": (
        _req(ALICE, READ, RECORD_1, foo="bar", futureField={"nested": True}),
        True,
    ),
}


@pytest.mark.parametrize("case", FIXTURE_DECISIONS)
def test_fixture_decision(pdp: Pdp, case: str) -> None:
    request, expected = FIXTURE_DECISIONS[case]
    reply = pdp.evaluation(request)
    assert reply.status == 200, reply.text
    # 2.3: the decision is a boolean; nothing else unless asked; a deny is 200 too.
    assert reply.json() == {"decision": expected}


@pytest.mark.parametrize(
    "options",
    ["fast", {"evaluations_semantic": "any"}, {"stepguard_explain": "yes"}, None],
)
def test_options_are_unknown_fields_of_a_single_evaluation(pdp: Pdp, options: Any) -> None:
    reply = pdp.evaluation(_req(ALICE, READ, RECORD_1, options=options))
    assert reply.status == 200 and reply.json() == {"decision": True}


def test_2_3_2_the_decision_context_on_request(pdp: Pdp) -> None:
    reply = pdp.evaluation(_req(BOB, WRITE, RECORD_1, options={"stepguard_explain": True}))
    body = reply.json()
    assert body["decision"] is False and isinstance(body["context"], dict)
    assert body["context"]["reason"] == "denied: no policy permits this request"
    assert body["context"]["determining_policies"] == []


MANDATORY_400 = {
    "2.4.1 missing subject": ({"action": READ, "resource": RECORD_1}, "subject"),
    "2.4.1 missing action": ({"subject": ALICE, "resource": RECORD_1}, "action"),
    "2.4.1 missing resource": ({"subject": ALICE, "action": READ}, "resource"),
    "2.4.2 subject missing type": (_req({"id": "alice"}, READ, RECORD_1), "subject.type"),
    "2.4.2 subject missing id": (_req({"type": "user"}, READ, RECORD_1), "subject.id"),
    "2.4.2 action missing name": (_req(ALICE, {}, RECORD_1), "action.name"),
    "2.4.2 resource missing type": (_req(ALICE, READ, {"id": "record-1"}), "resource.type"),
    "2.4.2 resource missing id": (_req(ALICE, READ, {"type": "record"}), "resource.id"),
    "2.4.6 subject is a string": (_req("alice", READ, RECORD_1), "subject"),
    "2.4.6 action.name is a number": (_req(ALICE, {"name": 123}, RECORD_1), "action.name"),
}


@pytest.mark.parametrize("path", ["/access/v1/evaluation", "/access/v1/evaluations"])
@pytest.mark.parametrize("case", MANDATORY_400)
def test_2_4_bad_request(pdp: Pdp, case: str, path: str) -> None:
    """On /evaluations too: without `evaluations` it is a single evaluation (3.4.2)."""
    body, field = MANDATORY_400[case]
    reply = pdp.post(path, body)
    assert reply.status == 400
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text.startswith(f"{field}: "), reply.text


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "text/json"],
)
def test_2_4_3_a_content_type_other_than_json_is_400(pdp: Pdp, content_type: str | None) -> None:
    reply = pdp.evaluation(_req(ALICE, READ, RECORD_1), content_type=content_type)
    assert reply.status == 400 and "Content-Type must be application/json" in reply.text


def test_2_4_3_json_with_parameters_is_accepted(pdp: Pdp) -> None:
    reply = pdp.evaluation(
        _req(ALICE, READ, RECORD_1), content_type="Application/JSON; charset=UTF-8"
    )
    assert reply.json() == {"decision": True}
    other = pdp.evaluation(
        _req(ALICE, READ, RECORD_1), content_type="application/json; charset=latin-1"
    )
    assert other.status == 400 and "UTF-8" in other.text


@pytest.mark.parametrize(
    "raw",
    [b'{"subject": ', b"{'subject': 1}", b'{"a": NaN}', b'{"a": 1, "a": 2}', b"\xff\xfe{}"],
    ids=["truncated", "single-quotes", "nan", "duplicate-key", "not-utf8"],
)
def test_2_4_4_malformed_json_is_400(pdp: Pdp, raw: bytes) -> None:
    reply = pdp.post("/access/v1/evaluation", raw=raw)
    assert reply.status == 400 and reply.text.startswith("request: ")


@pytest.mark.parametrize("raw", [b"", b"  \n"], ids=["empty", "blank"])
def test_2_4_5_an_empty_body_is_400(pdp: Pdp, raw: bytes) -> None:
    reply = pdp.post("/access/v1/evaluation", raw=raw)
    assert reply.status == 400 and "empty" in reply.text


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_400(pdp: Pdp, raw: bytes) -> None:
    reply = pdp.post("/access/v1/evaluation", raw=raw)
    assert reply.status == 400 and "must be a JSON object" in reply.text


def test_2_5_x_request_id_is_echoed_on_every_answer(pdp: Pdp) -> None:
    ok = pdp.evaluation(_req(ALICE, READ, RECORD_1), headers={"X-Request-ID": "req-1"})
    bad = pdp.evaluation({"subject": ALICE}, headers={"X-Request-ID": "req-2"})
    search = pdp.search(
        "action", {"subject": ALICE, "resource": RECORD_1}, headers={"X-Request-ID": "r3"}
    )
    assert (ok.status, ok.headers["x-request-id"]) == (200, "req-1")
    assert (bad.status, bad.headers["x-request-id"]) == (400, "req-2")
    assert search.headers["x-request-id"] == "r3"
    plain = pdp.evaluation(_req(ALICE, READ, RECORD_1))
    assert plain.status == 200 and "x-request-id" not in plain.headers


def test_2_6_the_same_request_gets_the_same_decision(pdp: Pdp) -> None:
    answers = {pdp.evaluation(_req(BOB, WRITE, RECORD_1)).body for _ in range(5)}
    assert answers == {b'{"decision":false}'}


# -- C.3 Batch: Access Evaluations --------------------------------------------------------

BATCHES = {
    "3.2.2 fixture decisions in order": (
        {
            "subject": BOB,
            "resource": RECORD_1,
            "evaluations": [{"action": READ}, {"action": WRITE}],
        },
        [True, False],
    ),
    "3.2.3 resource properties per item": (
        {
            "subject": ALICE,
            "action": WRITE,
            "evaluations": [
                {"resource": {**RECORD_1, "properties": {"status": "active"}}},
                {"resource": ARCHIVED_2},
            ],
        },
        [True, False],
    ),
    "3.2.4 subject properties per item": (
        {
            "action": WRITE,
            "resource": ARCHIVED_2,
            "evaluations": [{"subject": ALICE}, {"subject": BOB_ADMIN}],
        },
        [False, True],
    ),
    "3.2.5 no defaults": (
        {
            "evaluations": [
                _req(ALICE, READ, RECORD_1),
                _req(BOB, WRITE, RECORD_1),
            ]
        },
        [True, False],
    ),
    "3.2.7 whole-entity defaults": (
        {
            "subject": ALICE,
            "action": WRITE,
            "resource": {**RECORD_1, "properties": {"status": "active"}},
            "evaluations": [{}, {"resource": ARCHIVED_2}],
        },
        [True, False],
    ),
}


@pytest.mark.parametrize("case", BATCHES)
def test_batch(pdp: Pdp, case: str) -> None:
    body, expected = BATCHES[case]
    reply = pdp.evaluations(body)
    assert reply.status == 200, reply.text
    # 3.3: same length, same order, a decision each, no top-level decision.
    assert reply.json() == {"evaluations": [{"decision": d} for d in expected]}


def test_3_2_1_and_3_2_6_structure_with_context_inheritance(pdp: Pdp) -> None:
    body = {
        "subject": ALICE,
        "action": READ,
        "context": {"time": "2025-06-27T18:03-07:00"},
        "evaluations": [
            {"resource": RECORD_1},
            {"resource": RECORD_2, "context": {"time": "x", "source": "batch-override"}},
        ],
    }
    assert pdp.evaluations(body).json() == {"evaluations": [{"decision": True}] * 2}


def test_3_4_1_an_invalid_item_denies_that_item_only(pdp: Pdp) -> None:
    body = {
        "subject": ALICE,
        "action": READ,
        "options": {"evaluations_semantic": "execute_all"},
        "evaluations": [{"resource": RECORD_1}, {}, "not an object", {"resource": RECORD_2}],
    }
    reply = pdp.evaluations(body)
    assert reply.status == 200
    first, missing, wrong, last = reply.json()["evaluations"]
    assert first == {"decision": True} and last == {"decision": True}
    assert missing["decision"] is False and wrong["decision"] is False
    assert missing["context"]["error"] == {
        "status": 400,
        "message": "evaluations[1].resource: is required, in the item or at the top level",
    }
    assert wrong["context"]["error"]["message"].startswith("evaluations[2]: must be a JSON object")


@pytest.mark.parametrize("evaluations", [None, []], ids=["3.4.2 absent", "3.4.3 empty"])
def test_3_4_without_items_it_is_a_single_evaluation(pdp: Pdp, evaluations: Any) -> None:
    body = _req(ALICE, READ, RECORD_1)
    if evaluations is not None:
        body["evaluations"] = evaluations
    assert pdp.evaluations(body).json() == {"decision": True}


def _semantic(pdp: Pdp, semantic: str | None, actions: list[str]) -> Any:
    body: dict[str, Any] = {
        "subject": ALICE,
        "resource": RECORD_1,
        "evaluations": [{"action": {"name": a}} for a in actions],
    }
    if semantic is not None:
        body["options"] = {"evaluations_semantic": semantic, "another_option": "value"}
    reply = pdp.evaluations(body)
    assert reply.status == 200, reply.text
    return reply.json()["evaluations"]


def test_evaluations_semantics(served: tuple[Running, Pdp]) -> None:
    run, pdp = served
    actions = ["read", "delete", "write"]  # permit, deny (hard delete), permit
    assert _semantic(pdp, None, actions) == [{"decision": d} for d in (True, False, True)]
    assert _semantic(pdp, "execute_all", actions) == _semantic(pdp, None, actions)
    before = len(decisions(run))
    assert _semantic(pdp, "deny_on_first_deny", actions) == [
        {"decision": True},
        {"decision": False, "context": {"code": "200", "reason": "deny_on_first_deny"}},
    ]
    assert len(decisions(run)) == before + 2  # the third item is never evaluated
    assert _semantic(pdp, "permit_on_first_permit", actions) == [{"decision": True}]
    assert _semantic(pdp, "permit_on_first_permit", ["delete", "write", "read"]) == [
        {"decision": False},
        {"decision": True},
    ]
    assert _semantic(pdp, "deny_on_first_deny", ["read", "write"]) == [{"decision": True}] * 2


def test_an_error_counts_as_a_deny_for_deny_on_first_deny(pdp: Pdp) -> None:
    body = {
        "subject": ALICE,
        "resource": RECORD_1,
        "options": {"evaluations_semantic": "deny_on_first_deny"},
        "evaluations": [{"action": {}}, {"action": READ}],
    }
    (only,) = pdp.evaluations(body).json()["evaluations"]
    assert only["decision"] is False and only["context"]["reason"] == "deny_on_first_deny"
    assert only["context"]["error"]["message"].startswith("evaluations[0].action.name")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"evaluations": {"x": 1}}, "evaluations"),
        ({"evaluations": [{}], "options": "fast"}, "options"),
        (
            {"evaluations": [{}], "options": {"evaluations_semantic": "any"}},
            "options.evaluations_semantic",
        ),
        ({"evaluations": [{}], "subject": {"type": "user"}}, "subject.id"),
        ({"evaluations": [{}], "action": "read"}, "action"),
        ({"evaluations": [{}], "context": []}, "context"),
        (
            {**_req(ALICE, READ, RECORD_1), "options": {"evaluations_semantic": "x"}},
            "options.evaluations_semantic",
        ),
    ],
)
def test_whole_payload_errors_of_a_batch_are_400(pdp: Pdp, body: Any, field: str) -> None:
    reply = pdp.evaluations(body)
    assert reply.status == 400 and reply.text.startswith(f"{field}: "), reply.text


def test_a_batch_over_the_item_limit_is_400(tmp_path: Any) -> None:
    from sidecar.core.validate import Limits

    with serving(tmp_path, CERT, limits=Limits(max_batch_items=3)) as (_, pdp):
        body = {"subject": ALICE, "action": READ, "evaluations": [{"resource": RECORD_1}] * 4}
        reply = pdp.evaluations(body)
    assert reply.status == 400 and "over the limit of 3" in reply.text


# -- C.4 Search ---------------------------------------------------------------------------


def _results(pdp: Pdp, kind: str, body: Any) -> list[Any]:
    reply = pdp.search(kind, body)
    assert reply.status == 200, reply.text
    results: list[Any] = reply.json()["results"]
    return results


def test_4_2_subject_search(pdp: Pdp) -> None:
    s1 = _results(
        pdp, "subject", {"subject": {"type": "user"}, "action": READ, "resource": RECORD_1}
    )
    assert s1 == [ALICE, BOB]  # S1
    with_context = {
        "subject": {"type": "user"},
        "action": READ,
        "resource": RECORD_1,
        "context": CONTEXT,
    }
    assert _results(pdp, "subject", with_context) == s1  # 4.2.2
    with_id = {"subject": ALICE, "action": READ, "resource": RECORD_1}
    assert _results(pdp, "subject", with_id) == s1  # 4.2.3: the id is ignored
    s4 = {"subject": {"type": "user"}, "action": WRITE, "resource": ARCHIVED_2}
    assert _results(pdp, "subject", s4) == [BOB]  # S4


def test_4_3_resource_search(pdp: Pdp) -> None:
    s2 = _results(
        pdp, "resource", {"subject": ALICE, "action": READ, "resource": {"type": "record"}}
    )
    assert s2 == [RECORD_1, RECORD_2]  # S2
    assert (
        _results(
            pdp,
            "resource",
            {"subject": ALICE, "action": READ, "resource": {"type": "record"}, "context": CONTEXT},
        )
        == s2
    )
    assert _results(pdp, "resource", {"subject": ALICE, "action": READ, "resource": RECORD_1}) == s2
    s5 = {"subject": BOB_ADMIN, "action": WRITE, "resource": {"type": "record"}}
    assert _results(pdp, "resource", s5) == [RECORD_2]  # S5
    assert _results(
        pdp, "resource", {"subject": ALICE, "action": WRITE, "resource": {"type": "record"}}
    ) == [RECORD_1]


def test_4_4_action_search(pdp: Pdp) -> None:
    s3 = _results(pdp, "action", {"subject": ALICE, "resource": RECORD_1})
    assert s3 == [{"name": "read"}, {"name": "write"}]  # S3; delete needs action properties
    assert (
        _results(pdp, "action", {"subject": ALICE, "resource": RECORD_1, "context": CONTEXT}) == s3
    )
    s6 = _results(pdp, "action", {"subject": BOB_ADMIN, "resource": ARCHIVED_2})
    assert s6 == [{"name": "read"}, {"name": "write"}]  # S6


def test_search_decisions_are_audited(served: tuple[Running, Pdp]) -> None:
    run, pdp = served
    before = len(decisions(run))
    _results(pdp, "subject", {"subject": {"type": "user"}, "action": WRITE, "resource": RECORD_1})
    events = decisions(run)[before:]
    assert [(e["principal"]["id"], e["decision"]) for e in events] == [
        ("alice", "ALLOW"),
        ("bob", "DENY"),
    ]


def test_4_5_pagination(pdp: Pdp) -> None:
    body: dict[str, Any] = {
        "subject": {"type": "user"},
        "action": READ,
        "resource": RECORD_1,
        "page": {"limit": 1},
    }
    first = pdp.search("subject", body).json()
    assert list(first) == ["page", "results"]  # page first, as recommended
    assert first == {
        "page": {"next_token": first["page"]["next_token"], "count": 1},
        "results": [ALICE],
    }
    assert isinstance(first["page"]["next_token"], str) and first["page"]["next_token"]
    body["page"] = {"limit": 1, "token": first["page"]["next_token"]}
    second = pdp.search("subject", body).json()
    assert second == {"page": {"next_token": "", "count": 1}, "results": [BOB]}
    # 4.5.4: a page object without a limit is accepted; the whole set fits one page.
    whole = pdp.search("subject", {**body, "page": {}}).json()
    assert whole == {"page": {"next_token": "", "count": 2}, "results": [ALICE, BOB]}


def test_a_page_token_works_only_for_the_query_that_issued_it(pdp: Pdp) -> None:
    body: dict[str, Any] = {
        "subject": {"type": "user"},
        "action": READ,
        "resource": RECORD_1,
        "page": {"limit": 1},
    }
    token = pdp.search("subject", body).json()["page"]["next_token"]
    changed = {**body, "action": WRITE, "page": {"limit": 1, "token": token}}
    reply = pdp.search("subject", changed)
    assert reply.status == 400 and reply.text.startswith(
        "page.token: was issued for a different query"
    )
    other_limit = {**body, "page": {"limit": 2, "token": token}}
    assert pdp.search("subject", other_limit).status == 400
    forged = pdp.search("subject", {**body, "page": {"limit": 1, "token": "not-a-token"}})
    assert forged.status == 400 and "not a token this PDP issued" in forged.text


@pytest.mark.parametrize(
    "page",
    [{"limit": -1}, {"limit": 1.5}, {"limit": "2"}, {"token": 7}, "next"],
)
def test_a_malformed_page_is_400(pdp: Pdp, page: Any) -> None:
    body = {"subject": {"type": "user"}, "action": READ, "resource": RECORD_1, "page": page}
    reply = pdp.search("subject", body)
    assert reply.status == 400 and reply.text.startswith("page")


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("action", {"subject": {"type": "user", "id": "nonexistent-user"}, "resource": RECORD_1}),
        (
            "subject",
            {
                "subject": {"type": "user"},
                "action": READ,
                "resource": {"type": "record", "id": "nope"},
            },
        ),
        (
            "resource",
            {
                "subject": {"type": "user", "id": "nonexistent-user"},
                "action": READ,
                "resource": {"type": "record"},
            },
        ),
        ("subject", {"subject": {"type": "spaceship"}, "action": READ, "resource": RECORD_1}),
        ("resource", {"subject": ALICE, "action": READ, "resource": {"type": "spaceship"}}),
        ("action", {"subject": {"type": "spaceship", "id": "x"}, "resource": RECORD_1}),
        ("resource", {"subject": ALICE, "action": {"name": "fly"}, "resource": {"type": "record"}}),
    ],
    ids=[
        "4.6.1-action",
        "unknown-resource",
        "unknown-subject",
        "4.6.2-subject",
        "unknown-type",
        "unknown-type-action",
        "unknown-action",
    ],
)
def test_4_6_no_match_is_an_empty_result_not_an_error(pdp: Pdp, kind: str, body: Any) -> None:
    reply = pdp.search(kind, body)
    assert reply.status == 200 and reply.json() == {"results": []}


SEARCH_400 = {
    "4.7.1 subject search missing action": (
        "subject",
        {"subject": {"type": "user"}, "resource": RECORD_1},
        "action",
    ),
    "4.7.1 resource search missing subject": (
        "resource",
        {"action": READ, "resource": {"type": "record"}},
        "subject",
    ),
    "4.7.1 action search missing resource": ("action", {"subject": ALICE}, "resource"),
    "4.7.2 subject search resource missing id": (
        "subject",
        {"subject": {"type": "user"}, "action": READ, "resource": {"type": "record"}},
        "resource.id",
    ),
    "4.7.2 resource search subject missing id": (
        "resource",
        {"subject": {"type": "user"}, "action": READ, "resource": {"type": "record"}},
        "subject.id",
    ),
    "4.7.2 action search subject missing id": (
        "action",
        {"subject": {"type": "user"}, "resource": RECORD_1},
        "subject.id",
    ),
    "searched-for entity missing type": (
        "subject",
        {"subject": {}, "action": READ, "resource": RECORD_1},
        "subject.type",
    ),
}


@pytest.mark.parametrize("case", SEARCH_400)
def test_4_7_search_bad_request(pdp: Pdp, case: str) -> None:
    kind, body, field = SEARCH_400[case]
    reply = pdp.search(kind, body)
    assert reply.status == 400 and reply.text.startswith(f"{field}: "), reply.text


@pytest.mark.parametrize("path", ["/access/v1/search/subject", "/access/v1/evaluations"])
def test_transport_errors_of_search_and_batch(pdp: Pdp, path: str) -> None:
    assert pdp.post(path, raw=b"{").status == 400
    assert pdp.post(path, raw=b"").status == 400
    assert pdp.post(path, {}, content_type="text/plain").status == 400


# -- C.5 Transport, C.6 Discovery ---------------------------------------------------------


def test_6_discovery_metadata(pdp: Pdp) -> None:
    reply = pdp.get("/.well-known/authzen-configuration")
    assert reply.status == 200
    meta = reply.json()
    base = f"http://{pdp.address}"
    assert meta == {
        "policy_decision_point": base,
        "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
        "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
        "search_subject_endpoint": f"{base}/access/v1/search/subject",
        "search_resource_endpoint": f"{base}/access/v1/search/resource",
        "search_action_endpoint": f"{base}/access/v1/search/action",
    }
    # Every advertised endpoint answers at the advertised path.
    for key, url in meta.items():
        if key.endswith("_endpoint"):
            assert pdp.post(url.removeprefix(base), raw=b"{}").status == 400


def test_other_paths_and_methods(pdp: Pdp) -> None:
    assert pdp.get("/access/v1/evaluation").status == 405
    assert pdp.get("/access/v1/evaluation").headers["allow"] == "POST"
    assert pdp.post("/.well-known/authzen-configuration", {}).status == 405
    assert pdp.post("/access/v2/evaluation", {}).status == 404
    assert pdp.get("/.well-known/authzen-configuration/tenant1").status == 404


def test_a_body_over_the_limit_is_413(pdp: Pdp) -> None:
    big = {**_req(ALICE, READ, RECORD_1), "padding": "x" * (64 * 1024)}
    reply = pdp.evaluation(big)
    assert reply.status == 413
    assert pdp.evaluation(_req(ALICE, READ, RECORD_1)).json() == {"decision": True}
