"""A joiner-and-leaver story written as real trails, for the evidence tests.

Decision events are built by the sidecar's own `build_event` from requests read
as the sidecar reads them (JSON form, protobuf, `request_from_proto`), outcome
events by its `build_outcome_event` after its own checks and judgement
(tests/evidence/outcome_events.py), and both are written by the real sinks
(`open_sink`): one sidecar with a rotated trail, another with two workers'
chains, as `stepguard evidence` would find them on a fleet.

The story (Monday 2 November 2026 onwards; @revoke_within PT24H on grants):
- onboarding runs give alice and bob `admin` on github and `dev` on jira, carol
  `read` on github (under a break-glass approval) and a vault token that
  expires an hour later and is never revoked;
- alice leaves on Wednesday 17:00: jira is revoked after one timed-out
  attempt (a retry); github only on Thursday 23:00, 6 hours after its deadline;
- bob leaves on Wednesday 18:00: the revocation on github is denied (the step
  is skipped) and the one on jira fails; a notify step that was denied ran
  anyway (a violation). Bob is the one incomplete leaver.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sidecar.audit.sink import open_sink
from sidecar.core.bundle import Bundle, load_bundle
from sidecar.core.event import CallMeta, build_event
from sidecar.core.jsonreq import request_from_json
from sidecar.core.model import AuthzRequest, Decision, EntityUid, Obligations, PolicyRef, Result
from sidecar.core.validate import Limits, request_from_proto
from tests.evidence.outcome_events import effect, outcome_event
from tests.helpers import POLICIES

MON = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 9, 9, 0, tzinfo=UTC)
PROVISIONER = EntityUid("Workload", "spiffe://example.org/ns/identity/sa/provisioner")
SENSITIVITY = {"github": "high", "jira": "medium", "vault": "high", "slack": "low"}


def decision_event(
    at: datetime,
    action: str,
    target: str,
    workflow: str,
    run: str,
    step: str,
    *,
    allow: bool = True,
    approver: str = "ines",
    ticket: str = "CHG-1",
    revoke_within: timedelta | None = timedelta(hours=24),
    not_after: datetime | None = None,
) -> dict[str, Any]:
    """A decision event as the sidecar writes it (build_event)."""
    context: dict[str, Any] = {
        "requester": {"type": "User", "id": "maria"},
        "workflow_id": workflow,
        "run_id": run,
        "step_id": step,
        "sensitivity": SENSITIVITY.get(target, "low"),
    }
    if approver:
        context["approval"] = {
            "approver": {"type": "User", "id": approver},
            "approved_at": "2026-11-01T09:00:00Z",
            "ticket": ticket,
        }
    if not_after is not None:
        context["time_bound"] = {"not_after": not_after.isoformat().replace("+00:00", "Z")}
    request = _translated(
        {
            "principal": PROVISIONER.to_json(),
            "action": {"type": "Action", "id": action},
            "resource": {"type": "TargetSystem", "id": target},
            "context": context,
        },
        at,
    )
    result = Result(
        Decision.ALLOW if allow else Decision.DENY,
        (PolicyRef("p", {"id": "p"}, "policies/p.cedar:1"),) if allow else (),
        (),
        Obligations(revoke_within=revoke_within if allow else None),
        "rev-1",
    )
    return build_event(
        str(uuid.uuid4()), at, request, result, CallMeta(), cached=False, latency_s=0
    )


@functools.cache
def _bundle() -> Bundle:
    return load_bundle(POLICIES)


def _translated(data: dict[str, Any], at: datetime) -> AuthzRequest:
    """The request as the sidecar reads it (JSON form -> protobuf -> checked model), so the
    event records its context as the server's do: entity references as `__entity`,
    instants as `__extn` datetimes, `now` added."""
    return request_from_proto(request_from_json(data), _bundle(), Limits(), now=at)


@dataclass
class Story:
    """Events in the order they happened; `write` puts them on real trails."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def decide(self, at: datetime, *args: Any, **kw: Any) -> dict[str, Any]:
        event = decision_event(at, *args, **kw)
        self.events.append(event)
        return event

    def outcome(
        self, decision: dict[str, Any] | None, at: datetime, status: str, **kw: Any
    ) -> None:
        self.events.append(outcome_event(decision, at, status, **kw))

    def step(
        self, at: datetime, action: str, target: str, wf: str, run: str, identity: str, **eff: Any
    ) -> dict[str, Any]:
        """An allowed step that succeeded a minute after its decision."""
        d = self.decide(at, action, target, wf, run, f"{action}-{target}")
        self.outcome(
            d, at + timedelta(minutes=1), "succeeded", effect=effect(identity, target, **eff)
        )
        return d

    def write(self, root: Path, *, rotate_bytes: int = 4000) -> list[Path]:
        """Two sidecars' trails: `root/a` (one rotated chain) and `root/b` (two workers)."""
        a, b = root / "a", root / "b"
        sinks = [
            open_sink(str(a / "audit.jsonl"), rotate_bytes=rotate_bytes),
            open_sink(str(b / "audit.jsonl"), worker=0, workers=2),
            open_sink(str(b / "audit.jsonl"), worker=1, workers=2),
        ]
        try:
            ordered = sorted(self.events, key=lambda e: e.get("finished_at") or e["time"])
            for i, event in enumerate(ordered):
                sinks[i % len(sinks)].write(event)
        finally:
            for sink in sinks:
                sink.close()
        return [a, b]


