"""AuthZEN time bounds cannot skip the `now` clamp, whatever their form (issue 25, point 7).

With a coarse `now` granularity, `context.now` is the clock rounded down, but
never back across the request's own time bound (sidecar/core/validate.py). That clamp
must see the instant Cedar will compare: a `not_after` written as a
`datetime(...)` call with `args`, or as an `offset(...)`, was not read, so a
bound five seconds in the past was ALLOWed. Properties, drawn over every form
stepguard accepts:

- `parse_cedar_datetime` reads the instant Cedar itself reads (cedarpy is the
  oracle);
- over the real server, a `not_after` just past the clock is denied by
  `step-outside-time-bound` in every form, as over gRPC;
- forms it cannot read are refused (400) naming the field, never decided.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import cedarpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.client import StepguardClient
from sidecar.core.validate import cedar_datetime, from_ms, parse_cedar_datetime, to_ms
from tests.helpers import NOTIFIER, Running, notify_request, running_sidecar
from tests.serving.authzen.authzen_client import Pdp

CLOCK = datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)  # 30 s into a 60 s granule
GRANULE_MS = 60_000


def _text(ms: int, offset_min: int, with_millis: bool) -> str:
    """`ms` in Cedar's datetime grammar, written at a UTC offset of `offset_min`."""
    local = from_ms(ms + offset_min * 60_000)
    out = local.strftime("%Y-%m-%dT%H:%M:%S")
    if with_millis or ms % 1000:
        out += f".{local.microsecond // 1000:03d}"
    if offset_min == 0 and not with_millis:
        return out + "Z"
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return f"{out}{sign}{hours:02d}{minutes:02d}"


def _duration(ms: int, units: list[bool]) -> str:
    """`ms` in Cedar's duration grammar, using the units picked (ms always available)."""
    sign, rest, out = ("-" if ms < 0 else ""), abs(ms), ""
    for size, name, use in zip((86_400_000, 3_600_000, 60_000, 1000), "dhms", units, strict=True):
        if use and rest >= size:
            out += f"{rest // size}{name}"
            rest %= size
    if rest or not out:
        out += f"{rest}ms"
    return sign + out


def _call(fn: str, arg: Any, how: str) -> Any:
    body: dict[str, Any] = {"fn": fn, "args": [arg]} if how == "args" else {"fn": fn, "arg": arg}
    return body if how == "implicit" else {"__extn": body}


@st.composite
def datetime_forms(draw: st.DrawFn, ms: int, *, depth: int = 0) -> Any:
    """Any form stepguard accepts for the instant `ms`."""
    text = _text(
        ms, draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1) | st.just(0)), draw(st.booleans())
    )
    kinds = ["string", "arg", "args", "implicit"] + (["offset"] if depth == 0 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "string":
        return text
    if kind != "offset":
        return _call("datetime", text, kind)
    delta = draw(st.integers(-(10**10), 10**10))
    start = draw(datetime_forms(ms - delta, depth=1).filter(lambda f: not isinstance(f, str)))
    span = _duration(delta, draw(st.lists(st.booleans(), min_size=4, max_size=4)))
    how = draw(st.sampled_from(["arg", "args", "implicit"]))
    return {"__extn": {"fn": "offset", "args": [start, _call("duration", span, how)]}}


INSTANTS = st.integers(
    to_ms(datetime(1971, 1, 1, tzinfo=UTC)), to_ms(datetime(2200, 1, 1, tzinfo=UTC))
)

_SCHEMA = cedarpy.Schema.from_str(
    "entity E; action a appliesTo "
    "{ principal: E, resource: E, context: { t: datetime, u: datetime } };"
)
_SAME = "permit (principal, action, resource) when { context.t == context.u };"


def _cedar_reads_the_same(form: Any, ms: int) -> bool:
    answer = cedarpy.is_authorized(
        {
            "principal": {"type": "E", "id": "p"},
            "action": {"type": "Action", "id": "a"},
            "resource": {"type": "E", "id": "r"},
            "context": {"t": form, "u": cedar_datetime(ms)},
        },
        _SAME,
        [],
        _SCHEMA,
    )
    return answer.allowed


@settings(max_examples=300, deadline=None)
@given(data=st.data(), ms=INSTANTS)
def test_every_accepted_form_reads_the_instant_cedar_reads(data: st.DataObject, ms: int) -> None:
    form = data.draw(datetime_forms(ms))
    assert parse_cedar_datetime(form) == ms, form
    assert _cedar_reads_the_same(form, ms), f"Cedar reads {form} otherwise"


@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Pdp]]:
    tmp = tmp_path_factory.mktemp("coarse")
    with running_sidecar(
        tmp, clock=lambda: CLOCK, authzen_listen="127.0.0.1:0", now_granularity_ms=GRANULE_MS
    ) as running:
        pdp = Pdp(str(running.sidecar.endpoints.authzen))
        try:
            yield running, pdp
        finally:
            pdp.close()


