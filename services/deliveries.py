"""Sinks that deliver each record by a call of its own, many at once (http-sink, knative-sink, mcp-sink):
the outcomes of one batch's calls become what ``put`` returns."""

from __future__ import annotations

from collections.abc import Sequence

from runtime import Rejection, RetriableError

__all__ = ["Outcome", "settled"]

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
