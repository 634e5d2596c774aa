"""The sink's durable spool: pushed events on local disk before they are acknowledged to the mesh.

A real EventMesh runtime forgets a push it was not acked for within ~3 s, and forgets the un-acked
pushes of a session that dies unless another session of the group is there to take them. A sink
whose ``put`` is slow, or that crashes, would lose them. With a spool the sink acks an event once
it is here, on disk, and writes it to its target from here, so the mesh's memory no longer matters.

Layout of the directory (one per sink instance, held with an exclusive ``flock`` on ``lock``):

* ``<n>.seg`` segment files, ``n`` counting up from 0 (20 digits), append-only; each record is
  ``length (u32, big-endian) | crc32 of the body (u32) | body`` where the body is the event's wire
  form as the mesh pushed it. A segment is closed once it passed ``segment_bytes``, and a new one
  begun.
* ``done``: the position (segment, offset) up to which the records are written to the target,
  as JSON, replaced atomically (temporary file, fsync, rename, fsync of the directory).
  Segments wholly before it are deleted.

The order, stated once: :meth:`Spool.append` writes and fsyncs a batch, and only then may the
caller ack it to the mesh; :meth:`Spool.read` hands the records after the read cursor to the
writer; :meth:`Spool.done` records a position once ``put`` returned for everything before it.
On open, the records after ``done`` wait to be written again (a replay: sinks are idempotent),
and a torn last record (a crash mid-write: it was never acked, the mesh still owns it) fails its
length or crc check and is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from runtime.errors import ConfigError, RetriableError

__all__ = ["RECORD_OVERHEAD", "Spool", "SpoolEntry", "SpoolPosition"]

_HEADER = struct.Struct(">II")
RECORD_OVERHEAD = _HEADER.size
"""Bytes a record takes on disk beyond its body."""

_SEGMENT_SUFFIX = ".seg"
_DONE = "done"
_LOCK = "lock"


@dataclass(frozen=True, slots=True, order=True)
class SpoolPosition:
    """A place in the spool: the byte ``offset`` in segment number ``segment``."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled event: its wire ``body`` and the position just after its record."""

    body: bytes
    end: SpoolPosition


