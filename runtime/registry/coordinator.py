"""Spreads a connector's partition groups over its live replicas and keeps their leases.

One background task per replica, one round every ``ttl/3`` but at least once a second (with jitter):

1. heartbeat this replica's membership (TTL ``ttl``) and read the live member set;
2. compute the desired owner of every group from that set by rendezvous hashing (highest
   ``hash(group, member)`` wins), so every replica agrees without talking to the others and a
   join or leave moves only the groups it must;
3. renew the groups held here; release at once those desired by another live replica (the
   rebalance); try to acquire the free groups desired here, and any group that stayed free for
   ``grace`` seconds whoever desires it (its desired owner may have died before its membership
   expired). A replica also wakes when a lease it desires expires in the store, so a group whose
   holder died is idle for at most its TTL plus a round trip or so.

The holder's side of a lease is bounded by a **local monotonic deadline**: the time the acquire or
renew request was *sent* plus ``ttl``. The store starts its own TTL when it receives the request,
later, so the deadline passes here before anyone else can take the lease. :attr:`Coordinator.owned`
and :meth:`Coordinator.lease` check that deadline on every call: a process that was paused
(SIGSTOP) or cut from the store past its TTL considers its leases lost the moment it runs again,
before its next heartbeat. A renewal refused by the store (:class:`~runtime.errors.FencedError`)
drops the group at once too.

A handover drops the group here *before* the store frees it, so two replicas never both own a
group; a checkpoint of that group still in flight is then refused (fenced) and the new owner
resumes from the previous one: duplicates, never loss.

Ownership changes are reported three ways: the ``on_change(owned)`` callback, the :attr:`changed`
event (set, then replaced, on every change) and the :attr:`lost` event (likewise, when a group was
lost rather than released; :attr:`losses` counts those). :meth:`stop` leaves the member set
first and then releases every lease, so a standby takes over on its next round instead of after a
TTL. Sinks use a Coordinator with no groups: it only heartbeats membership (for ``meshconnect
leases show`` and status). The coordinator never talks to the mesh: the worker reads
:attr:`owned` / :meth:`lease` and stops publishing a group it no longer owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from runtime.errors import FencedError, RegistryUnavailableError
from runtime.registry import Lease, Registry

__all__ = ["Coordinator", "desired_owner"]

log = structlog.get_logger()

MAX_ROUND_INTERVAL = 1.0
"""Seconds between rounds at most, whatever the TTL, so a free group waits about a second for its owner."""
EXPIRY_MARGIN = 0.02
"""Seconds after the store's expiry of another holder's lease before trying to take it."""


def desired_owner(group: str, members: Iterable[str]) -> str | None:
    """The member that should hold ``group``: rendezvous (highest random weight) hashing."""

    def weight(member: str) -> tuple[bytes, str]:
        digest = hashlib.blake2b(f"{group}\x00{member}".encode(), digest_size=8).digest()
        return digest, member

    return max(members, key=weight, default=None)


@dataclass(frozen=True, slots=True)
class _Held:
    lease: Lease
    deadline: float
    """time.monotonic() after which this replica no longer trusts the lease."""


class Coordinator:
    """Keeps the leases of ``groups`` of ``connector`` for replica ``holder``.

    ``ttl`` is the lease and membership time-to-live in seconds; ``grace`` (default ``ttl/2``, 1.5 s at most)
    how long a free group waits for its desired owner before anyone takes it; ``info`` is what
    this replica reports as a member (host, pid, version...).
    """

    def __init__(
        self,
        registry: Registry,
        connector: str,
        holder: str,
        groups: Iterable[str],
        ttl: float,
        *,
        on_change: Callable[[frozenset[str]], None] | None = None,
        info: Mapping[str, Any] | None = None,
        grace: float | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.registry = registry
        self.connector = connector
        self.holder = holder
        self.groups = tuple(dict.fromkeys(groups))
        self.ttl = ttl
        # Longer than a round, so the desired owner normally wins; short, so an idle group is rare.
        self.grace = min(ttl / 2, 1.5 * MAX_ROUND_INTERVAL) if grace is None else grace
        self.info = dict(info or {})
        self.takeovers = 0
        """Leases acquired with a new fencing token on a group that had a lease before."""
        self.losses = 0
        """Groups lost (fenced, or local deadline passed), as opposed to released."""
        self._on_change = on_change
        self._held: dict[str, _Held] = {}
        self._free_since: dict[str, float] = {}
        self._expiring: dict[str, float] = {}
        """Groups desired here but held elsewhere -> when the store says that lease expires (monotonic)."""
        self._reported: frozenset[str] = frozenset()
        self._changed = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- what the worker reads -----------------------------------------------------------------

    @property
    def owned(self) -> frozenset[str]:
        """The groups held right now (local deadline not passed)."""
        now = time.monotonic()
        return frozenset(group for group, held in self._held.items() if held.deadline > now)

    def lease(self, group: str) -> Lease | None:
        """The lease to commit ``group``'s offsets under, or ``None`` if it is not held now."""
        held = self._held.get(group)
        if held is None or held.deadline <= time.monotonic():
            return None
        return held.lease

    @property
    def changed(self) -> asyncio.Event:
        """Set when ownership changes; a fresh event replaces it right after, so read it before waiting."""
        return self._changed

    @property
    def lost(self) -> asyncio.Event:
        """Set when a group is lost (fenced, or its deadline passed), as opposed to released."""
        return self._lost

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the first round now (so a lone replica owns its groups on return) and then in the background.

        A store that cannot be reached does not fail the start: the background task keeps trying.
        """
        try:
            async with asyncio.timeout(self.ttl):
                await self._round()
        except (RegistryUnavailableError, TimeoutError) as exc:
            log.warning(
                "registry unavailable, will retry", connector=self.connector, holder=self.holder, error=str(exc) or "timeout"
            )
        self._task = asyncio.create_task(self._run(), name=f"coordinator-{self.connector}-{self.holder}")

    async def stop(self) -> None:
        """Leave the member set and release every lease, so standbys take over at once."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        held = list(self._held.values())
        self._held.clear()
        self._notify(lost=False)
        try:
            async with asyncio.timeout(self.ttl):
                await self.registry.heartbeat_member(self.connector, self.holder, 0, self.info)
                for entry in held:
                    await self.registry.release(entry.lease)
        except (RegistryUnavailableError, TimeoutError) as exc:
            log.warning("could not release leases; they expire by TTL", connector=self.connector, error=str(exc))

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        # Checked as well as cancelled: on 3.11 a cancel racing an expiring asyncio.timeout can
        # surface as TimeoutError and be lost, e.g. when a paused process wakes up.
        while not self._stopping:
            await self._sleep_until_next_round()
            try:
                async with asyncio.timeout(self.ttl):
                    await self._round()
            except (RegistryUnavailableError, TimeoutError) as exc:
                log.warning("registry round failed", connector=self.connector, holder=self.holder, error=str(exc) or "timeout")
            self._expire()

    async def _sleep_until_next_round(self) -> None:
        interval = min(self.ttl / 3, MAX_ROUND_INTERVAL) * random.uniform(0.7, 1.0)
        now = time.monotonic()
        # Wake at one of our deadlines too, so a lost lease is reported when it is lost, and when a
        # lease we should hold expires elsewhere, so a dead holder is replaced as soon as possible.
        wake_ups = [held.deadline - now for held in self._held.values()] + [at - now for at in self._expiring.values()]
        await asyncio.sleep(max(0.0, min([interval, *wake_ups])))
        self._expire()

    async def _round(self) -> None:
        self._expire()
        await self.registry.heartbeat_member(self.connector, self.holder, self.ttl, self.info)
        if not self.groups:
            return
        members = set(await self.registry.members(self.connector)) | {self.holder}
        leases = {info.group: info for info in await self.registry.leases(self.connector)}
        self._expiring.clear()
        for group in self.groups:
            desired = desired_owner(group, members)
            current = leases.get(group)
            if group in self._held:
                await self._keep_or_hand_over(group, desired)
            elif current is None or current.holder in (None, self.holder):
                # Ours in the store but dropped here (deadline passed on a slow round): taking it
                # back keeps its token, which is safe since the worker restarts from the checkpoint.
                await self._maybe_acquire(group, desired)
            else:
                self._free_since.pop(group, None)
                if desired == self.holder and current.ttl_left is not None:
                    self._expiring[group] = time.monotonic() + current.ttl_left + EXPIRY_MARGIN

    async def _keep_or_hand_over(self, group: str, desired: str | None) -> None:
        held = self._held[group]
        if desired != self.holder:
            # Drop it here before the store frees it, so two replicas never own it at once.
            del self._held[group]
            self._notify(lost=False)
            await self.registry.release(held.lease)
            log.info("lease handed over", connector=self.connector, group=group, holder=self.holder, to=desired)
            return
        sent = time.monotonic()
        try:
            await self.registry.renew(held.lease, self.ttl)
        except FencedError:
            self._drop(group, reason="fenced")
            return
        self._held[group] = _Held(held.lease, sent + self.ttl)

    async def _maybe_acquire(self, group: str, desired: str | None) -> None:
        now = time.monotonic()
        free_since = self._free_since.setdefault(group, now)
        if desired != self.holder and now - free_since < self.grace:
            return
        lease = await self.registry.try_acquire(self.connector, group, self.holder, self.ttl)
        if lease is None:
            return
        self._free_since.pop(group, None)
        self._held[group] = _Held(lease, now + self.ttl)
        if lease.token > 1:
            self.takeovers += 1
        log.info("lease acquired", connector=self.connector, group=group, holder=self.holder, token=lease.token)
        self._notify(lost=False)

    def _expire(self) -> None:
        now = time.monotonic()
        for group in [group for group, held in self._held.items() if held.deadline <= now]:
            self._drop(group, reason="deadline passed")

    def _drop(self, group: str, *, reason: str) -> None:
        held = self._held.pop(group, None)
        if held is not None:
            log.warning(
                "lease lost", connector=self.connector, group=group, holder=self.holder, token=held.lease.token, reason=reason
            )
            self.losses += 1
            self._notify(lost=True)

    def _notify(self, *, lost: bool) -> None:
        owned = frozenset(self._held)
        if lost:
            self._lost.set()
            self._lost = asyncio.Event()
        if owned == self._reported:
            return
        self._reported = owned
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change(owned)
