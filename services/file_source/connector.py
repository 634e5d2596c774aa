"""file-source: tail files matching glob patterns, one record per line, resuming where it stopped.

A file is known by its identity, not its name: the partition of its records is the file's device
and inode, and the offset is the byte position just after each line. So a log rotated by renaming
(``app.log`` -> ``app.log.1``, a new ``app.log``) is read to its end under the old identity while
the new file starts at 0, and a restart seeks each file to its committed position. A file shorter
than its committed position was truncated and is read again from the start. Only complete lines
(ending in ``\\n``) are emitted; a line longer than ``max_line_bytes`` is cut into pieces of that
size. Caveat: a deleted file whose inode the file system reuses for a new file matching the glob
resumes at the old position (or from 0 when the new file is shorter).
"""

from __future__ import annotations

import asyncio
import glob
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import structlog
from pydantic import Field

from runtime import ConnectorConfig, ConnectorRecord, PayloadFormat, RetriableError, Source, SourceContext, record_from_payload

__all__ = ["FileSource", "FileSourceConfig"]

log = structlog.get_logger()


class FileSourceConfig(ConnectorConfig):
    paths: list[str] = Field(min_length=1, description="Glob patterns of the files to tail, e.g. /var/log/app/*.log.")
    format: PayloadFormat = Field(
        "text", description="How each line is read: text, json (one JSON value per line), cloudevents (structured) or binary."
    )
    from_beginning: bool = Field(True, description="Read files seen for the first time from the start (false: from the end).")
    batch_size: int = Field(500, ge=1, description="Lines per poll, at most.")
    max_line_bytes: int = Field(1024 * 1024, ge=1, description="Longer lines are cut into pieces of this size.")
    scan_interval: float = Field(1.0, gt=0, description="Seconds between looks for new or rotated files.")


@dataclass(slots=True)
class _Tail:
    path: str
    file: BinaryIO
    position: int
    partition: dict[str, int]


class FileSource(Source[FileSourceConfig]):
    name = "file-source"
    description = "Tails files (glob, rotation-safe) line by line, resuming by inode and byte position."
    config_model = FileSourceConfig

    def __init__(self, config: FileSourceConfig) -> None:
        super().__init__(config)
        self._tails: dict[tuple[int, int], _Tail] = {}
        self._context: SourceContext | None = None
        self._next_scan = 0.0
        self._bytes_behind = 0

    async def start(self, context: SourceContext) -> None:
        self._context = context
        await asyncio.to_thread(self._scan)

    async def poll(self) -> Sequence[ConnectorRecord]:
        records = await asyncio.to_thread(self._read)
        assert self._context is not None
        self._context.gauge("meshconnect_source_bytes_behind").set(self._bytes_behind)
        if not records:
            await asyncio.sleep(0.2)
        return records

    async def stop(self) -> None:
        for tail in self._tails.values():
            tail.file.close()
        self._tails.clear()

    # -- blocking file work, run in a thread ------------------------------------------------

    def _read(self) -> list[ConnectorRecord]:
        try:
            if time.monotonic() >= self._next_scan:
                self._scan()
            records: list[ConnectorRecord] = []
            for tail in list(self._tails.values()):
                records.extend(self._read_lines(tail, self.config.batch_size - len(records)))
                if len(records) >= self.config.batch_size:
                    break
            self._bytes_behind = sum(self._unread(tail) for tail in self._tails.values())
            return records
        except OSError as exc:
            raise RetriableError(f"cannot read tailed files: {exc}") from exc

    def _scan(self) -> None:
        self._next_scan = time.monotonic() + self.config.scan_interval
        seen: set[tuple[int, int]] = set()
        for pattern in self.config.paths:
            for path in sorted(glob.glob(pattern)):
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                identity = (stat.st_dev, stat.st_ino)
                seen.add(identity)
                if identity not in self._tails and os.path.isfile(path):
                    self._open(path, identity, stat.st_size)
                elif identity in self._tails:
                    self._tails[identity].path = path  # renamed by rotation: same file, new name
        for identity in [identity for identity in self._tails if identity not in seen]:
            tail = self._tails[identity]
            if self._at_end(tail):  # gone from the globs and read to the end: let it go
                tail.file.close()
                del self._tails[identity]

    def _open(self, path: str, identity: tuple[int, int], size: int) -> None:
        assert self._context is not None
        partition = {"device": identity[0], "inode": identity[1]}
        committed = self._context.offset(partition)
        if committed is not None:
            position = int(committed["position"])
            if position > size:
                log.warning("file shorter than its committed position: truncated, reading it again", path=path)
                position = 0
        else:
            position = 0 if self.config.from_beginning else size
        file = open(path, "rb")  # noqa: SIM115 - held open while tailed, so a rotated file is read to its end
        file.seek(position)
        self._tails[identity] = _Tail(path=path, file=file, position=position, partition=partition)
        log.info("tailing file", path=path, position=position)

    def _at_end(self, tail: _Tail) -> bool:
        return self._unread(tail) == 0

    @staticmethod
    def _unread(tail: _Tail) -> int:
        """Bytes of the file after the position read (0 when truncated below it: read again from 0 next)."""
        return max(0, os.fstat(tail.file.fileno()).st_size - tail.position)

    def _read_lines(self, tail: _Tail, limit: int) -> list[ConnectorRecord]:
        size = os.fstat(tail.file.fileno()).st_size
        if size < tail.position:  # truncated in place (copytruncate rotation)
            log.warning("file truncated, reading it from the start", path=tail.path)
            tail.position = 0
        tail.file.seek(tail.position)
        records: list[ConnectorRecord] = []
        while len(records) < limit:
            line = tail.file.readline(self.config.max_line_bytes)
            if not line or (not line.endswith(b"\n") and len(line) < self.config.max_line_bytes):
                break  # nothing more, or a line still being written
            tail.position += len(line)
            payload = line.rstrip(b"\n").rstrip(b"\r")
            position = {"position": tail.position}
            records.append(
                record_from_payload(
                    payload, self.config.format, partition=tail.partition, offset=position, extensions={"file": tail.path}
                )
            )
        return records