def _segment_name(segment: int) -> str:
    return f"{segment:020d}{_SEGMENT_SUFFIX}"


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _valid_length(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole records with a matching crc."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        if start + length > len(data) or zlib.crc32(data[start : start + length]) != crc:
            break
        offset = start + length
    return offset


def _read_records(path: Path, segment: int, start: int, stop: int, limit: int) -> list[SpoolEntry]:
    """Up to ``limit`` records of one segment between ``start`` and ``stop`` (both record boundaries)."""
    entries: list[SpoolEntry] = []
    with path.open("rb") as file:
        file.seek(start)
        offset = start
        while offset < stop and len(entries) < limit:
            length, _crc = _HEADER.unpack(file.read(_HEADER.size))
            body = file.read(length)
            offset += _HEADER.size + length
            entries.append(SpoolEntry(body, SpoolPosition(segment, offset)))
    return entries


class Spool:
    """The spool in ``path`` (see the module docstring); bounded to ``max_bytes`` of records not yet done.

    One task appends, one task reads and marks done; both on the event loop, disk work in threads.
    """

    def __init__(self, path: Path, max_bytes: int, *, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 4))
        self._sizes: dict[int, int] = {}  # segment -> bytes of whole records in it, oldest first
        self._done = SpoolPosition(0, 0)
        self._cursor = SpoolPosition(0, 0)
        self._active: IO[bytes] | None = None
        self._lock: IO[bytes] | None = None
        self._appended = asyncio.Event()
        self._room = asyncio.Event()
        self.log = structlog.get_logger().bind(spool=str(path))

    # -- opening and recovery ------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, cut a torn tail off, and place the read cursor at ``done`` (the replay)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = (self.path / _LOCK).open("ab")
        except OSError as exc:
            raise ConfigError(
                "sink.spool.path", f"cannot use {str(self.path)!r} as the spool: {exc}", "name a writable directory"
            ) from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            self._lock = None
            raise ConfigError(
                "sink.spool.path",
                f"the spool {str(self.path)!r} is in use by another worker",
                "give each sink instance (each replica) a spool directory of its own",
            ) from exc
        self._done = self._load_done()
        segments = sorted(int(p.name.removesuffix(_SEGMENT_SUFFIX)) for p in self.path.glob(f"*{_SEGMENT_SUFFIX}"))
        for segment in segments:
            if segment < self._done.segment:
                (self.path / _segment_name(segment)).unlink()
                continue
            self._sizes[segment] = self._recover_segment(segment)
        if not self._sizes:
            self._sizes[self._done.segment] = 0
        first = next(iter(self._sizes))
        if first != self._done.segment:  # the done segment was deleted: everything before ``first`` is done
            self._done = SpoolPosition(first, 0)
        self._cursor = self._done
        self._active = (self.path / _segment_name(self.active_segment)).open("ab")
        # The directory entries (the spool's own, a new segment's) must be as durable as what is written into them.
        _fsync_directory(self.path.parent)
        _fsync_directory(self.path)
        if self.pending_bytes:
            self._appended.set()

    def _load_done(self) -> SpoolPosition:
        try:
            saved = json.loads((self.path / _DONE).read_text())
            return SpoolPosition(int(saved["segment"]), int(saved["offset"]))
        except FileNotFoundError:
            return SpoolPosition(0, 0)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                "sink.spool.path",
                f"the spool's {_DONE} file in {str(self.path)!r} is unreadable ({exc})",
                "restore it, or move the spool away to start afresh (its events were acked: writing them is on you)",
            ) from exc

    def _recover_segment(self, segment: int) -> int:
        """The length of the segment's whole records; anything after them (a torn write) is cut off.

        The segment is read whole: at most ``segment_bytes`` plus one batch.
        """
        path = self.path / _segment_name(segment)
        data = path.read_bytes()
        valid = _valid_length(data)
        if valid < len(data):
            self.log.warning(
                "spool: bytes after the last whole record fail their length or crc check and are dropped"
                " (a write torn by a crash: never acked, the mesh still has it)",
                segment=path.name,
                offset=valid,
                dropped_bytes=len(data) - valid,
            )
            with path.open("r+b") as file:
                file.truncate(valid)
                os.fsync(file.fileno())
        return valid

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def active_segment(self) -> int:
        return next(reversed(self._sizes))

    @property
    def pending_bytes(self) -> int:
        """Bytes of records spooled and not yet done (written to the target)."""
        return sum(size for segment, size in self._sizes.items() if segment >= self._done.segment) - self._done.offset

    def has_unread(self) -> bool:
        """Records wait after the read cursor."""
        cursor = self._moved_cursor()
        return cursor.offset < self._sizes[cursor.segment]

    def _moved_cursor(self) -> SpoolPosition:
        """The read cursor, moved past the ends of closed segments."""
        cursor = self._cursor
        while cursor.offset >= self._sizes[cursor.segment] and cursor.segment != self.active_segment:
            cursor = SpoolPosition(next(s for s in self._sizes if s > cursor.segment), 0)
        self._cursor = cursor
        return cursor

    def has_room(self, need: int) -> bool:
        """``need`` more bytes fit; an empty spool takes any batch, so one larger than the bound cannot wedge it."""
        pending = self.pending_bytes
        return pending == 0 or pending + need <= self.max_bytes

    async def wait_for_room(self, need: int) -> None:
        """Until :meth:`done` made room for ``need`` bytes (the caller bounds the wait with its stop)."""
        while not self.has_room(need):
            self._room.clear()
            await self._room.wait()

    async def wait_for_records(self) -> None:
        """Until a record waits after the read cursor."""
        while not self.has_unread():
            self._appended.clear()
            await self._appended.wait()

    # -- the three steps -----------------------------------------------------------------------

    async def append(self, bodies: list[bytes]) -> None:
        """Write ``bodies`` as records and fsync them: once this returned they may be acked to the mesh.

        A failed write is cut back off (nothing half-written stays) and raises :class:`RetriableError`.
        """
        if self._sizes[self.active_segment] >= self.segment_bytes:
            await asyncio.to_thread(self._roll)
        data = b"".join(_HEADER.pack(len(body), zlib.crc32(body)) + body for body in bodies)
        segment = self.active_segment
        await asyncio.to_thread(self._write, data, self._sizes[segment])
        self._sizes[segment] += len(data)
        self._appended.set()

    def _write(self, data: bytes, size_before: int) -> None:
        assert self._active is not None
        try:
            self._active.write(data)
            self._active.flush()
            os.fsync(self._active.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._active.truncate(size_before)
                self._active.seek(size_before)
            raise RetriableError(
                f"spool write to {str(self.path)!r} failed: {exc}; it needs disk space and a healthy volume"
            ) from exc

    def _roll(self) -> None:
        assert self._active is not None
        self._active.close()
        segment = self.active_segment + 1
        self._active = (self.path / _segment_name(segment)).open("ab")
        _fsync_directory(self.path)
        self._sizes[segment] = 0

    async def read(self, limit: int) -> list[SpoolEntry]:
        """Up to ``limit`` records after the read cursor, oldest first (none if none wait); the cursor moves past them."""
        entries: list[SpoolEntry] = []
        while len(entries) < limit and self.has_unread():
            cursor = self._cursor
            path = self.path / _segment_name(cursor.segment)
            size = self._sizes[cursor.segment]
            entries += await asyncio.to_thread(_read_records, path, cursor.segment, cursor.offset, size, limit - len(entries))
            self._cursor = entries[-1].end
        return entries

    async def done(self, upto: SpoolPosition) -> None:
        """Everything before ``upto`` is written to the target: save that, and delete finished segments."""
        await asyncio.to_thread(self._save_done, upto)
        self._done = upto
        for segment in [s for s in self._sizes if s < upto.segment]:
            del self._sizes[segment]
            with contextlib.suppress(FileNotFoundError):
                (self.path / _segment_name(segment)).unlink()
        self._room.set()

    def _save_done(self, upto: SpoolPosition) -> None:
        temporary = self.path / f"{_DONE}.tmp"
        try:
            with temporary.open("w") as file:
                json.dump({"segment": upto.segment, "offset": upto.offset}, file)
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(self.path / _DONE)
            _fsync_directory(self.path)
        except OSError as exc:
            raise RetriableError(f"spool checkpoint in {str(self.path)!r} failed: {exc}; it needs a healthy volume") from exc
