"""What the catalogue's measures share: the sizes of a run, the records, and driving a sink or a source once."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from runtime.connector import Sink, SinkContext, Source, SourceContext  # noqa: E402
from runtime.record import ConnectorRecord  # noqa: E402

EVENTS = int(os.environ.get("BENCH_EVENTS", "4000"))
BATCH = 500
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
HTTP_CONCURRENCY = 16

Measure = Callable[[], Awaitable[float]]
"""Runs the work once and returns its seconds."""


def make_records(count: int, subject: str = "bench") -> list[ConnectorRecord]:
    now = datetime.now(UTC)
    return [
        ConnectorRecord(
            data={"n": n, "text": "x" * 200},
            id=f"e-{uuid.uuid4().hex}-{n}",
            source="/bench",
            type="bench",
            subject=subject,
            timestamp=now,
        )
        for n in range(count)
    ]


def batches(records: list[ConnectorRecord]) -> list[list[ConnectorRecord]]:
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


async def timed(work: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await work
    return time.perf_counter() - started


async def sink_run(sink: Sink[Any], records: list[ConnectorRecord]) -> float:
    await sink.start(SinkContext(connector_name="bench"))
    try:
        started = time.perf_counter()
        for batch in batches(records):
            await sink.put(batch)
        return time.perf_counter() - started
    finally:
        await sink.stop()


async def source_run(source: Source[Any], count: int) -> float:
    await source.start(SourceContext(connector_name="bench", committed_offsets={}))
    try:
        started = time.perf_counter()
        seen = 0
        while seen < count:
            records = await source.poll()
            await source.commit(records)
            seen += len(records)
        return time.perf_counter() - started
    finally:
        await source.stop()
