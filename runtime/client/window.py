"""The publish window: how many messages may await their ack at once, and who waits for room."""

from __future__ import annotations

import asyncio
from collections import deque

from runtime.errors import MeshUnavailableError

__all__ = ["PublishWindow"]


class PublishWindow:
    """At most ``size`` messages await an ack; who finds the window full waits for room, oldest first.

    A freed slot goes straight to the oldest waiter rather than back to the counter, and
    :meth:`try_take` refuses while anyone waits, so a late publisher cannot overtake a waiting one.
    """

    __slots__ = ("_waiters", "in_flight", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        """Take a slot if one is free now and nobody waits for one (no coroutine: the common case)."""
        if self.in_flight >= self.size or self._waiters:
            return False
        self.in_flight += 1
        return True

    async def take(self, within: float) -> None:
        """Wait up to ``within`` seconds for a slot (MeshUnavailableError when none comes free)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(within):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as we gave up: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise MeshUnavailableError(
                    f"publish window of {self.size} stayed full for {within}s: the mesh is not acking"
                ) from exc
            raise

    def release(self) -> None:
        """Give back the slot of a message that was answered, failed or expired."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the next publisher
                return
        self.in_flight -= 1
