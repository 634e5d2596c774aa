"""file-sink and file-source against the real file system, driven directly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from runtime import record_from_json
from runtime.cloudevents import record_to_cloudevent
from runtime.connector import SinkContext, SourceContext
from runtime.errors import ConfigError, DataError, RetriableError
from runtime.record import ConnectorRecord, partition_key
from runtime.testing import SinkHarness, SourceHarness, run_sink_conformance, run_source_conformance
from services.file_sink.connector import FileSink, FileSinkConfig
from services.file_source.connector import FileSource, FileSourceConfig


def _event(n: int, **overrides: object) -> ConnectorRecord:
    fields: dict[str, object] = {
        "data": {"n": n},
        "id": f"id-{n}",
        "source": "/tests",
        "type": "t",
        "subject": "orders",
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        **overrides,
    }
    return ConnectorRecord(**fields)  # type: ignore[arg-type]


async def _sink(tmp_path: Path, **overrides: object) -> FileSink:
    sink = FileSink(FileSinkConfig.model_validate({"directory": str(tmp_path / "out"), **overrides}))
    await sink.start(SinkContext(connector_name="test"))
    return sink


def _lines(directory: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in path.read_bytes().splitlines()]


async def test_sink_writes_one_structured_cloudevent_per_line(tmp_path: Path) -> None:
    sink = await _sink(tmp_path)
    records = [
        _event(1),
        _event(2, data="plain text", datacontenttype="text/plain"),
        _event(3, data=b"\x00\xff", datacontenttype=None),
        _event(4, extensions={"traceparent": "00-1", "count": 3}),
    ]
    assert await sink.put(records) == []
    await sink.stop()
    lines = _lines(tmp_path / "out")
    assert lines[0] == {
        "specversion": "1.0",
        "id": "id-1",
        "source": "/tests",
        "type": "t",
        "subject": "orders",
        "time": "2026-01-02T03:04:05Z",
        "data": {"n": 1},
    }
    assert lines[1]["data"] == "plain text" and lines[1]["datacontenttype"] == "text/plain"
    assert lines[2]["data_base64"] == "AP8="
    assert lines[3]["traceparent"] == "00-1" and lines[3]["count"] == 3
    # what the sink writes, the shared decoder reads back unchanged
    for line, record in zip((tmp_path / "out").glob("*.jsonl").__next__().read_bytes().splitlines(), records, strict=True):
        back = record_from_json(line)
        assert (back.id, back.data, back.extensions) == (record.id, record.data, dict(record.extensions))


async def test_sink_rejects_events_it_cannot_write_and_keeps_the_rest(tmp_path: Path) -> None:
    sink = await _sink(tmp_path)
    poison = _event(2, id=None)
    bad_json = _event(3, data=b"{oops", datacontenttype="application/json")
    rejections = await sink.put([_event(1), poison, bad_json, _event(4)])
    await sink.stop()
    assert [(r.record, "id" in r.reason or "JSON" in r.reason) for r in rejections] == [(poison, True), (bad_json, True)]
    assert [line["id"] for line in _lines(tmp_path / "out")] == ["id-1", "id-4"]


async def test_sink_rotates_by_size(tmp_path: Path) -> None:
    sink = await _sink(tmp_path, max_bytes=300)
    for n in range(6):
        await sink.put([_event(n)])
    await sink.stop()
    files = sorted((tmp_path / "out").glob("*.jsonl"))
    assert len(files) >= 2
    assert all(path.stat().st_size < 300 + 200 for path in files)
    assert sorted(line["id"] for line in _lines(tmp_path / "out")) == [f"id-{n}" for n in range(6)]


async def test_sink_rotates_by_time(tmp_path: Path) -> None:
    sink = await _sink(tmp_path, rotate_seconds=0.05)
    await sink.put([_event(1)])
    first = sink.path
    await asyncio.sleep(0.1)
    await sink.put([_event(2)])
    await sink.stop()
    assert first is not None and sink.path is not None and first != sink.path


async def test_each_start_opens_a_new_file_and_appends_nothing_to_the_old_one(tmp_path: Path) -> None:
    sink = await _sink(tmp_path)
    await sink.put([_event(1)])
    await sink.stop()
    sink = await _sink(tmp_path)
    await sink.put([_event(2)])
    await sink.stop()
    assert len(list((tmp_path / "out").glob("*.jsonl"))) == 2


async def test_unwritable_directory_fails_at_start_with_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as info:
        await _sink(tmp_path, directory=str(blocker / "sub"))
    assert info.value.key == "config.directory"


async def test_write_failure_is_retriable_and_the_next_batch_goes_to_a_new_file(tmp_path: Path) -> None:
    sink = await _sink(tmp_path)
    await sink.put([_event(1)])
    assert sink._file is not None
    sink._file.close()
    sink._file = Path("/dev/full").open("ab")  # noqa: SIM115, ASYNC230 - the disk is full from now on: ENOSPC on flush
    with pytest.raises(RetriableError, match="cannot write"):
        await sink.put([_event(2)])
    await sink.put([_event(2)])  # the disk has room again: the retried batch lands
    await sink.stop()
    assert sorted(line["id"] for line in _lines(tmp_path / "out")) == ["id-1", "id-2"]


# -- file-source ------------------------------------------------------------------------------


async def _source(paths: list[str], offsets: dict[str, dict[str, object]] | None = None, **overrides: object) -> FileSource:
    source = FileSource(FileSourceConfig.model_validate({"paths": paths, "scan_interval": 0.05, **overrides}))
    await source.start(SourceContext(connector_name="file-source", committed_offsets=offsets or {}))
    return source


async def _drain(source: FileSource, rounds: int = 3) -> list[ConnectorRecord]:
    records: list[ConnectorRecord] = []
    for _ in range(rounds):
        records.extend(await source.poll())
    return records


def _committed(records: list[ConnectorRecord]) -> dict[str, dict[str, object]]:
    return {partition_key(record.partition): dict(record.offset) for record in records}


async def test_source_reads_complete_lines_and_waits_for_the_rest(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_bytes(b"one\ntwo\r\nthr")
    source = await _source([str(tmp_path / "*.log")])
    try:
        first = await _drain(source)
        assert [record.data for record in first] == ["one", "two"]
        assert [record.offset for record in first] == [{"position": 4}, {"position": 9}]
        with log_file.open("ab") as handle:
            handle.write(b"ee\n")
        assert [record.data for record in await _drain(source)] == ["three"]
        stat = log_file.stat()
        assert first[0].partition == {"device": stat.st_dev, "inode": stat.st_ino}
        assert first[0].extensions["file"] == str(log_file)
    finally:
        await source.stop()


async def test_source_follows_rotation_by_rename_without_loss_or_duplicates(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("a1\na2\n")
    source = await _source([str(tmp_path / "app.log*")])
    try:
        seen = await _drain(source)
        with log_file.open("a") as handle:
            handle.write("a3\n")  # written just before the rotation, not yet read
        log_file.rename(tmp_path / "app.log.1")
        log_file.write_text("b1\n")
        await asyncio.sleep(0.1)
        seen += await _drain(source)
        assert sorted(str(record.data) for record in seen) == ["a1", "a2", "a3", "b1"]
        assert len({partition_key(record.partition) for record in seen}) == 2
    finally:
        await source.stop()


async def test_source_resumes_from_committed_positions(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"line {n}\n" for n in range(10)))
    source = await _source([str(log_file)], batch_size=4)
    first = await source.poll()
    await source.stop()
    assert len(first) == 4
    with log_file.open("a") as handle:
        handle.write("line 10\n")
    source = await _source([str(log_file)], offsets=_committed(first))
    try:
        rest = await _drain(source)
    finally:
        await source.stop()
    assert [record.data for record in first + rest] == [f"line {n}" for n in range(11)]
    ids = {
        record_to_cloudevent(r, connector="file-source", default_source="/s", default_type="t", default_subject="x").get_id()
        for r in first + rest
    }
    assert len(ids) == 11


async def test_source_rereads_a_truncated_file_and_can_start_at_the_end(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("old 1\nold 2\n")
    source = await _source([str(log_file)], from_beginning=False)
    try:
        assert await _drain(source) == []
        log_file.write_text("new\n")  # truncated and rewritten in place
        assert [record.data for record in await _drain(source)] == ["new"]
    finally:
        await source.stop()


async def test_file_sink_output_reads_back_through_the_source_as_the_same_events(tmp_path: Path) -> None:
    sink = await _sink(tmp_path)
    sent = [_event(1), _event(2, data=b"\x01", datacontenttype=None), _event(3, extensions={"k": "v"})]
    await sink.put(sent)
    await sink.stop()
    source = await _source([str(tmp_path / "out" / "*.jsonl")], format="cloudevents")
    try:
        got = await _drain(source)
    finally:
        await source.stop()
    assert [(r.id, r.data, r.subject, r.timestamp) for r in got] == [(r.id, r.data, r.subject, r.timestamp) for r in sent]
    assert got[2].extensions["k"] == "v"


async def test_source_bad_json_line_is_dead_lettered_by_the_worker_with_the_reason(tmp_path: Path) -> None:
    log_file = tmp_path / "app.jsonl"
    log_file.write_text('{"ok": 1}\n{broken\n')
    source = await _source([str(log_file)], format="json")
    try:
        good, bad = await _drain(source)
    finally:
        await source.stop()
    assert good.data == {"ok": 1}
    with pytest.raises(DataError, match="not valid JSON"):
        record_to_cloudevent(bad, connector="file-source", default_source="/s", default_type="t", default_subject="x")


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_file_sink_conformance(tmp_path: Path) -> None:
    out = tmp_path / "out"

    async def read() -> list[str]:
        return [str(line["id"]) for line in await asyncio.to_thread(_lines, out)]

    await run_sink_conformance(
        SinkHarness(connector=FileSink, config=lambda: {"directory": str(out)}, read=read, idempotent=False),
        workdir=tmp_path / "work",
    )


async def test_file_source_conformance(tmp_path: Path) -> None:
    log_file = tmp_path / "in.log"

    async def produce(start: int, count: int) -> None:
        with log_file.open("a") as handle:
            handle.writelines(f"item {n}\n" for n in range(start, start + count))

    await run_source_conformance(
        SourceHarness(
            connector=FileSource,
            config=lambda: {"paths": [str(log_file)], "scan_interval": 0.2},
            produce=produce,
            number_of=lambda event: int(str(event.get_data()).split()[1]),
        ),
        workdir=tmp_path / "work",
    )


async def test_source_reports_the_bytes_it_has_still_to_read(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_bytes(b"first\nsecond\nthird, still being writ")
    source = FileSource(FileSourceConfig(paths=[str(tmp_path / "*.log")], batch_size=1))
    await source.start(SourceContext("file-behind-test", {}, connector_type="file-source"))
    labels = {"connector": "file-source", "name": "file-behind-test"}
    try:
        assert [record.data for record in await source.poll()] == ["first"]
        assert REGISTRY.get_sample_value("meshconnect_source_bytes_behind", labels) == len(b"second\nthird, still being writ")
        assert [record.data for record in await source.poll()] == ["second"]
        assert await source.poll() == []  # the last line is not complete yet, and counts as unread
        assert REGISTRY.get_sample_value("meshconnect_source_bytes_behind", labels) == len(b"third, still being writ")
        with log_file.open("ab") as appending:
            appending.write(b"ten\n")
        assert [record.data for record in await source.poll()] == ["third, still being written"]
        assert REGISTRY.get_sample_value("meshconnect_source_bytes_behind", labels) == 0
    finally:
        await source.stop()
