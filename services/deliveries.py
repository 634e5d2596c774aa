"""Calls to other systems' HTTP APIs: what a ``Retry-After`` asks, and, for sinks that deliver each record
by a call of its own, many at once (http-sink, knative-sink, mcp-sink), what ``put`` returns for a batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from runtime import Rejection, RetriableError

__all__ = ["Outcome", "retry_after_seconds", "settled"]

Outcome = Rejection | RetriableError | None
"""One call's end: refused for its data (dead-lettered), failed for a reason that may pass, or delivered."""


def settled(outcomes: Sequence[Outcome], what: str) -> list[Rejection]:
    """The rejections among ``outcomes``; one :class:`RetriableError` when any call failed (the batch is put
    again), with the longest ``Retry-After`` any of them asked for. ``what`` names the calls (``"requests"``)."""
    failures = [outcome for outcome in outcomes if isinstance(outcome, RetriableError)]
    if failures:
        hints = [failure.retry_after for failure in failures if failure.retry_after is not None]
        raise RetriableError(
            f"{len(failures)} of {len(outcomes)} {what} failed, first: {failures[0]}",
            retry_after=max(hints) if hints else None,
        )
    return [outcome for outcome in outcomes if isinstance(outcome, Rejection)]


def retry_after_seconds(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None when absent or not
    one of those (the header is the other system's text: nothing in it may raise)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
