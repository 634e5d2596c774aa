"""Exponential backoff with jitter, and the retry loop every worker uses around a flaky dependency."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from runtime.errors import RetriableError

__all__ = ["MAX_RETRY_AFTER", "Backoff", "Stopped", "retry_retriable", "wait_or_stop"]

T = TypeVar("T")


MAX_RETRY_AFTER = 600.0
"""The longest wait a ``retry_after`` hint (another system's ``Retry-After``) is honoured for, in seconds."""


class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, each jittered to between half and all of it.

    The jitter spreads replicas that failed together (a database restart) so they do not retry in
    lock-step. A ``retry_after`` hint from the failing side is honoured as a lower bound, up to :data:`MAX_RETRY_AFTER`.
    """

    def __init__(self, initial: float, maximum: float, *, rng: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self.attempts = 0
        self._rng = rng

    def next_delay(self, retry_after: float | None = None) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = min(self.maximum, self.initial * 2.0**self.attempts)
        self.attempts += 1
        delay = ceiling / 2 + self._rng() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def reset(self) -> None:
        self.attempts = 0


async def retry_retriable(
    action: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff,
    stop: asyncio.Event,
    on_failure: Callable[[RetriableError], None] | None = None,
) -> T:
    """Run ``action`` until it does not raise :class:`RetriableError`, backing off between attempts.

    Raises :class:`Stopped` if ``stop`` is set while waiting, so a draining worker does not
    retry a dead dependency forever.
    """
    log = structlog.get_logger()
    while True:
        try:
            result = await action()
        except RetriableError as exc:
            delay = backoff.next_delay(exc.retry_after)
            log.warning("dependency unavailable, retrying", what=what, error=str(exc), retry_in=round(delay, 3))
            if on_failure is not None:
                on_failure(exc)
            if await wait_or_stop(stop, delay):
                raise Stopped(what) from exc
            continue
        backoff.reset()
        return result


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when it was."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class Stopped(Exception):
    """The worker was asked to stop while waiting for ``what``."""
