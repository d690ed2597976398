"""Value forms the engine hands to Cedar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sidecar.core.validate import datetime_text


def test_cedar_datetime_text_pads_every_field() -> None:
    assert datetime_text(datetime(2026, 11, 25, 16, 5, 3, 123456, tzinfo=UTC)) == (
        "2026-11-25T16:05:03.123Z"
    )
    assert datetime_text(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000Z"
    plus_two = timezone(timedelta(hours=2))
    assert datetime_text(datetime(2026, 1, 1, 1, 0, tzinfo=plus_two)) == "2025-12-31T23:00:00.000Z"
