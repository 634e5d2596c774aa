"""Offset checkpoints and leases: where a replica learns what to do and how far it got.

Two stores implement :class:`Registry`: :class:`~runtime.registry.redis.RedisRegistry` for
deployments and :class:`~runtime.registry.file.FileRegistry` for one machine (demo, tests). Both
fence: every offset commit carries the fencing token of the lease it was made under, and the store
itself refuses it when that token is no longer current. :class:`~runtime.registry.coordinator.Coordinator`
spreads a source's partition groups over the live replicas and keeps their leases renewed.

Offsets are opaque JSON maps keyed by the canonical partition key
(:func:`runtime.record.partition_key`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Lease", "LeaseInfo", "Registry"]

Offsets = Mapping[str, Mapping[str, Any]]
"""partition key -> offset map."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease this process holds on one partition group of a connector."""

    connector: str
    group: str
    holder: str
    token: int
    """Fencing token: strictly increasing per (connector, group) with every new lease."""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """What the store says about a lease, for operators (``meshconnect leases show``)."""

    connector: str
    group: str
    holder: str | None
    token: int
    ttl_left: float | None


class Registry(ABC):
    """The store behind checkpoints and leases. All methods raise
    :class:`~runtime.errors.RegistryUnavailableError` when the store cannot be reached."""

    @abstractmethod
    async def load_offsets(self, connector: str) -> dict[str, dict[str, Any]]:
        """Every committed offset of ``connector``."""

    @abstractmethod
    async def commit_offsets(self, connector: str, offsets: Offsets, lease: Lease) -> None:
        """Store ``offsets`` atomically, all or none, fenced by ``lease``.

        Raises :class:`~runtime.errors.FencedError` when ``lease.token`` is not the current token
        of ``lease.group`` (the store checks it, not the caller).
        """

    @abstractmethod
    async def try_acquire(self, connector: str, group: str, holder: str, ttl: float) -> Lease | None:
        """Take the lease on ``group`` if it is free or expired (new token), else ``None``.

        If ``holder`` already holds it, the same lease is returned, renewed.
        """

    @abstractmethod
    async def renew(self, lease: Lease, ttl: float) -> None:
        """Extend ``lease``; raises :class:`~runtime.errors.FencedError` if it was lost."""

    @abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give ``lease`` up at once (graceful stop or rebalance); a lost lease is ignored."""

    @abstractmethod
    async def heartbeat_member(self, connector: str, holder: str, ttl: float, info: Mapping[str, Any]) -> None:
        """Say that replica ``holder`` is alive for ``ttl`` seconds (status, rebalancing)."""

    @abstractmethod
    async def members(self, connector: str) -> dict[str, dict[str, Any]]:
        """The live replicas of ``connector`` with the info they reported."""

    @abstractmethod
    async def leases(self, connector: str) -> list[LeaseInfo]:
        """The leases of every group of ``connector``."""

    @abstractmethod
    async def set_offsets(self, connector: str, offsets: Offsets, *, replace: bool, force: bool) -> None:
        """Operator write (``offsets set/reset/import``): refused while any lease is held unless ``force``."""

    @abstractmethod
    async def connectors(self) -> list[str]:
        """Every connector that has keys in this namespace."""

    @abstractmethod
    async def delete_connector(self, connector: str) -> int:
        """Remove every key of ``connector``; returns how many were removed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
