"""Value forms the engine hands to Cedar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import cedarpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.authoring.refs import resolve
from sidecar.core.bundle import load_bundle
from sidecar.core.model import EntityUid, cedar_unescape
from sidecar.core.validate import datetime_text
from tests.helpers import POLICIES

BUNDLE = load_bundle(POLICIES)


def test_cedar_datetime_text_pads_every_field() -> None:
    assert datetime_text(datetime(2026, 11, 25, 16, 5, 3, 123456, tzinfo=UTC)) == (
        "2026-11-25T16:05:03.123Z"
    )
    assert datetime_text(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000Z"
    plus_two = timezone(timedelta(hours=2))
    assert datetime_text(datetime(2026, 1, 1, 1, 0, tzinfo=plus_two)) == "2025-12-31T23:00:00.000Z"


@settings(max_examples=300, deadline=None)
@given(ident=st.text(max_size=12), other=st.text(max_size=12))
def test_an_entity_reference_prints_as_cedar_names_it_and_printably(ident: str, other: str) -> None:
    """`str(EntityUid)` is printable whatever the id holds (a request's id reaches
    messages and logs through it), and stays Cedar's own text for that entity: a
    policy naming `str(uid)` applies to exactly that id."""
    uid = EntityUid("User", ident)
    text = str(uid)
    assert text.isprintable()
    policies = cedarpy.PolicySet.from_str(f"permit(principal == {text}, action, resource);")

    def allowed(who: str) -> bool:
        request = {
            "principal": {"type": "User", "id": who},
            "action": {"type": "Action", "id": "read"},
            "resource": {"type": "Doc", "id": "d"},
            "context": {},
        }
        return bool(cedarpy.is_authorized(request, policies, []).allowed)

    assert allowed(ident)
    assert allowed(other) == (other == ident)
    # And read back (the CLI's `Type::"id"`, test suites, residuals): the same id.
    assert resolve(text, "--principal", BUNDLE, None) == {"type": "User", "id": ident}
    assert cedar_unescape(text[len('User::"') : -1]) == ident
    assert EntityUid.parse(text) == uid
