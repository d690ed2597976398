"""The trail matches every answer: for each decision id a caller receives, the trail
holds exactly one event with the same decision, or none and the answer says the
decision was not recorded (issue 25, points 1, 2 and 8).

The trail's medium is made to fail at a chosen decision event (and a chosen
byte inside its line) while a real sidecar answers batches and stream windows:
each answer is then checked against the file on disk.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.stepguard.v1 import authorizer_pb2 as pb
from sidecar._proto.stepguard.v1 import authorizer_pb2_grpc as pb_grpc
from sidecar.audit.filesink import FileSink
from sidecar.audit.segments import collect
from sidecar.audit.verify import verify
from sidecar.core.errors import InvalidRequest
from sidecar.core.event import timestamp
from sidecar.core.jsonreq import request_from_json
from sidecar.serving.config import Settings
from sidecar.serving.server import Sidecar
from tests.audit.test_audit_server import serve, verify_cli
from tests.helpers import POLICIES, notify_request, running_sidecar
from tests.serving.authzen.authzen_client import decisions, serving

NOT_RECORDED = "not recorded"
SCHEMA = """
entity User;
entity Doc;
type Ctx = {
  now: datetime,
  workflow_id?: String,
  run_id?: String,
  step_id?: String,
  attempt?: Long,
  labels?: Set<String>,
};
action read appliesTo { principal: [User], resource: [Doc], context: Ctx };
"""
POLICY = """
@id("alice-reads")
permit (principal == User::"alice", action == Action::"read", resource);
"""

# These tests are about the trail, not about entities: any user may ask about any doc
# (request-entities.yaml admits both bare when the store lacks them).
ADMIT_USERS_AND_DOCS = "entity_types:\n  User:\n    attributes: []\n  Doc:\n    attributes: []\n"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "schema.cedarschema").write_text(SCHEMA)
    (directory / "read.cedar").write_text(POLICY)
    (directory / "request-entities.yaml").write_text(ADMIT_USERS_AND_DOCS)
    return directory


def ask(step: str, who: str = "alice") -> pb.AuthorizeRequest:
    return request_from_json(
        {
            "principal": {"type": "User", "id": who},
            "action": {"type": "Action", "id": "read"},
            "resource": {"type": "Doc", "id": "d1"},
            "context": {"workflow_id": "wf", "run_id": "r", "step_id": step},
        }
    )


class FailingMedium(FileSink):
    """The file trail on a medium that fails at a chosen decision event.

    `arm(k)` makes the write that carries the k-th decision event from now on
    write all the lines before it and part of its line (`cut` of its bytes) to
    the file, then fail with EFBIG, as a write crossing RLIMIT_FSIZE does. A
    transient failure fails once; a lasting one fails every write (whatever it
    carries) until `disarm`. With `split`, each queued event waits for the
    committer to take it, so every event of a batch is committed on its own
    (the schedule a slow disk gives: some of a batch's events are on disk
    before the next are decided).
    """

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.fail_at: int | None = None
        self.lasting = False
        self.failing = False
        self.cut = 0.5
        self.seen = 0
        self.split = False
        self.bug = False  # fail as no medium should (RuntimeError) instead of EFBIG
        super().__init__(path, **kwargs)

    def arm(self, at: int, *, lasting: bool, cut: float, bug: bool = False) -> None:
        self.seen, self.cut, self.lasting, self.failing = 0, cut, lasting, False
        self.bug = bug
        self.fail_at = at

    def disarm(self) -> None:
        self.fail_at, self.failing = None, False

    def enqueue(self, event: Mapping[str, Any]) -> Any:
        batch = super().enqueue(event)
        deadline = time.monotonic() + 2
        while self.split and self._open is batch and time.monotonic() < deadline:
            time.sleep(0.0002)
        return batch

    def _append(self, data: bytes) -> None:
        if self.fail_at is None:
            super()._append(data)
            return
        if self.failing:  # a lasting failure: nothing more fits
            self._fail(data, 0)
        done = 0
        for line in data.splitlines(keepends=True):
            if b'"kind":"decision"' in line:
                if self.seen == self.fail_at:
                    self.failing = self.lasting
                    if not self.lasting:
                        self.fail_at = None
                    self._fail(data, done + int(len(line) * self.cut))
                self.seen += 1
            done += len(line)
        super()._append(data)

    def _fail(self, data: bytes, keep: int) -> None:
        assert self._fd is not None
        if keep:
            os.write(self._fd, data[:keep])  # real bytes on the file, as a short write leaves
        if self.bug:
            raise RuntimeError("a bug in the medium")
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(self.path))


@dataclass
class Answer:
    decision_id: str
    decision: int
    reason: str


@contextmanager
def sidecar_on(tmp: Path, policies: Path, mode: str) -> Iterator[tuple[str, FailingMedium]]:
    audit = tmp / f"audit-{mode}.jsonl"
    sink = FailingMedium(audit, durability="fsync", probe_interval_s=0.02)
    settings = Settings(
        policies=policies,
        listen="127.0.0.1:0",
        metrics_listen=None,
        audit_file=str(audit),
        audit_durability="fsync",
        server_mode=mode,
        cache_max_entries=0,
        grace_s=1.0,
    )
    sidecar = Sidecar(settings, sink=sink)
    target = str(sidecar.start().tcp)
    try:
        yield target, sink
    finally:
        sidecar.stop(grace=1.0)


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def decision_events(audit: Path) -> list[dict[str, Any]]:
    out = []
    for line in audit.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "decision":
            out.append(record)
    return out


def check_trail_matches(audit: Path, answers: list[Answer], why: str = "File too large") -> None:
    """Each answer's id: one event with its decision, or none and the answer says so."""
    events = decision_events(audit)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_id.setdefault(event["id"], []).append(event)
    names: dict[int, str] = {pb.DECISION_ALLOW: "ALLOW", pb.DECISION_DENY: "DENY"}
    for a in answers:
        found = by_id.get(a.decision_id, [])
        if found:
            assert len(found) == 1, f"{a.decision_id} is in the trail {len(found)} times"
            assert found[0]["decision"] == names[a.decision], (a, found[0]["decision"])
            assert NOT_RECORDED not in a.reason, a
        else:
            assert a.decision == pb.DECISION_DENY, f"{a} was answered without its event"
            assert NOT_RECORDED in a.reason and why in a.reason, a
    # Nothing else: a refused event never stays in the trail (the batch is cut off).
    recorded = {a.decision_id for a in answers if a.decision_id in by_id}
    assert set(by_id) == recorded, f"events nobody received: {set(by_id) - recorded}"
    report = verify(collect([audit])[0])
    assert report.ok, report.problem


