"""The file trail on real files: group commit, durability, failures, events and redaction.

Rotation, recovery and `audit verify` have files of their own (test_audit_rotation.py,
test_audit_recovery.py, test_audit_verify.py); the helpers they share are in trails.py.

Servers are not needed here: the sink is driven directly, and `stepguard audit
verify` / `query` run through the real CLI entry point.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sidecar.audit.filesink import FileSink
from sidecar.audit.redact import Redactor
from sidecar.audit.segments import collect
from sidecar.audit.sink import MemorySink
from sidecar.audit.verify import verify
from sidecar.core.errors import AuditError, ConfigError
from sidecar.core.event import CallMeta, build_event
from sidecar.core.model import AuthzRequest, Decision, EntityData, EntityUid, Obligations, Result
from sidecar.serving.config import Settings, build_settings
from tests.audit.trails import KEY, event, ids_in, lines_of, make_trail

# -- group commit and the write-before-answer promise ------------------------------


class GatedSink(FileSink):
    """A real file sink whose first append waits for a gate: the test sees batching happen."""

    def __init__(self, path: Path) -> None:
        self.gate = threading.Event()
        self.appends: list[int] = []
        super().__init__(path)
        self.gate.clear()

    def _append(self, data: bytes) -> None:
        self.appends.append(data.count(b"\n"))
        if len(self.appends) == 2:  # the first event batch (1 was the header at open)
            self.gate.wait(10)
        super()._append(data)


def test_concurrent_writers_share_one_write(tmp_path: Path) -> None:
    sink = GatedSink(tmp_path / "audit.jsonl")
    first = threading.Thread(target=sink.write, args=(event(0),))
    first.start()
    while len(sink.appends) < 2:
        time.sleep(0.001)
    # The leader is blocked inside its write; these 15 queue behind it.
    others = [threading.Thread(target=sink.write, args=(event(i),)) for i in range(1, 16)]
    for t in others:
        t.start()
    while len(sink._open.bodies) < 15:
        time.sleep(0.001)
    sink.gate.set()
    for t in [first, *others]:
        t.join(10)
    sink.close()
    # header, the leader's event, then all 15 followers in one write, then the shutdown record
    assert sink.appends == [1, 1, 15, 1]
    assert sorted(ids_in(tmp_path)) == [f"ev-{i:05d}" for i in range(16)]
    assert verify(collect([tmp_path])[0]).ok


def test_write_returns_only_once_the_line_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path)
    missing: list[str] = []

    def worker(base: int) -> None:
        for i in range(base, base + 40):
            sink.write(event(i))
            if f'"id":"ev-{i:05d}"'.encode() not in path.read_bytes():
                missing.append(str(i))

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert missing == []
    report = verify(collect([path])[0])
    assert report.ok and report.decisions == 320


def test_fsync_durability_and_unknown_durability(tmp_path: Path) -> None:
    make_trail(tmp_path, 5, durability="fsync")
    assert verify(collect([tmp_path])[0]).ok
    # fsync: every segment write is synchronous (O_DSYNC), new segment or reopened; flush: not.
    for durability, synchronous in (("fsync", True), ("flush", False)):
        sink = FileSink(tmp_path / durability / "audit.jsonl", durability=durability)
        for rotation in range(2):
            sink.write(event(rotation))
            assert sink._fd is not None
            assert bool(fcntl.fcntl(sink._fd, fcntl.F_GETFL) & os.O_DSYNC) is synchronous
            sink._close_medium()  # the next write opens the segment again
        sink.close()
    with pytest.raises(ConfigError, match="does not offer it"):
        FileSink(tmp_path / "x.jsonl", durability="none")
    with pytest.raises(ConfigError, match="audit_durability 'none'"):
        build_settings({"audit_durability": "none"})


def test_settings_from_env_and_file(tmp_path: Path) -> None:
    config = tmp_path / "stepguard.yaml"
    config.write_text(
        "audit-durability: fsync\naudit_redact: [context.ticket, entities.*.attrs.email]\n"
    )
    s = build_settings(
        {"audit_rotate_bytes": 1024},
        {"STEPGUARD_AUDIT_ROTATE_AGE_S": "60", "STEPGUARD_AUDIT_REDACT_MODE": "remove"},
        config,
    )
    assert s.audit_durability == "fsync"
    assert s.audit_redact == ("context.ticket", "entities.*.attrs.email")
    assert (s.audit_rotate_bytes, s.audit_rotate_age_s, s.audit_redact_mode) == (
        1024,
        60.0,
        "remove",
    )
    assert Settings().audit_durability == "flush"


class FlakyDisk(FileSink):
    """A real file sink whose writes fail like a full disk while `full` is set:
    half of the batch reaches the file, then ENOSPC, as a real short write does."""

    full = False

    def _append(self, data: bytes) -> None:
        if self.full:
            assert self._fd is not None
            os.write(self._fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        super()._append(data)


def test_write_failure_denies_rolls_back_and_recovers_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FlakyDisk(path, probe_interval_s=0.05)
    seen: list[tuple[bool, str]] = []
    sink.watch(lambda ok, detail: seen.append((ok, detail)))
    sink.write(event(1))
    size = path.stat().st_size
    sink.full = True
    for i in (2, 3, 4):
        with pytest.raises(AuditError, match="No space left on device"):
            sink.write(event(i))
        assert path.stat().st_size == size  # the partial batch was cut off again
    assert not sink.healthy
    assert seen[0][0] is False and "No space left" in seen[0][1]
    sink.full = False
    deadline = time.monotonic() + 10
    while not sink.healthy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.healthy, "the probe did not bring the trail back"
    assert seen[-1] == (True, "")
    sink.write(event(5))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok, report.problem
    records = [json.loads(x) for x in lines_of(path)]
    outage = [r for r in records if r["kind"] == "outage"]
    assert len(outage) == 1 and outage[0]["refused_events"] == 3
    assert "No space left" in outage[0]["first_error"]
    assert [r["id"] for r in records if r["kind"] == "decision"] == ["ev-00001", "ev-00005"]


class BuggyMedium(FileSink):
    """A real file sink whose writes raise what no medium should (a bug) while `bug` is set."""

    bug = False

    def _append(self, data: bytes) -> None:
        if self.bug:
            raise RuntimeError("a bug in the medium")
        super()._append(data)


def test_an_unexpected_failure_denies_too_and_recovers_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = BuggyMedium(path, probe_interval_s=0.05)
    sink.write(event(1))
    sink.bug = True
    with pytest.raises(AuditError, match="audit trail failed: RuntimeError: a bug in the medium"):
        sink.write(event(2))
    assert not sink.healthy
    sink.bug = False
    deadline = time.monotonic() + 10
    while not sink.healthy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.healthy, "the probe did not bring the trail back"
    sink.write(event(3))
    sink.close()
    report = verify(collect([path])[0])
    assert report.ok, report.problem
    decided = [json.loads(x)["id"] for x in lines_of(path) if b'"decision"' in x]
    assert decided == ["ev-00001", "ev-00003"]


def test_closed_sink_refuses(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "audit.jsonl")
    sink.close()
    with pytest.raises(AuditError, match="closed"):
        sink.write(event(1))


# -- events and redaction ---------------------------------------------------------------


def request(**context: Any) -> AuthzRequest:
    return AuthzRequest(
        principal=EntityUid("User", "alice"),
        action=EntityUid("Action", "read"),
        resource=EntityUid("Doc", "d1"),
        context={"workflow_id": "wf", "run_id": "r1", "step_id": "s1", **context},
        entities=(EntityData(EntityUid("User", "alice"), {"email": "a@x.org", "apiKey": "k-123"}),),
    )


ALLOW = Result(Decision.ALLOW, (), (), Obligations(), "rev1")
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def test_event_fields() -> None:
    meta = CallMeta(peer="ipv4:127.0.0.1:5000", identity="spiffe://x", trace_id="ab" * 16)
    ev = build_event("id-1", AT, request(), ALLOW, meta, cached=True, latency_s=0.0012)
    assert ev["schema"] == 1 and ev["kind"] == "decision" and ev["id"] == "id-1"
    assert ev["time"] == "2026-11-25T10:00:00.000000Z"
    assert ev["caller"] == {"peer": "ipv4:127.0.0.1:5000", "identity": "spiffe://x"}
    assert ev["trace_id"] == "ab" * 16 and ev["cached"] is True and ev["latency_us"] == 1200
    assert (ev["workflow_id"], ev["run_id"], ev["step_id"]) == ("wf", "r1", "s1")
    assert ev["policy_revision"] == "rev1" and ev["decision"] == "ALLOW"


def test_default_redaction_hides_secrets_at_any_depth() -> None:
    secret_ctx = {"nested": {"db_password": "hunter2", "ok": 1}, "token": "t0k"}
    req = request(**secret_ctx, note="plain")
    redactor = Redactor(key=KEY)
    ev = build_event("i", AT, req, ALLOW, CallMeta(), cached=False, latency_s=0, redactor=redactor)
    text = json.dumps(ev)
    for secret in ("hunter2", "t0k", "k-123"):
        assert secret not in text
    assert ev["context"]["note"] == "plain" and ev["context"]["nested"]["ok"] == 1
    assert ev["context"]["token"].startswith("redacted:hmac-sha256:")
    assert ev["entities"][0]["attrs"]["email"] == "a@x.org"
    # Equal secrets hash equally under one key, so auditors can still correlate.
    again = Redactor(key=KEY).apply({"context": {"token": "t0k"}})
    assert again["context"]["token"] == ev["context"]["token"]
    assert Redactor(key=b"x" * 32).apply({"context": {"token": "t0k"}}) != again
    # The request itself is untouched.
    assert req.context["nested"] == {"db_password": "hunter2", "ok": 1}


def test_configured_paths_hash_or_remove() -> None:
    req = request(approval={"ticket": "CHG-9", "approver": "bob"})
    hashed = Redactor(["context.approval.ticket", "entities.*.attrs.email"], key=KEY)
    ev = build_event("i", AT, req, ALLOW, CallMeta(), cached=False, latency_s=0, redactor=hashed)
    assert ev["context"]["approval"]["ticket"].startswith("redacted:")
    assert ev["context"]["approval"]["approver"] == "bob"
    assert ev["entities"][0]["attrs"]["email"].startswith("redacted:")
    removed = Redactor(["context.approval.ticket", "context.workflow_id"], mode="remove")
    ev = build_event("i", AT, req, ALLOW, CallMeta(), cached=False, latency_s=0, redactor=removed)
    assert "ticket" not in ev["context"]["approval"]
    assert ev["workflow_id"] == ""  # derived from the redacted context
    with pytest.raises(ConfigError):
        Redactor(["decision"])
    with pytest.raises(ConfigError):
        Redactor(["context..x"])


def test_cached_decisions_are_audited_as_such(tmp_path: Path) -> None:
    from sidecar.core.bundle import load_bundle
    from sidecar.decision.cache import DecisionCache
    from sidecar.decision.decider import Decider
    from sidecar.decision.metrics import Metrics

    (tmp_path / "all.cedar").write_text("permit(principal, action, resource);\n")
    (tmp_path / "schema.cedarschema").write_text(
        "entity User { email: String, apiKey: String };\nentity Doc;\n"
        "action read appliesTo { principal: User, resource: Doc, "
        "context: { workflow_id: String, run_id: String, step_id: String } };\n"
    )
    bundle = load_bundle(tmp_path)
    sink = MemorySink()
    cache = DecisionCache(100, 1 << 20)
    decider = Decider(sink, Metrics(), lambda: AT, redactor=Redactor(), cache=cache)
    first = decider.decide(bundle, request(), CallMeta(), at=AT, started=0.0)
    second = decider.decide(bundle, request(), CallMeta(), at=AT, started=0.0)
    assert first.result.allowed and second.result.allowed
    assert (first.cached, second.cached) == (False, True)
    assert [e["cached"] for e in sink.events] == [False, True]
    assert [e["id"] for e in sink.events] == [first.decision_id, second.decision_id]
    sink.fail_with = "disk full"
    denied = decider.decide(bundle, request(), CallMeta(), at=AT, started=0.0)
    assert denied.cached and denied.result.decision is Decision.DENY
    assert "audit trail unavailable" in denied.result.summary()
    assert "disk full" in denied.result.summary()
    assert not decider.audit_healthy


def test_every_kind_of_record_matches_the_published_schema(tmp_path: Path) -> None:
    schema_path = Path(__file__).resolve().parents[2] / "sidecar/audit/event.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))
    path = tmp_path / "audit.jsonl"
    sink = FlakyDisk(path, probe_interval_s=0.05)
    meta = CallMeta(peer="ipv4:127.0.0.1:1", identity="spiffe://x/y", trace_id="cd" * 16)
    from datetime import timedelta

    with_ttl = Result(Decision.ALLOW, (), (), Obligations(timedelta(minutes=15)), "rev")
    sink.write(build_event("d1", AT, request(), with_ttl, meta, cached=False, latency_s=0.001))
    sink.full = True
    with pytest.raises(AuditError):
        sink.write(build_event("d2", AT, request(), ALLOW, CallMeta(), cached=True, latency_s=0))
    sink.full = False
    sink.write(build_event("d3", AT, request(), ALLOW, CallMeta(), cached=True, latency_s=0))
    sink.close()
    with path.open("ab") as f:
        f.write(b'{"seq":9')
    FileSink(path).close()
    records = [json.loads(x) for x in lines_of(path)]
    assert {r["kind"] for r in records} == {"segment", "decision", "outage", "recovery", "shutdown"}
    for record in records:
        errors = [e.message for e in validator.iter_errors(record)]
        assert errors == [], (record["kind"], errors)
    bad = dict(records[1], decision="MAYBE")
    assert list(validator.iter_errors(bad))
