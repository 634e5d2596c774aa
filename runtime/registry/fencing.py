"""Commit versions: why an offset never moves backwards although offsets are opaque.

The store cannot compare two offsets (they are the source's own JSON), so every committed
partition also records the *version* of the commit that wrote it: the partition group, the fencing
token of the lease it was made under and a per-lease commit counter kept by the committing process.
A commit writes a partition only if its version supersedes the stored one:

* same group: ``(token, counter)`` must be strictly greater, so a commit that arrives late
  (retried, reordered on another connection) after a newer one of the same lease is ignored for
  that partition, and nothing written under an older lease can ever win again;
* another group (the source moved the partition), or no stored version (first commit, or an
  operator ``offsets set/reset/import``, which clears versions): the commit writes.

The lease check comes first and is separate: a commit whose token is not the group's current
token is refused whole with :class:`~runtime.errors.FencedError`. The version rule only orders
commits that all passed it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from runtime.errors import FencedError
from runtime.registry import Lease

__all__ = ["CommitCounter", "CommitVersion", "LeaseHeldError"]


class LeaseHeldError(FencedError):
    """An operator write (``offsets set/reset/import``) was refused: replicas hold leases right now."""

    def __init__(self, connector: str, groups: list[str]) -> None:
        self.connector = connector
        self.groups = groups
        super().__init__(
            f"{connector} has live leases on group(s) {', '.join(groups)}: stop its replicas first, or force the write"
        )


@dataclass(frozen=True, slots=True)
class CommitVersion:
    group: str
    token: int
    counter: int

    def supersedes(self, stored: CommitVersion | None) -> bool:
        if stored is None or stored.group != self.group:
            return True
        return (self.token, self.counter) > (stored.token, stored.counter)

    def to_json(self) -> list[str | int]:
        return [self.group, self.token, self.counter]

    @classmethod
    def from_json(cls, value: object) -> CommitVersion | None:
        if isinstance(value, list) and len(value) == 3:
            group, token, counter = value
            return cls(str(group), int(token), int(counter))
        return None


class CommitCounter:
    """Hands out the per-lease commit counter: strictly increasing for one (connector, group, token)."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], tuple[int, itertools.count[int]]] = {}

    def next_version(self, lease: Lease) -> CommitVersion:
        key = (lease.connector, lease.group)
        current = self._counters.get(key)
        if current is None or current[0] != lease.token:
            # A new lease starts a new sequence; older leases of this group are fenced anyway.
            current = (lease.token, itertools.count(1))
            self._counters[key] = current
        return CommitVersion(lease.group, lease.token, next(current[1]))