def joiner_leaver_story() -> Story:
    s = Story()
    h = timedelta(hours=1)
    for i, who in enumerate(("alice", "bob")):
        at = MON + i * 10 * timedelta(minutes=1)
        s.step(at, "grant_access", "github", "onboarding", f"j-{who}", who, added=("admin",))
        s.step(
            at + 5 * timedelta(minutes=1),
            "grant_access",
            "jira",
            "onboarding",
            f"j-{who}",
            who,
            added=("dev",),
        )
    at = MON + 30 * timedelta(minutes=1)
    d = s.decide(at, "grant_access", "github", "onboarding", "j-carol", "grant", ticket="BG-7")
    s.outcome(
        d, at + timedelta(minutes=1), "succeeded", effect=effect("carol", "github", added=("read",))
    )
    at += 5 * timedelta(minutes=1)
    s.step(
        at,
        "issue_credential",
        "vault",
        "onboarding",
        "j-carol",
        "carol",
        credential="tok-c1",
        change="issued",
        issued_at=at,
        expires_at=at + h,
    )

    wed = MON + timedelta(days=2, hours=8)  # Wednesday 17:00
    first = s.decide(wed, "lookup_identity", "hr", "leaver", "l-alice", "lookup", approver="")
    s.outcome(first, wed + timedelta(minutes=1), "succeeded", effect=effect("alice"))
    d = s.decide(wed + timedelta(minutes=2), "revoke_access", "jira", "leaver", "l-alice", "jira")
    s.outcome(
        d,
        wed + timedelta(minutes=5),
        "timed_out",
        error_class="TargetTimeout",
        attempt=1,
        effect=effect("alice", "jira", removed=("dev",)),
    )
    s.outcome(
        d,
        wed + timedelta(minutes=10),
        "succeeded",
        attempt=2,
        effect=effect("alice", "jira", removed=("dev",)),
    )
    d = s.decide(wed + timedelta(minutes=3), "revoke_access", "github", "leaver", "l-alice", "gh")
    s.outcome(
        d,
        wed + timedelta(days=1, hours=6),
        "succeeded",
        effect=effect("alice", "github", removed=("admin",)),
    )

    bob = wed + h  # Wednesday 18:00
    first = s.decide(bob, "lookup_identity", "hr", "leaver", "l-bob", "lookup", approver="")
    s.outcome(first, bob + timedelta(minutes=1), "succeeded", effect=effect("bob"))
    d = s.decide(
        bob + timedelta(minutes=2),
        "revoke_access",
        "github",
        "leaver",
        "l-bob",
        "gh",
        allow=False,
        approver="",
    )
    s.outcome(d, bob + timedelta(minutes=3), "skipped")
    d = s.decide(bob + timedelta(minutes=4), "revoke_access", "jira", "leaver", "l-bob", "jira")
    s.outcome(
        d,
        bob + timedelta(minutes=6),
        "failed",
        error_class="TargetUnavailable",
        effect=effect("bob", "jira", removed=("dev",)),
    )
    d = s.decide(
        bob + timedelta(minutes=7),
        "notify",
        "slack",
        "leaver",
        "l-bob",
        "notify",
        allow=False,
        approver="",
    )
    s.outcome(d, bob + timedelta(minutes=8), "succeeded", violation="decision_denied")
    return s
