"""Hypothesis: JSON of any shape against the real AuthZEN server, every endpoint.

The AuthZEN listener takes JSON from callers that are not ours (any AuthZEN
PEP), so it gets what the gRPC API gets in tests/serving/test_fuzz_*.py.
Properties, on one real sidecar (the example bundle) and its real trail:

- every POST is answered 200 with the endpoint's JSON, or 400 as text starting
  with the path of the field it refuses, printable; never another status;
- a 200 evaluation's `decision` is a boolean, in a batch one per item;
- the server keeps serving, and the trail (every decision the answers made)
  verifies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fuzzing import assert_named, json_values
from tests.helpers import NOTIFIER, PROVISIONER, Running, assert_trail_verifies, running_sidecar
from tests.serving.authzen.authzen_client import Pdp

PATHS = [
    "/access/v1/evaluation",
    "/access/v1/evaluations",
    "/access/v1/search/subject",
    "/access/v1/search/resource",
    "/access/v1/search/action",
    "/stepguard/v1/plan",
]

texts = st.one_of(
    st.sampled_from(["", "Workload", "TargetSystem", "User", "notify", "slack", "maria"]),
    st.text(max_size=12),
    st.text(alphabet="\x00\x1b\n\u202e\ud7ff\U0001f600:.[]' x", max_size=6),
)
values = json_values(texts)
entities = st.one_of(
    values,
    st.fixed_dictionaries(
        {"type": st.one_of(texts, values), "id": st.one_of(texts, values)},
        optional={"properties": st.dictionaries(texts, values, max_size=3)},
    ),
    st.sampled_from(
        [
            dict(NOTIFIER),
            dict(PROVISIONER),
            {"type": "TargetSystem", "id": "slack"},
            {"type": "TargetSystem", "id": "jira"},
            {"type": "User", "id": "maria"},
        ]
    ),
)
actions = st.one_of(
    values,
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["notify", "grant_access", "lookup"]), texts, values)},
        optional={"properties": st.dictionaries(texts, values, max_size=2)},
    ),
)
evaluation = st.fixed_dictionaries(
    {},
    optional={
        "subject": entities,
        "action": actions,
        "resource": entities,
        "context": st.one_of(values, st.dictionaries(texts, values, max_size=3)),
    },
)
# Evaluations shaped like real ones (the example bundle's workloads, actions and
# targets), so that a good share is answered, not refused.
REAL = [
    dict(NOTIFIER),
    dict(PROVISIONER),
    {"type": "TargetSystem", "id": "slack"},
    {"type": "TargetSystem", "id": "jira"},
]
plausible = st.fixed_dictionaries(
    {
        "subject": st.sampled_from(REAL[:2]),
        "action": st.sampled_from(["notify", "grant_access", "lookup"]).map(lambda n: {"name": n}),
        "resource": st.sampled_from(REAL[2:]),
    },
    optional={"context": st.dictionaries(st.sampled_from(["sensitivity", "x"]), texts, max_size=2)},
)
bodies = st.one_of(
    plausible,
    plausible,
    st.fixed_dictionaries(
        {"evaluations": st.lists(plausible | evaluation, min_size=1, max_size=3)}
    ),
    st.builds(
        lambda p, extra: {**p, **extra}, plausible, st.dictionaries(texts, values, max_size=2)
    ),
    values,
    evaluation,
    st.builds(
        lambda top, items, options: {**top, "evaluations": items, **options},
        evaluation,
        st.one_of(values, st.lists(evaluation, max_size=4)),
        st.fixed_dictionaries(
            {},
            optional={
                "options": st.one_of(
                    values,
                    st.fixed_dictionaries(
                        {
                            "evaluations_semantic": st.sampled_from(
                                [
                                    "execute_all",
                                    "deny_on_first_deny",
                                    "permit_on_first_permit",
                                    "x",
                                ]
                            )
                        }
                    ),
                ),
                "page": st.one_of(values, st.fixed_dictionaries({"token": texts, "limit": values})),
            },
        ),
    ),
    st.fixed_dictionaries(  # a plan
        {"run_id": st.one_of(texts, values)},
        optional={"steps": st.one_of(values, st.lists(values, max_size=2))},
    ),
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Pdp]]:
    with running_sidecar(
        tmp_path_factory.mktemp("fuzz-authzen"), authzen_listen="127.0.0.1:0"
    ) as running:
        assert running.authzen
        pdp = Pdp(running.authzen)
        try:
            yield running, pdp
        finally:
            pdp.close()


def _decision(item: Any) -> None:
    assert isinstance(item, dict) and isinstance(item.get("decision"), bool), item


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(PATHS), body=bodies)
def test_every_endpoint_answers_200_or_400_naming_the_field(
    served: tuple[Running, Pdp], path: str, body: Any
) -> None:
    _, pdp = served
    reply = pdp.post(path, raw=json.dumps(body).encode())
    assert reply.status in (200, 400), (reply.status, reply.text)
    event(f"{path} {reply.status}")
    if reply.status == 400:
        assert reply.headers["content-type"].startswith("text/plain"), reply.headers
        assert_named(reply.text.strip())
        return
    answer = reply.json()
    if path == "/access/v1/evaluation":
        _decision(answer)
    elif path == "/access/v1/evaluations":
        items = answer.get("evaluations")
        if items is None:  # no `evaluations`: a single evaluation (AuthZEN 3.4.2)
            _decision(answer)
        else:
            assert isinstance(items, list) and items, answer
            for item in items:
                _decision(item)
    elif path.startswith("/access/v1/search/"):
        assert isinstance(answer.get("results"), list), answer
    else:
        assert isinstance(answer.get("steps"), list), answer


def test_still_serving_and_the_trail_verifies(served: tuple[Running, Pdp]) -> None:
    running, pdp = served
    reply = pdp.evaluation(
        {
            "subject": dict(NOTIFIER),
            "action": {"name": "notify"},
            "resource": {"type": "TargetSystem", "id": "slack"},
        }
    )
    assert reply.status == 200 and reply.json()["decision"] is True
    running.sidecar.stop(grace=1.0)
    assert_trail_verifies(running.audit)
