"""A :class:`~runtime.registry.Registry` in a local directory, for one machine (demo, tests).

Layout: one sub-directory per connector (its name percent-encoded), holding ``state.json``::

    <path>/<connector>/state.json   {"offsets":  {partition key: offset},
                                     "versions": {partition key: [group, token, counter]},
                                     "tokens":   {group: last fencing token issued},
                                     "leases":   {group: {"holder", "token", "expires_at"}},
                                     "members":  {holder: {"expires_at", "info"}}}
    <path>/<connector>/.lock        flock(2) target

Every operation is one read-modify-write of ``state.json`` under an exclusive ``flock`` on
``.lock``, so several processes on this machine may share the directory with the same fencing as
Redis gives. A write goes to a temp file that is fsynced and renamed over ``state.json`` (and the
directory fsynced): a crash leaves the old state or the new one, never half of one.

Leases and members expire by the **wall clock** of this machine (``time.time()``), the only
clock the processes sharing the directory have in common; stepping the clock shortens or
lengthens leases. The coordinator's local monotonic deadline still drops a lease on the holder's
side before the store lets anyone else take it, as long as the clock is not stepped backwards.
Blocking file I/O runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import orjson

from runtime.errors import ConfigError, FencedError, RegistryUnavailableError
from runtime.registry import Lease, LeaseInfo, Offsets, Registry
from runtime.registry.fencing import CommitCounter, CommitVersion, LeaseHeldError

__all__ = ["FileRegistry"]

_STATE = "state.json"
_LOCK = ".lock"
T = TypeVar("T")
State = dict[str, dict[str, Any]]


def _empty_state() -> State:
    return {"offsets": {}, "versions": {}, "tokens": {}, "leases": {}, "members": {}}


class FileRegistry(Registry):
    """Offsets and leases in ``path`` (created if missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._counter = CommitCounter()

    def __repr__(self) -> str:
        return f"FileRegistry({str(self.path)!r})"

    # -- the one seam to the file system -------------------------------------------------------

    async def _locked(self, connector: str, change: Callable[[State, float], T], *, write: bool = True) -> T:
        """Run ``change(state, now)`` on ``connector``'s state under its lock, in a thread."""
        return await asyncio.to_thread(self._locked_sync, connector, change, write)

    def _directory(self, connector: str) -> Path:
        if connector in ("", ".", ".."):
            raise ConfigError("name", f"{connector!r} cannot name a connector", "use letters, digits, '-', '_' or '.'")
        return self.path / quote(connector, safe="")

    def _locked_sync(self, connector: str, change: Callable[[State, float], T], write: bool) -> T:
        directory = self._directory(connector)
        try:
            if not write and not directory.exists():
                return change(_empty_state(), time.time())  # a read creates nothing
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / _LOCK, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
                try:
                    state = self._read(directory)
                    result = change(state, time.time())
                    if write:
                        self._write(directory, state)
                    return result
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except OSError as exc:
            raise RegistryUnavailableError(f"state directory {directory} is not usable: {exc}") from exc

    @staticmethod
    def _read(directory: Path) -> State:
        try:
            raw = (directory / _STATE).read_bytes()
        except FileNotFoundError:
            return _empty_state()
        state = _empty_state()
        state.update(orjson.loads(raw))
        return state

    @staticmethod
    def _write(directory: Path, state: State) -> None:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(orjson.dumps(state, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, directory / _STATE)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- offsets -------------------------------------------------------------------------------

    async def load_offsets(self, connector: str) -> dict[str, dict[str, Any]]:
        return await self._locked(connector, lambda state, _now: dict(state["offsets"]), write=False)

    async def commit_offsets(self, connector: str, offsets: Offsets, lease: Lease) -> None:
        version = self._counter.next_version(lease)
        payload = {key: dict(value) for key, value in offsets.items()}

        def commit(state: State, now: float) -> None:
            current = _live_lease(state, lease.group, now)
            if current is None or current["token"] != lease.token or current["holder"] != lease.holder:
                raise FencedError(
                    f"commit of {connector}/{lease.group} refused: token {lease.token} is no longer the current lease"
                )
            for key, value in payload.items():
                if version.supersedes(CommitVersion.from_json(state["versions"].get(key))):
                    state["offsets"][key] = value
                    state["versions"][key] = version.to_json()

        await self._locked(connector, commit)

    async def set_offsets(self, connector: str, offsets: Offsets, *, replace: bool, force: bool) -> None:
        payload = {key: dict(value) for key, value in offsets.items()}

        def overwrite(state: State, now: float) -> None:
            held = [group for group in state["leases"] if _live_lease(state, group, now) is not None]
            if held and not force:
                raise LeaseHeldError(connector, sorted(held))
            if replace:
                state["offsets"] = {}
                state["versions"] = {}
            state["offsets"].update(payload)
            for key in payload:
                # An operator write starts the partition afresh: the next fenced commit wins.
                state["versions"].pop(key, None)

        await self._locked(connector, overwrite)

    # -- leases --------------------------------------------------------------------------------

    async def try_acquire(self, connector: str, group: str, holder: str, ttl: float) -> Lease | None:
        def acquire(state: State, now: float) -> Lease | None:
            current = _live_lease(state, group, now)
            if current is not None:
                if current["holder"] != holder:
                    return None
                current["expires_at"] = now + ttl
                return Lease(connector, group, holder, int(current["token"]))
            token = int(state["tokens"].get(group, 0)) + 1
            state["tokens"][group] = token
            state["leases"][group] = {"holder": holder, "token": token, "expires_at": now + ttl}
            return Lease(connector, group, holder, token)

        return await self._locked(connector, acquire)

    async def renew(self, lease: Lease, ttl: float) -> None:
        def extend(state: State, now: float) -> None:
            current = _live_lease(state, lease.group, now)
            if current is None or current["token"] != lease.token or current["holder"] != lease.holder:
                raise FencedError(f"lease {lease.connector}/{lease.group} token {lease.token} was lost")
            current["expires_at"] = now + ttl

        await self._locked(lease.connector, extend)

    async def release(self, lease: Lease) -> None:
        def drop(state: State, now: float) -> None:
            current = _live_lease(state, lease.group, now)
            if current is not None and current["token"] == lease.token and current["holder"] == lease.holder:
                del state["leases"][lease.group]

        await self._locked(lease.connector, drop)

    async def leases(self, connector: str) -> list[LeaseInfo]:
        def read(state: State, now: float) -> list[LeaseInfo]:
            infos = []
            for group in sorted(state["tokens"]):
                current = _live_lease(state, group, now)
                if current is None:
                    infos.append(LeaseInfo(connector, group, None, int(state["tokens"][group]), None))
                else:
                    ttl_left = max(0.0, float(current["expires_at"]) - now)
                    infos.append(LeaseInfo(connector, group, str(current["holder"]), int(current["token"]), ttl_left))
            return infos

        return await self._locked(connector, read, write=False)

    # -- members -------------------------------------------------------------------------------

    async def heartbeat_member(self, connector: str, holder: str, ttl: float, info: Mapping[str, Any]) -> None:
        """As the interface says; a ``ttl`` of 0 or less removes ``holder`` at once (a graceful leave)."""
        record = dict(info)

        def beat(state: State, now: float) -> None:
            _prune_members(state, now)
            if ttl > 0:
                state["members"][holder] = {"expires_at": now + ttl, "info": record}
            else:
                state["members"].pop(holder, None)

        await self._locked(connector, beat)

    async def members(self, connector: str) -> dict[str, dict[str, Any]]:
        def read(state: State, now: float) -> dict[str, dict[str, Any]]:
            _prune_members(state, now)
            return {holder: dict(entry["info"]) for holder, entry in state["members"].items()}

        return await self._locked(connector, read, write=False)

    # -- namespace -----------------------------------------------------------------------------

    async def connectors(self) -> list[str]:
        def scan() -> list[str]:
            try:
                return sorted(unquote(entry.name) for entry in self.path.iterdir() if (entry / _STATE).exists())
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise RegistryUnavailableError(f"state directory {self.path} is not usable: {exc}") from exc

        return await asyncio.to_thread(scan)

    async def delete_connector(self, connector: str) -> int:
        directory = self._directory(connector)

        def remove() -> int:
            try:
                entries = [entry for entry in directory.iterdir() if entry.name != _LOCK]
                state = self._read(directory) if (directory / _STATE).exists() else _empty_state()
                for entry in entries:
                    entry.unlink()
                (directory / _LOCK).unlink(missing_ok=True)
                directory.rmdir()
            except FileNotFoundError:
                return 0
            except OSError as exc:
                raise RegistryUnavailableError(f"cannot delete {directory}: {exc}") from exc
            return sum(len(section) for section in state.values())

        return await asyncio.to_thread(remove)


def _live_lease(state: State, group: str, now: float) -> dict[str, Any] | None:
    lease: dict[str, Any] | None = state["leases"].get(group)
    if lease is None or float(lease["expires_at"]) <= now:
        return None
    return lease


def _prune_members(state: State, now: float) -> None:
    for holder in [holder for holder, entry in state["members"].items() if float(entry["expires_at"]) <= now]:
        del state["members"][holder]
