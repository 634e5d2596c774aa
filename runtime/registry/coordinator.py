"""Spreads a connector's partition groups over its live replicas and keeps their leases.

One background task per replica, one round every ``ttl/3`` but at least once a second (with jitter):

1. heartbeat this replica's membership (TTL ``ttl``) and read the live member set and the leases;
2. plan an owner for every group (:func:`plan_owners`). Ownership is sticky: a group held by a
   live member stays with it. A free group, or one whose holder is no longer a member, goes to
   the least loaded member (ties broken by rendezvous hashing); then, while one member holds two
   groups or more than another, a group moves from the most to the least loaded. Every replica
   computes the same plan from the same store, without talking to the others;
3. renew the groups held here; hand over those the plan gives another member (below); acquire the
   free groups planned here, and any group that stayed free for ``grace`` seconds whoever it is
   planned for (that member may have died before its membership expired). A replica also wakes
   when the lease of a dead holder's group planned here expires in the store, so such a group is
   idle for at most its TTL plus a round trip or so.

**Hand-over, in order.** A group planned elsewhere is not released at once: it stays held and
renewed, it leaves :attr:`assigned` (the worker stops taking new work for it), the worker finishes
its in-flight work and commits it under the lease it still holds, and then calls
:meth:`hand_over`, which releases the lease. The new owner, waiting for that release (or the
lease's expiry), acquires it on its next round and resumes from that last commit: nothing is
published twice. A worker that does not call :meth:`hand_over` within ``handover_timeout`` gets
the lease released anyway; then what it had in flight is fenced and published again by the new
owner (duplicates, never loss). Groups move only to balance the load, so a replica back from a
pause (SIGSTOP) or a partition finds its groups held and renewed by the replica that took them
over, and stands by; balancing gives it groups later, through the same hand-over.

The holder's side of a lease is bounded by a **local monotonic deadline**: the time the acquire or
renew request was *sent* plus ``ttl``. The store starts its own TTL when it receives the request,
later, so the deadline passes here before anyone else can take the lease. :attr:`Coordinator.owned`
and :meth:`Coordinator.lease` check that deadline on every call: a process that was paused
(SIGSTOP) or cut from the store past its TTL considers its leases lost the moment it runs again,
before its next heartbeat. A renewal refused by the store (:class:`~runtime.errors.FencedError`)
drops the group at once too. Either way the store's fencing refuses any commit made under a lease
that is no longer current, whatever this process believes.

Ownership changes are reported three ways: the ``on_change(owned)`` callback and the
:attr:`changed` event (set, then replaced), both on every change of :attr:`owned` or
:attr:`assigned`, and the :attr:`lost` event (likewise, when a group was lost rather than
released; :attr:`losses` counts those). :meth:`stop` leaves the member set first and then
releases every lease, so a standby takes over on its next round instead of after a TTL. Sinks use
a Coordinator with no groups: it only heartbeats membership (for ``meshconnect leases show`` and
status). The coordinator never talks to the mesh: the worker reads :attr:`assigned` /
:meth:`lease` and stops publishing a group it no longer owns.
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

__all__ = ["Coordinator", "plan_owners"]

log = structlog.get_logger()

MAX_ROUND_INTERVAL = 1.0
"""Seconds between rounds at most, whatever the TTL, so a free group waits about a second for its owner."""
EXPIRY_MARGIN = 0.02
"""Seconds after the store's expiry of another holder's lease before trying to take it."""


def _weight(group: str, member: str) -> tuple[bytes, str]:
    """Rendezvous (highest random weight) hashing: how much ``member`` is drawn to ``group``."""
    return hashlib.blake2b(f"{group}\x00{member}".encode(), digest_size=8).digest(), member


def plan_owners(groups: Iterable[str], members: Iterable[str], holders: Mapping[str, str]) -> dict[str, str]:
    """The owner each of ``groups`` should have among the live ``members``; empty without members.

    ``holders`` says who holds which group now; a holder that is not a live member counts as none.
    A held group keeps its holder, a group without one goes to the least loaded member (rendezvous
    hashing among equals), and while two members differ by more than one group, the most loaded
    gives the least loaded the group that hashes closest to it. Only those moves change a holder.
    """
    live = sorted(set(members))
    if not live:
        return {}
    load = dict.fromkeys(live, 0)
    plan: dict[str, str] = {}
    unheld: list[str] = []
    for group in dict.fromkeys(groups):
        holder = holders.get(group)
        if holder in load:
            plan[group] = holder
            load[holder] += 1
        else:
            unheld.append(group)
    for group in sorted(unheld):
        owner = _least_loaded(group, live, load)
        plan[group] = owner
        load[owner] += 1
    while True:
        heaviest = max(live, key=lambda member: (load[member], member))
        lightest = min(live, key=lambda member: (load[member], member))
        if load[heaviest] - load[lightest] <= 1:
            return plan
        moving = max((group for group, owner in plan.items() if owner == heaviest), key=lambda group: _weight(group, lightest))
        plan[moving] = lightest
        load[heaviest] -= 1
        load[lightest] += 1


def _least_loaded(group: str, members: list[str], load: Mapping[str, int]) -> str:
    fewest = min(load[member] for member in members)
    return max((member for member in members if load[member] == fewest), key=lambda member: _weight(group, member))


@dataclass(frozen=True, slots=True)
class _Held:
    lease: Lease
    deadline: float
    """time.monotonic() after which this replica no longer trusts the lease."""


class Coordinator:
    """Keeps the leases of ``groups`` of ``connector`` for replica ``holder``.

    ``ttl`` is the lease and membership time-to-live in seconds; ``grace`` (default ``ttl/2``, 1.5 s at most)
    how long a free group waits for its planned owner before anyone takes it; ``handover_timeout``
    (default ``ttl``; 0 for a caller that has no work in flight) how long a group given away waits
    for :meth:`hand_over` before its lease is released anyway; ``info`` is what this replica reports
    as a member (host, pid, version...).
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
        handover_timeout: float | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.registry = registry
        self.connector = connector
        self.holder = holder
        self.groups = tuple(dict.fromkeys(groups))
        self.ttl = ttl
        # Longer than a round, so the planned owner normally wins; short, so an idle group is rare.
        self.grace = min(ttl / 2, 1.5 * MAX_ROUND_INTERVAL) if grace is None else grace
        self.handover_timeout = ttl if handover_timeout is None else handover_timeout
        self.info = dict(info or {})
        self.takeovers = 0
        """Leases acquired with a new fencing token on a group that had a lease before."""
        self.losses = 0
        """Groups lost (fenced, or local deadline passed), as opposed to released."""
        self._on_change = on_change
        self._held: dict[str, _Held] = {}
        self._leaving: dict[str, float] = {}
        """Held groups being handed over -> since when (monotonic)."""
        self._free_since: dict[str, float] = {}
        self._expiring: dict[str, float] = {}
        """Groups planned here but held by a dead replica -> when the store says that lease expires (monotonic)."""
        self._reported: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._changed = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- what the worker reads -----------------------------------------------------------------

    @property
    def owned(self) -> frozenset[str]:
        """The groups held right now (local deadline not passed), those being handed over included."""
        now = time.monotonic()
        return frozenset(group for group, held in self._held.items() if held.deadline > now)

    @property
    def assigned(self) -> frozenset[str]:
        """The groups to work on: owned and not being handed over."""
        return self.owned - self._leaving.keys()

    @property
    def handing_over(self) -> frozenset[str]:
        """Owned groups given to another replica: finish their work, commit, then call :meth:`hand_over`."""
        return self.owned & self._leaving.keys()

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

    async def hand_over(self, groups: Iterable[str] | None = None) -> None:
        """Release the groups being handed over (those of ``groups`` only, if given). Call it when no
        work on them is in flight any more (what was acknowledged is committed): the new owner
        resumes from that commit."""
        chosen = None if groups is None else frozenset(groups)
        leaving = [group for group in self._leaving if chosen is None or group in chosen]
        if leaving:
            await self._release(leaving, reason="handed over")

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
        self._leaving.clear()
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
        # dead holder's lease planned here expires, so that group is taken over as soon as possible.
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
        holders = {group: info.holder for group, info in leases.items() if info.holder is not None}
        plan = plan_owners(self.groups, members, holders)
        self._expiring.clear()
        for group in self.groups:
            planned = plan[group]
            current = leases.get(group)
            if group in self._held:
                await self._keep_or_hand_over(group, planned)
            elif current is None or current.holder in (None, self.holder):
                # Ours in the store but dropped here (deadline passed on a slow round): taking it
                # back keeps its token, which is safe since the worker restarts from the checkpoint.
                await self._maybe_acquire(group, planned)
            else:
                self._free_since.pop(group, None)
                if current.holder not in members and planned == self.holder and current.ttl_left is not None:
                    self._expiring[group] = time.monotonic() + current.ttl_left + EXPIRY_MARGIN

    async def _keep_or_hand_over(self, group: str, planned: str) -> None:
        held = self._held[group]
        if planned != self.holder and group not in self._leaving:
            self._leaving[group] = time.monotonic()
            log.info("handing lease over", connector=self.connector, group=group, holder=self.holder, to=planned)
            self._notify(lost=False)
        elif planned == self.holder and group in self._leaving:
            del self._leaving[group]  # the plan changed back (the other replica left, say): keep working on it
            self._notify(lost=False)
        since = self._leaving.get(group)
        if since is not None and time.monotonic() - since >= self.handover_timeout:
            if self.handover_timeout > 0:
                log.warning(
                    "hand-over not confirmed in time: lease released anyway, work in flight will be repeated",
                    connector=self.connector,
                    group=group,
                    holder=self.holder,
                    waited=round(time.monotonic() - since, 3),
                )
            await self._release([group], reason="hand-over timed out")
            return
        sent = time.monotonic()
        try:
            await self.registry.renew(held.lease, self.ttl)
        except FencedError:
            if self._held.get(group) is held:
                self._drop(group, reason="fenced")
            return
        if self._held.get(group) is held:  # not released by hand_over() meanwhile
            self._held[group] = _Held(held.lease, sent + self.ttl)

    async def _release(self, groups: list[str], *, reason: str) -> None:
        """Drop ``groups`` here *before* the store frees them, so two replicas never own one at once."""
        released = [self._held.pop(group) for group in groups if group in self._held]
        for group in groups:
            self._leaving.pop(group, None)
            # Their new owner is a live member that may just be slow to come round: it gets a whole
            # TTL (by then its membership is gone if it died), not the grace, before they come back here.
            self._free_since[group] = time.monotonic() + max(0.0, self.ttl - self.grace)
        self._notify(lost=False)
        try:
            async with asyncio.timeout(self.ttl):
                for held in released:
                    await self.registry.release(held.lease)
                    log.info("lease released", connector=self.connector, group=held.lease.group, reason=reason)
        except (RegistryUnavailableError, TimeoutError) as exc:
            log.warning("could not release a lease; it expires by TTL", connector=self.connector, error=str(exc) or "timeout")

    async def _maybe_acquire(self, group: str, planned: str) -> None:
        now = time.monotonic()
        free_since = self._free_since.setdefault(group, now)
        if planned != self.holder and now - free_since < self.grace:
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
        self._leaving.pop(group, None)
        if held is not None:
            log.warning(
                "lease lost", connector=self.connector, group=group, holder=self.holder, token=held.lease.token, reason=reason
            )
            self.losses += 1
            self._notify(lost=True)

    def _notify(self, *, lost: bool) -> None:
        owned = frozenset(self._held)
        state = (owned, owned - self._leaving.keys())
        if lost:
            self._lost.set()
            self._lost = asyncio.Event()
        if state == self._reported:
            return
        self._reported = state
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change(owned)
