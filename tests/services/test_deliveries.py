"""What a Retry-After header from another system asks for (services/deliveries.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from services.deliveries import retry_after_seconds


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (" 2.5 ", 2.5), (None, None), ("", None), ("soon", None), ("²", None), ("-3", None), ("nan", None)],
)
def test_retry_after_takes_seconds_or_a_date_and_nothing_in_it_raises(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_as_an_http_date_is_the_seconds_until_then() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 100 < (retry_after_seconds(later) or 0) <= 120
    assert retry_after_seconds("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0
