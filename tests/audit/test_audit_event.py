"""A cache hit's audit event, stamped from the cached decision's template, is the event
`build_event` would have built for it: same bytes in the trail, whatever the request,
the redaction settings and the caller."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.audit.chain import canonical
from sidecar.audit.redact import Redactor
from sidecar.core.event import PER_CALL, CallMeta, build_event, stamp, template, timestamp
from sidecar.core.model import (
    AuthzRequest,
    Decision,
    EntityData,
    EntityUid,
    EvalError,
    Obligations,
    PolicyRef,
    Result,
)

NAMES = ["token", "api_key", "note", "approval", "ticket", "email", "x", "__extn", "Password"]
# Values that look like secrets (redact.py rule 2) beside arbitrary text.
SECRETISH = ["Bearer abcdefghijklmnop0123", "AKIAIOSFODNN7EXAMPLE", "x://u:p@h"]
scalars = st.one_of(
    st.text(max_size=8), st.sampled_from(SECRETISH), st.integers(-5, 5), st.booleans()
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)
    ),
    max_leaves=12,
)
contexts = st.dictionaries(st.sampled_from(["workflow_id", "run_id", "now", *NAMES]), values)
# Paths that reach no per-call field (the decider stamps hits only then).
PATHS = ["context.approval.ticket", "context.*", "entities.*.attrs.email", "principal.id", "reason"]
results = st.sampled_from(
    [
        Result(Decision.ALLOW, (PolicyRef("p1", {"id": "p1"}, "a:1"),), (), Obligations(), "r"),
        Result(
            Decision.DENY,
            (),
            (EvalError("p2", "boom"),),
            Obligations(max_credential_ttl=timedelta(minutes=15)),
            "r",
        ),
    ]
)
metas = st.builds(
    CallMeta,
    peer=st.sampled_from(["", "ipv4:127.0.0.1:5000", "unix:/run/s.sock"]),
    identity=st.sampled_from(["", "spiffe://example.org/ns/a/sa/w"]),
    trace_id=st.sampled_from(["", "ab" * 16]),
    request_id=st.sampled_from(["", "req-42", "x" * 128, *SECRETISH]),
)
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def _request(context: dict[str, Any], attrs: dict[str, Any]) -> AuthzRequest:
    return AuthzRequest(
        principal=EntityUid("Workload", "w"),
        action=EntityUid("Action", "grant_access"),
        resource=EntityUid("TargetSystem", "jira"),
        context=context,
        entities=(EntityData(EntityUid("User", "u"), attrs),),
    )


@settings(max_examples=300, deadline=None)
@given(
    context=contexts,
    attrs=st.dictionaries(st.sampled_from(NAMES), values, max_size=3),
    result=results,
    first=metas,
    later=metas,
    paths=st.lists(st.sampled_from(PATHS), max_size=3, unique=True),
    mode=st.sampled_from(["hash", "remove"]),
    new_now=st.one_of(st.none(), st.just({"__extn": {"fn": "datetime", "arg": "2026-12-01"}})),
    seconds=st.integers(0, 10**6),
)
def test_a_stamped_hit_event_is_the_event_built_for_it(
    context: dict[str, Any],
    attrs: dict[str, Any],
    result: Result,
    first: CallMeta,
    later: CallMeta,
    paths: list[str],
    mode: str,
    new_now: Any,
    seconds: int,
) -> None:
    redactor = Redactor(paths, mode=mode, key=b"k" * 32)
    assert not redactor.touches(PER_CALL)
    if new_now is not None and redactor.touches(("context",)):
        new_now = None  # the decider builds such hits anew (decider.py `_stamp_now`)
    request = _request(context, attrs)
    miss = build_event(
        "id-1", AT, request, result, first, cached=False, latency_s=0.001, redactor=redactor
    )
    at = AT + timedelta(seconds=seconds)
    hit = stamp(template(miss), "id-2", at, later, latency_s=0.0002, now=new_now)
    if new_now is not None:
        request = _request({**context, "now": new_now}, attrs)
    built = build_event(
        "id-2", at, request, result, later, cached=True, latency_s=0.0002, redactor=redactor
    )
    if redactor.stampable(later.request_id):
        assert hit == built
        assert canonical(hit) == canonical(built)
    else:  # a secret-looking request id: the decider builds such hits anew
        assert hit != built and built.get("request_id") != later.request_id


def test_paths_that_reach_per_call_fields_are_noticed() -> None:
    assert Redactor(["caller.identity"]).touches(PER_CALL)
    assert Redactor(["*.peer"]).touches(PER_CALL)
    assert Redactor(["trace_id"]).touches(PER_CALL)
    assert not Redactor(["context.ticket"]).touches(PER_CALL)
    assert Redactor(["context.ticket"]).touches(["context"])


@settings(max_examples=300)
@given(
    at=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), UTC]),
    )
)
def test_the_event_time_is_isoformat_in_utc(at: datetime) -> None:
    """The hand-formatted event time is exactly what isoformat gave (trail bytes unchanged)."""
    assert timestamp(at) == at.astimezone(UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )
