"""The conformance kit itself, run against the file connectors (append-only sink, tailing source)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from cloudevents.core.v1.event import CloudEvent

from runtime.testing import SinkHarness, SourceHarness, run_sink_conformance, run_source_conformance
from services.file_sink.connector import FileSink
from services.file_source.connector import FileSource


async def test_file_sink_passes_the_sink_checks(tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def read() -> list[str]:
        return [
            orjson.loads(line)["id"] for path in sorted(out.glob("*.jsonl")) for line in path.read_bytes().splitlines() if line
        ]

    timings = await run_sink_conformance(
        SinkHarness(connector=FileSink, config=lambda: {"directory": str(out)}, read=read, idempotent=False, events=60),
        workdir=tmp_path / "kit",
    )
    assert set(timings) == {"open_close", "batches", "redelivery", "kill", "mesh_drop"}


async def test_file_source_passes_the_source_checks(tmp_path: Path) -> None:
    source_file = tmp_path / "in.log"
    source_file.touch()

    async def produce(start: int, count: int) -> None:
        with source_file.open("a") as handle:
            handle.writelines(f"line {n}\n" for n in range(start, start + count))

    def number_of(event: CloudEvent) -> int:
        data = event.get_data()
        text = data.decode() if isinstance(data, bytes) else str(data)
        return int(text.split()[1])

    timings = await run_source_conformance(
        SourceHarness(
            connector=FileSource, config=lambda: {"paths": [str(source_file)]}, produce=produce, number_of=number_of, events=60
        ),
        workdir=tmp_path / "kit",
    )
    assert set(timings) == {"open_close", "batches", "redelivery", "kill", "mesh_drop"}


async def test_the_kit_fails_a_sink_that_loses_events(tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def read_losing_one() -> list[str]:
        ids = [
            orjson.loads(line)["id"] for path in sorted(out.glob("*.jsonl")) for line in path.read_bytes().splitlines() if line
        ]
        return [event_id for event_id in ids if event_id != "conformance-7"]

    harness = SinkHarness(
        connector=FileSink, config=lambda: {"directory": str(out)}, read=read_losing_one, idempotent=False, events=20
    )
    with pytest.raises(AssertionError, match="never reached"):
        await run_sink_conformance(harness, workdir=tmp_path / "kit", checks=("batches",), within=5)