def _notify(bound: dict[str, Any]) -> dict[str, Any]:
    return {
        "subject": NOTIFIER,
        "action": {"name": "notify"},
        "resource": {"type": "TargetSystem", "id": "slack"},
        "context": {"workflow_id": "onboarding", "time_bound": bound},
        "options": {"stepguard_explain": True},
    }


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), late_ms=st.integers(1, 29_999))
def test_a_passed_not_after_is_denied_in_every_form(
    coarse: tuple[Running, Pdp], data: st.DataObject, late_ms: int
) -> None:
    """The clock is past `not_after` but `now`'s granule is not: the clamp must apply."""
    _, pdp = coarse
    not_after = to_ms(CLOCK) - late_ms
    form = data.draw(datetime_forms(not_after))
    reply = pdp.evaluation(_notify({"not_after": form}))
    assert reply.status == 200, reply.text
    answer = reply.json()
    assert answer["decision"] is False, form
    ids = [p["id"] for p in answer["context"]["determining_policies"]]
    assert ids == ["step-outside-time-bound"], (form, answer)


def test_grpc_agrees_on_a_passed_not_after(coarse: tuple[Running, Pdp]) -> None:
    running, pdp = coarse
    request = notify_request()
    stamp = (CLOCK - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    request["context"]["time_bound"] = {"not_after": stamp}
    with StepguardClient(running.tcp, timeout=10) as client:
        decision = client.authorize(request)
    assert not decision.allowed and "step-outside-time-bound" in decision.reason
    form = {"__extn": {"fn": "datetime", "args": [stamp]}}
    assert pdp.evaluation(_notify({"not_after": form})).json()["decision"] is False


@pytest.mark.parametrize(
    "form",
    [
        {"__extn": {"fn": "datetime", "arg": "2026-11-25T10:00:25Z", "args": ["2026-11-26"]}},
        {"__extn": {"fn": "datetime", "args": ["2026-11-25T10:00:25Z", "x"]}},
        {"__extn": {"fn": "offset", "args": ["2026-11-25T10:00:25Z", "-5s"]}},
        {"__extn": {"fn": "offset", "args": [{"__extn": {"fn": "datetime", "arg": "2026-11-25"}}]}},
        {"__extn": {"fn": "decimal", "arg": "1.0"}},
        {"__extn": {"fn": "datetime", "arg": "2026-11-25T10:00:25+01:00"}},
        "2026-11-25 10:00:25Z",
        "0000-01-01",
        42,
        ["2026-11-25T10:00:25Z"],
    ],
    ids=repr,
)
def test_forms_stepguard_cannot_read_are_refused(coarse: tuple[Running, Pdp], form: Any) -> None:
    running, pdp = coarse
    before = len(running.audit_events())
    reply = pdp.evaluation(_notify({"not_after": form}))
    assert reply.status == 400, reply.text
    assert reply.text.startswith("context.time_bound.not_after: is not a datetime")
    assert len(running.audit_events()) == before