def batch_answers(stub: pb_grpc.AuthorizerStub, tag: str, n: int) -> list[Answer]:
    out = stub.AuthorizeBatch(
        pb.AuthorizeBatchRequest(items=[ask(f"{tag}-{i}") for i in range(n)]), timeout=20
    )
    assert all(slot.HasField("response") for slot in out.results), out
    return [
        Answer(s.response.decision_id, s.response.decision, s.response.reason) for s in out.results
    ]


def stream_answers(stub: pb_grpc.AuthorizerStub, tag: str, n: int) -> list[Answer]:
    """A window of `n` requests sent at once on one stream."""
    requests = [pb.AuthorizeStreamRequest(id=i, request=ask(f"{tag}-{i}")) for i in range(n)]
    out = list(stub.AuthorizeStream(iter(requests), timeout=20))
    assert [r.id for r in out] == list(range(n))
    return [Answer(r.response.decision_id, r.response.decision, r.response.reason) for r in out]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["asyncio", "sync"])
def test_a_failure_at_every_position_of_a_batch_and_a_window_matches_the_trail(
    tmp_path: Path, policies: Path, mode: str
) -> None:
    """Issue 25 point 1: a commit failing part-way refuses exactly its own events.

    For every position of a batch and of a stream window, a transient and a
    lasting failure, each event committed alone or in whatever groups the
    committer makes, on both servers: every answer agrees with the trail.
    """
    n = 5
    answers: list[Answer] = []
    with (
        sidecar_on(tmp_path, policies, mode) as (target, sink),
        grpc.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.AuthorizerStub(channel)
        for split in (True, False):
            sink.split = split
            for lasting in (False, True):
                for shape in ("batch", "stream"):
                    for at in range(n):
                        sink.arm(at, lasting=lasting, cut=(at + 1) / (n + 1))
                        tag = f"{split}-{lasting}-{shape}-{at}"
                        if shape == "batch":
                            got = batch_answers(stub, tag, n)
                        else:
                            got = stream_answers(stub, tag, n)
                        sink.disarm()
                        refused = [a for a in got if NOT_RECORDED in a.reason]
                        assert refused, f"{tag}: the failure was not hit"
                        if split and not lasting:  # only the event that failed
                            assert [a.decision_id for a in refused] == [got[at].decision_id], tag
                        if split and lasting:  # those before it were written
                            assert all(NOT_RECORDED not in a.reason for a in got[:at]), tag
                            assert all(NOT_RECORDED in a.reason for a in got[at:]), tag
                        answers += got
                        wait_for(lambda: sink.healthy, "the trail recovers")
    audit = tmp_path / f"audit-{mode}.jsonl"
    check_trail_matches(audit, answers)
    assert any(a.decision == pb.DECISION_ALLOW for a in answers)


@pytest.mark.parametrize("mode", ["asyncio", "sync"])
def test_a_refused_batch_that_cannot_be_cut_off_at_once_never_joins_the_trail(
    tmp_path: Path, policies: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole lines of a failed commit, and the cut that should remove them fails too.

    The medium fails right after the event's full line reached the file (as
    an EIO with O_DSYNC does), and the rollback's truncation fails: the next
    open must cut the line off (kept aside, noted in a `refused_batch`
    recovery) before anything follows it, or the refused decision's event
    would stay in the trail as if recorded.
    """
    real_ftruncate = os.ftruncate
    cuts_fail = [0]

    def ftruncate(fd: int, size: int) -> None:
        if cuts_fail[0]:
            cuts_fail[0] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_ftruncate(fd, size)

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    answers: list[Answer] = []
    with (
        sidecar_on(tmp_path, policies, mode) as (target, sink),
        grpc.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.AuthorizerStub(channel)
        sink.split = True
        answers += batch_answers(stub, "before", 2)
        for at in (0, 2):
            cuts_fail[0] = 1
            sink.arm(at, lasting=False, cut=1.0)
            got = batch_answers(stub, f"cut-{at}", 4)
            sink.disarm()
            assert [a.decision_id for a in got if NOT_RECORDED in a.reason] == [got[at].decision_id]
            answers += got
            wait_for(lambda: sink.healthy, "the trail recovers")
        answers += batch_answers(stub, "after", 2)
    audit = tmp_path / f"audit-{mode}.jsonl"
    check_trail_matches(audit, answers)
    recoveries = [
        json.loads(line) for line in audit.read_text().splitlines() if '"kind":"recovery"' in line
    ]
    assert [r["reason"] for r in recoveries] == ["refused_batch", "refused_batch"]
    for r in recoveries:
        kept = (tmp_path / r["moved_to"]).read_bytes()
        assert len(kept) == r["bytes"] and b'"decision":"ALLOW"' in kept


@pytest.mark.parametrize("mode", ["asyncio", "sync"])
def test_a_bug_part_way_through_a_write_is_rolled_back_like_a_failing_disk(
    tmp_path: Path, policies: Path, mode: str
) -> None:
    """A commit that raises what no medium should, after part of its lines reached the
    file: the batch is cut off all the same, and only its events are refused."""
    answers: list[Answer] = []
    with (
        sidecar_on(tmp_path, policies, mode) as (target, sink),
        grpc.insecure_channel(target) as channel,
    ):
        stub = pb_grpc.AuthorizerStub(channel)
        sink.split = True
        for at in range(3):
            sink.arm(at, lasting=False, cut=1.0 if at else 0.5, bug=True)
            got = batch_answers(stub, f"bug-{at}", 3)
            sink.disarm()
            assert [a.decision_id for a in got if NOT_RECORDED in a.reason] == [got[at].decision_id]
            answers += got
            wait_for(lambda: sink.healthy, "the trail recovers")
    check_trail_matches(tmp_path / f"audit-{mode}.jsonl", answers, why="RuntimeError")


@pytest.mark.slow
def test_the_issue_reproduction_a_300_item_batch_over_a_file_size_limit(tmp_path: Path) -> None:
    """Issue 25 point 1 as reported: `ulimit -f 48`, `stepguard serve --audit-durability
    fsync` (the asyncio server), one AuthorizeBatch of 300 distinct notifier `notify`
    slack items. The trail fills part-way through the batch: the items whose events
    were written stand as ALLOW, the rest are DENY saying they were not recorded, and
    no id answered DENY is in the trail as ALLOW."""
    audit = tmp_path / "trail" / "audit.jsonl"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, resource.RLIM_INFINITY))

    items = []
    for i in range(300):
        request = notify_request()
        request["context"] = {**request["context"], "run_id": f"r-{i}"}
        items.append(request_from_json(request))
    flags = ("--metrics-listen", "off", "--grace", "5", "--audit-durability", "fsync")
    with serve(tmp_path, POLICIES, audit, *flags, preexec_fn=limit_file_size) as server:
        with grpc.insecure_channel(server.grpc) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            out = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(items=items), timeout=60)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
    answers = [
        Answer(s.response.decision_id, s.response.decision, s.response.reason) for s in out.results
    ]
    allowed = [a for a in answers if a.decision == pb.DECISION_ALLOW]
    refused = [a for a in answers if NOT_RECORDED in a.reason]
    assert allowed and refused and len(allowed) + len(refused) == 300
    check_trail_matches(audit, answers)
    result = verify_cli(audit)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_cache_hit_records_the_now_of_its_own_decision(tmp_path: Path, policies: Path) -> None:
    """Issue 25 point 8: the schema declares `now`, no policy reads it, so `now` is not
    in the cache key. A hit at 15:00 of a decision first made at 10:00 must record
    15:00, in `time` and in `context.now`, over AuthZEN and over gRPC with `explain`."""
    morning = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    afternoon = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    clock = [morning]
    body = {
        "subject": {"type": "User", "id": "alice"},
        "action": {"name": "read"},
        "resource": {"type": "Doc", "id": "d1"},
        "context": {"workflow_id": "wf", "run_id": "r", "step_id": "s"},
        "options": {"stepguard_explain": True},
    }
    explained = ask("explained")
    explained.explain = True
    ids: dict[str, list[str]] = {"authzen": [], "grpc": []}
    with serving(tmp_path, policies, clock=lambda: clock[0]) as (run, pdp):
        with grpc.insecure_channel(run.tcp) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            for at in (morning, afternoon):
                clock[0] = at
                answer = pdp.evaluation(body).json()
                assert answer["decision"] is True
                ids["authzen"].append(answer["context"]["decision_id"])
                reply = stub.Authorize(explained, timeout=10)
                assert reply.decision == pb.DECISION_ALLOW
                ids["grpc"].append(reply.decision_id)
        events = {e["id"]: e for e in decisions(run)}
    for api, (first, hit) in ids.items():
        assert not events[first]["cached"] and events[hit]["cached"], api
        for decision_id, at in ((first, morning), (hit, afternoon)):
            event = events[decision_id]
            assert event["time"] == timestamp(at), api
            now = event["context"]["now"]["__extn"]["arg"]
            assert now == f"2026-11-25T{at.hour:02d}:00:00.000Z", (api, now)


LONE = "x\ud800"  # a lone surrogate: valid in a JSON escape, not in UTF-8
HUGE = 123456789012345678901234567890  # beyond 64 bits
ALICE_READS = {
    "subject": {"type": "User", "id": "alice"},
    "action": {"name": "read"},
    "resource": {"type": "Doc", "id": "d1"},
    "context": {"workflow_id": "wf", "run_id": "r", "step_id": "s"},
}


def with_context(**values: Any) -> dict[str, Any]:
    return {**ALICE_READS, "context": {**ALICE_READS["context"], **values}}


def metric(run: Any, name: str) -> float:
    value = run.sidecar.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return float(value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (with_context(workflow_id=LONE), "context.workflow_id"),
        (with_context(attempt=HUGE), "context.attempt"),
        (with_context(attempt=-HUGE), "context.attempt"),
        (with_context(labels=["ok", LONE]), "context.labels[1]"),
        ({**ALICE_READS, "subject": {"type": "User", "id": LONE}}, "subject.id"),
        ({**ALICE_READS, "action": {"name": LONE}}, "action.name"),
    ],
)
def test_authzen_refuses_what_the_trail_cannot_record_before_deciding(
    tmp_path: Path, policies: Path, body: dict[str, Any], field: str
) -> None:
    """Issue 25 point 2: 400 naming the field, no decision, nothing counted against the
    trail, which stays healthy; the same request made recordable is decided and recorded."""
    with serving(tmp_path, policies) as (run, pdp):
        before = len(decisions(run))
        reply = pdp.evaluation(body)
        assert reply.status == 400, reply.text
        assert reply.text.startswith(field), reply.text
        batch = pdp.evaluations({**ALICE_READS, "evaluations": [body, {}]}).json()["evaluations"]
        assert batch[0]["context"]["error"]["status"] == 400
        assert field in batch[0]["context"]["error"]["message"]
        assert batch[1] == {"decision": True}
        assert len(decisions(run)) == before + 1  # the valid item only
        assert metric(run, "stepguard_audit_write_failures_total") == 0
        assert metric(run, "stepguard_audit_healthy") == 1
        assert run.sidecar.sink.healthy
        assert pdp.evaluation(ALICE_READS).json() == {"decision": True}
        assert len(decisions(run)) == before + 2
        search = {**body, "subject": {"type": "User"}}
        if field.startswith("context."):  # a search maps its context before any decision
            reply = pdp.search("subject", search)
            assert reply.status == 400 and reply.text.startswith(field), reply.text
            assert len(decisions(run)) == before + 2


def test_json_requests_refuse_what_the_trail_cannot_record(tmp_path: Path) -> None:
    """The JSON request form (CLI, client, policy tests) names the field too; gRPC's
    wire form cannot carry such values (protobuf refuses bad UTF-8 and >64-bit varints)."""
    cases = [
        ({"workflow_id": LONE}, "context.workflow_id"),
        ({"attempt": HUGE}, "context.attempt"),
        ({"attributes": {"labels": [LONE]}}, "context.attributes.labels[0]"),
        ({"attributes": {LONE: "v"}}, "context.attributes"),
    ]
    for context, field in cases:
        with pytest.raises(InvalidRequest) as caught:
            request_from_json({**ALICE_AS_JSON, "context": context})
        assert caught.value.field.startswith(field), (caught.value.field, field)
    with pytest.raises(InvalidRequest, match=r"principal\.id"):
        request_from_json({**ALICE_AS_JSON, "principal": {"type": "User", "id": LONE}})
    raw = ask("s").SerializeToString().replace(b"User", b"U\xed\xa0\x80")  # same length
    with running_sidecar(tmp_path, policies=POLICIES) as run, grpc.insecure_channel(run.tcp) as ch:
        with pytest.raises(grpc.RpcError) as refused:
            call = ch.unary_unary(
                "/stepguard.v1.Authorizer/Authorize",
                request_serializer=None,
                response_deserializer=None,
            )
            call(raw, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert run.sidecar.sink.healthy


ALICE_AS_JSON = {
    "principal": {"type": "User", "id": "alice"},
    "action": {"type": "Action", "id": "read"},
    "resource": {"type": "Doc", "id": "d1"},
}


def test_an_event_that_cannot_be_encoded_is_not_a_failure_of_the_trail(tmp_path: Path) -> None:
    """Defence in depth, should a value get past validation: the decision is a DENY
    saying it was not recorded, under an id no trail holds; the trail stays healthy and
    no audit write failure is counted."""
    from sidecar.core.bundle import load_bundle
    from sidecar.core.event import CallMeta
    from sidecar.core.validate import Limits, request_from_proto
    from sidecar.decision.decider import Decider
    from sidecar.decision.metrics import Metrics

    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "schema.cedarschema").write_text(SCHEMA)
    (directory / "read.cedar").write_text(POLICY)
    (directory / "request-entities.yaml").write_text(ADMIT_USERS_AND_DOCS)
    bundle = load_bundle(directory)
    at = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    request = request_from_proto(ask("s"), bundle, Limits(), now=at)
    broken = replace(request, context={**request.context, "workflow_id": LONE})
    audit = tmp_path / "audit.jsonl"
    sink = FileSink(audit)
    metrics = Metrics()
    decider = Decider(sink, metrics, lambda: at)
    decided = decider.decide(bundle, broken, CallMeta(), at=at, started=time.perf_counter())
    fine = decider.decide(bundle, request, CallMeta(), at=at, started=time.perf_counter())
    sink.close()
    assert decided.result.decision.value == "DENY" and NOT_RECORDED in decided.result.summary()
    assert fine.result.decision.value == "ALLOW"
    assert sink.healthy
    assert metrics.registry.get_sample_value("stepguard_audit_write_failures_total") == 0
    assert metrics.registry.get_sample_value("stepguard_audit_healthy") == 1
    assert [e["id"] for e in decision_events(audit)] == [fine.decision_id]
