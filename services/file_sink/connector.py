"""file-sink: append events to JSON-lines files, one structured CloudEvent per line.

Each ``put`` writes its batch with one ``write`` and ``fsync`` s the file before returning, so an
acknowledged event is on disk. Files are named ``<prefix>-<UTC time>-<pid>-<n>.jsonl`` in
``directory`` and rotate when they reach ``max_bytes`` or get older than ``rotate_seconds``; every
start opens a new file, so a line torn by a crash stays at the end of the previous one. Lines are
appended, not upserted: a redelivered event appears twice, with the same ``source`` and ``id``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import structlog
from pydantic import Field

from runtime import (
    ConfigError,
    ConnectorConfig,
    ConnectorRecord,
    DataError,
    Rejection,
    RetriableError,
    Sink,
    SinkContext,
    record_to_json,
)

__all__ = ["FileSink", "FileSinkConfig"]

log = structlog.get_logger()


class FileSinkConfig(ConnectorConfig):
    directory: str = Field("./events", description="Directory the JSON-lines files are written to (created if missing).")
    prefix: str = Field("events", pattern=r"^[A-Za-z0-9._-]+$", description="File name prefix.")
    max_bytes: int = Field(100 * 1024 * 1024, ge=1, description="Rotate to a new file once the current one is this big.")
    rotate_seconds: float = Field(3600.0, ge=0, description="Rotate to a new file after this many seconds (0 = never).")
    fsync: bool = Field(True, description="fsync each batch before acknowledging it (turn off only for throwaway data).")


class FileSink(Sink[FileSinkConfig]):
    name = "file-sink"
    description = "Appends events as structured CloudEvents JSON lines to rotating files."
    config_model = FileSinkConfig

    def __init__(self, config: FileSinkConfig) -> None:
        super().__init__(config)
        self.directory = Path(config.directory)
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._files_opened = 0

    @property
    def path(self) -> Path | None:
        """The file being written now."""
        return self._path

    async def start(self, context: SinkContext) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                "config.directory", f"cannot create {self.directory}: {exc.strerror}", "name a writable directory"
            ) from exc
        if not os.access(self.directory, os.W_OK):
            raise ConfigError("config.directory", f"{self.directory} is not writable", "name a writable directory")

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        lines: list[bytes] = []
        rejections: list[Rejection] = []
        for record in records:
            try:
                lines.append(record_to_json(record) + b"\n")
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
        if lines:
            await asyncio.to_thread(self._write, b"".join(lines))
        return rejections

    async def stop(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._close)

    def _write(self, chunk: bytes) -> None:
        """Append ``chunk`` durably (runs in a thread: file IO blocks)."""
        try:
            if self._file is None or self._due_for_rotation():
                self._rotate()
            assert self._file is not None
            self._file.write(chunk)
            self._file.flush()
            if self.config.fsync:
                os.fsync(self._file.fileno())
            self._size += len(chunk)
        except OSError as exc:
            # A full disk or a vanished mount may heal; the batch is retried, never dead-lettered.
            self._close_quietly()
            raise RetriableError(f"cannot write to {self._path}: {exc.strerror or exc}") from exc

    def _due_for_rotation(self) -> bool:
        too_old = self.config.rotate_seconds > 0 and time.monotonic() - self._opened_at >= self.config.rotate_seconds
        return self._size >= self.config.max_bytes or too_old

    def _rotate(self) -> None:
        self._close()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        while self._file is None:  # never append to a file of an earlier run: names are unique per creation
            self._files_opened += 1
            self._path = self.directory / f"{self.config.prefix}-{stamp}-{os.getpid()}-{self._files_opened}.jsonl"
            try:
                self._file = open(self._path, "xb")  # noqa: SIM115 - stays open across batches until rotation
            except FileExistsError:
                continue
        self._size = 0
        self._opened_at = time.monotonic()
        if self.config.fsync:  # make the new directory entry durable too
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        log.info("file sink writing", path=str(self._path))

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _close_quietly(self) -> None:
        try:
            self._close()
        except OSError:
            self._file = None
