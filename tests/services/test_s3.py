"""s3-source and s3-sink against moto's S3 in server mode (a real HTTP endpoint on 127.0.0.1), one per module.

Each test works in its own bucket. An outage is the server stopped (SIGSTOP) and continued: it stops
answering and comes back with its objects.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cloudevents.core.v1.event import CloudEvent

from runtime.client import MeshClient, user_agent_for
from runtime.connector import SinkContext, SourceContext
from runtime.errors import ConfigError
from runtime.mesh import EmbeddedMesh
from runtime.record import ConnectorRecord, partition_key
from runtime.testing import SinkHarness, SourceHarness, WorkerProcess, poll_until, run_sink_conformance, run_source_conformance
from runtime.validation import validate_model
from services.s3.client import S3Config, s3_client
from services.s3.sink.connector import S3Sink, S3SinkConfig
from services.s3.source.connector import S3Source, S3SourceConfig
from tests.servers import MotoS3Server, free_port
from tests.services.workers import gather_events, gathered

_buckets = itertools.count()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3Server]:
    server = MotoS3Server.running()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
async def bucket(moto: MotoS3Server) -> AsyncIterator[Store]:
    store = Store(moto, f"test-bucket-{next(_buckets)}")
    async with store.client() as s3:
        await s3.create_bucket(Bucket=store.name)
    yield store


class Store:
    """The test's own view of a bucket, through the same client library."""

    def __init__(self, moto: MotoS3Server, name: str) -> None:
        self.moto = moto
        self.name = name

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {
            "bucket": self.name,
            "endpoint_url": self.moto.url,
            "access_key_id": self.moto.access_key,
            "secret_access_key": self.moto.secret_key,
            "path_style": True,
            "timeout": 2,
            **overrides,
        }

    def client(self) -> Any:
        return s3_client(validate_model(S3Config, self.config(timeout=10)))

    async def put(self, key: str, body: bytes) -> None:
        async with self.client() as s3:
            await s3.put_object(Bucket=self.name, Key=key, Body=body)

    async def objects(self) -> dict[str, bytes]:
        async with self.client() as s3:
            listed = await s3.list_objects_v2(Bucket=self.name)
            result = {}
            for entry in listed.get("Contents", []):
                answer = await s3.get_object(Bucket=self.name, Key=entry["Key"])
                async with answer["Body"] as body:
                    result[entry["Key"]] = await body.read()
            return result

    async def pending_uploads(self) -> list[Any]:
        async with self.client() as s3:
            return list((await s3.list_multipart_uploads(Bucket=self.name)).get("Uploads", []))


def _lines(*values: Any) -> bytes:
    return b"".join(orjson.dumps(value) + b"\n" for value in values)


async def _eventually(condition: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s")


# -- s3-source, driven directly --------------------------------------------------------------------


async def _source(store: Store, committed: dict[str, Any] | None = None, **config: Any) -> S3Source:
    source = S3Source(validate_model(S3SourceConfig, store.config(poll_interval=0.2, **config)))
    partition = {"bucket": store.name, "prefix": config.get("prefix", "")}
    offsets = {} if committed is None else {partition_key(partition): committed}
    await source.start(SourceContext("s3-test", offsets))
    return source


async def test_source_reads_objects_in_key_order_and_new_ones_as_they_come(bucket: Store) -> None:
    await bucket.put("in/b.jsonl", _lines({"n": 2}, {"n": 3}))
    await bucket.put("in/a.jsonl", _lines({"n": 0}, {"n": 1}))
    await bucket.put("other/z.jsonl", _lines({"n": 99}))
    source = await _source(bucket, prefix="in/")
    try:
        records = await poll_until(source, 4)
        await bucket.put("in/c.jsonl", _lines({"n": 4}) + b'{"n": 5}')  # the last line without its newline
        records += await poll_until(source, 2)
    finally:
        await source.stop()
    assert [record.data["n"] for record in records] == [0, 1, 2, 3, 4, 5]
    assert [record.extensions["s3key"] for record in records[:3]] == ["in/a.jsonl", "in/a.jsonl", "in/b.jsonl"]
    first = records[0].offset
    assert first["key"] == "in/a.jsonl" and first["position"] == len(b'{"n":0}\n') and first["etag"]


async def test_source_resumes_at_the_committed_key_and_byte(bucket: Store) -> None:
    await bucket.put("a.jsonl", _lines({"n": 0}, {"n": 1}))
    await bucket.put("b.jsonl", _lines({"n": 2}, {"n": 3}, {"n": 4}))
    source = await _source(bucket)
    try:
        everything = await poll_until(source, 5)
    finally:
        await source.stop()
    source = await _source(bucket, committed=dict(everything[2].offset))  # n=2 was the last the mesh acknowledged
    try:
        resumed = await poll_until(source, 2)
        assert await poll_until(source, 1, within=0.5) == []
    finally:
        await source.stop()
    assert [record.data["n"] for record in resumed] == [3, 4]
    assert [record.offset for record in resumed] == [record.offset for record in everything[3:]]


@pytest.mark.parametrize("on_change", ["restart", "skip"])
async def test_an_object_replaced_while_read_is_restarted_or_skipped(bucket: Store, on_change: str) -> None:
    padding = "x" * 300
    await bucket.put("a.jsonl", _lines(*({"n": n, "pad": padding} for n in range(10))))
    await bucket.put("b.jsonl", _lines({"n": 100}))
    source = await _source(bucket, read_bytes=1024, max_line_bytes=1024, on_change=on_change)
    try:
        first = await source.poll()  # one range of 1024 bytes: the first three lines
        assert [record.data["n"] for record in first] == [0, 1, 2]
        await bucket.put("a.jsonl", _lines({"n": 50}, {"n": 51}))
        records = await poll_until(source, 3 if on_change == "restart" else 1)
    finally:
        await source.stop()
    if on_change == "restart":
        assert [record.data["n"] for record in records] == [50, 51, 100]
        assert records[0].offset["etag"] != first[0].offset["etag"]
    else:
        assert [record.data["n"] for record in records] == [100]


async def test_object_mode_and_long_lines(bucket: Store) -> None:
    await bucket.put("a.json", orjson.dumps({"whole": True}))
    await bucket.put("b.json", b"x" * 3000)
    source = await _source(bucket, mode="object", max_object_bytes=2000)
    try:
        whole, cut = await poll_until(source, 2)
    finally:
        await source.stop()
    assert whole.data == {"whole": True} and whole.offset["position"] == whole.offset["size"]
    assert cut.data == b"x" * 2000 and "over max_object_bytes" in str(cut.extensions["meshformaterror"])
    await bucket.put("c.txt", b"y" * 2500 + b"\nshort\n")
    source = await _source(bucket, prefix="c", format="text", read_bytes=2048, max_line_bytes=1024)
    try:
        pieces = await poll_until(source, 4)
    finally:
        await source.stop()
    assert [len(record.data) for record in pieces] == [1024, 1024, 452, 5]


# -- s3-source through the worker and the embedded mesh --------------------------------------------


def _worker_config(
    name: str, connector: str, mesh: EmbeddedMesh, tmp_path: Path, config: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "connector": connector,
        "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
        "registry": {"kind": "file", "path": str(tmp_path / "registry")},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "config": config,
        **sections,
    }


async def _ready(worker: WorkerProcess) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
        http.get(f"http://127.0.0.1:{worker.admin_port}/readyz") as answer,
    ):
        return answer.status


async def test_source_dead_letters_invalid_json_and_shows_not_ready_while_s3_is_down(bucket: Store, tmp_path: Path) -> None:
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    await bucket.put("a.jsonl", _lines({"n": 0}) + b"{not json\n" + _lines({"n": 2}))
    config = _worker_config(
        "s3-lines",
        S3Source.name,
        mesh,
        tmp_path,
        bucket.config(poll_interval=0.2),
        source={"topic": "lines", "checkpoint_interval": 0.2},
    )
    worker = WorkerProcess(S3Source, config, tmp_path)
    try:
        async with gathered(mesh, "lines", "s3-lines-dlq") as received:
            events, dead = received["lines"], received["s3-lines-dlq"]
            await worker.start(30)
            await _eventually(lambda: _true(len(events) == 2 and len(dead) == 1))
            bucket.moto.pause()
            await _eventually(lambda: _is(_ready(worker), 503))
            bucket.moto.resume()
            await _eventually(lambda: _is(_ready(worker), 200))
            await bucket.put("b.jsonl", _lines({"n": 3}))
            await _eventually(lambda: _true(len(events) == 3))
            assert await worker.terminate(30) == 0, worker.log_tail()
    finally:
        bucket.moto.resume()
        await worker.kill()
        await mesh.stop()
    assert [event.get_data()["n"] for event in events] == [0, 2, 3]
    reason = str(dead[0].get_attributes()["dlqreason"])
    assert "not valid JSON" in reason, reason
    assert bucket.moto.secret_key not in worker.log_path.read_text()


async def _true(value: bool) -> bool:
    return value


async def _is(status: Awaitable[int], expected: int) -> bool:
    try:
        return await status == expected
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_source_conformance(bucket: Store, tmp_path: Path) -> None:
    async def produce(start: int, count: int) -> None:
        await bucket.put(f"in/{start:08d}.jsonl", _lines(*({"n": n} for n in range(start, start + count))))

    await run_source_conformance(
        SourceHarness(
            connector=S3Source,
            config=lambda: bucket.config(prefix="in/", poll_interval=0.2),
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),
            kill_system=bucket.moto.pause,
            restart_system=bucket.moto.resume,
        ),
        workdir=tmp_path,
    )


# -- s3-sink ---------------------------------------------------------------------------------------


async def _sink(store: Store, **config: Any) -> S3Sink:
    sink = S3Sink(validate_model(S3SinkConfig, store.config(**config)))
    await sink.start(SinkContext(connector_name="s3-test"))
    return sink


def _event(n: int, subject: str = "orders", **fields: Any) -> ConnectorRecord:
    return ConnectorRecord(
        data={"n": n},
        id=f"e-{n}",
        source="/shop",
        type="order",
        subject=subject,
        datacontenttype="application/json",
        timestamp=datetime(2026, 12, 5, 9, 30, tzinfo=UTC),
        **fields,
    )


def _ids(objects: dict[str, bytes]) -> list[str]:
    return [orjson.loads(line)["id"] for body in objects.values() for line in body.splitlines()]


async def test_sink_writes_json_lines_under_time_and_topic_keys(bucket: Store) -> None:
    sink = await _sink(bucket, prefix="events/")
    try:
        rejections = await sink.put([_event(1), _event(2, subject="refunds"), _event(3), _event(4, subject="../etc")])
    finally:
        await sink.stop()
    objects = await bucket.objects()
    assert sorted(key.rsplit("/", 1)[0] for key in objects) == ["events/orders/2026/12/05/09", "events/refunds/2026/12/05/09"]
    orders = next(body for key, body in objects.items() if "/orders/" in key)
    assert [orjson.loads(line)["data"] for line in orders.splitlines()] == [{"n": 1}, {"n": 3}]
    assert [(r.record.id, "cannot be part of an object key" in r.reason) for r in rejections] == [("e-4", True)]


async def test_data_lines_are_the_data_alone_and_a_line_break_in_it_is_dead_lettered(bucket: Store) -> None:
    records = [
        ConnectorRecord(data={"n": 1}, id="d-1", source="/s", subject="raw"),
        ConnectorRecord(data="two\nlines", id="d-2", source="/s", subject="raw"),
        ConnectorRecord(data="plain text", id="d-3", source="/s", subject="raw"),
    ]
    sink = await _sink(bucket, payload="data")
    try:
        rejections = await sink.put(records)
    finally:
        await sink.stop()
    assert [(r.record.id, "line break" in r.reason) for r in rejections] == [("d-2", True)]
    assert list((await bucket.objects()).values()) == [b'{"n":1}\nplain text\n']


async def test_a_replayed_batch_overwrites_the_same_key(bucket: Store) -> None:
    batch = [_event(n) for n in range(5)]
    for _ in range(2):  # a fresh process each time: no memory of what was written
        sink = await _sink(bucket)
        try:
            await sink.put(batch)
        finally:
            await sink.stop()
    objects = await bucket.objects()
    assert len(objects) == 1 and _ids(objects) == [f"e-{n}" for n in range(5)]


@pytest.mark.parametrize(("replayed", "expected"), [(range(8), range(8)), (range(3), range(5))], ids=["longer", "shorter"])
async def test_a_replay_batched_differently_adds_only_what_the_object_lacks(
    bucket: Store, replayed: range, expected: range
) -> None:
    for batch in (range(5), replayed):  # the second, as after a crash before the ack: a new process
        sink = await _sink(bucket)
        try:
            await sink.put([_event(n) for n in batch])
        finally:
            await sink.stop()
    objects = await bucket.objects()
    assert len(objects) == 1 and _ids(objects) == [f"e-{n}" for n in expected]


async def test_large_batches_go_up_in_parts_and_complete_as_one_object(bucket: Store) -> None:
    big = [ConnectorRecord(data="z" * 1_000_000, id=f"big-{n}", source="/s", subject="blobs") for n in range(12)]
    sink = await _sink(bucket, payload="data", part_bytes=5 * 1024 * 1024)
    try:
        assert await sink.put(big) == []
    finally:
        await sink.stop()
    objects = await bucket.objects()
    assert [len(body) for body in objects.values()] == [12 * 1_000_001]
    assert await bucket.pending_uploads() == []


async def test_an_interrupted_multipart_upload_is_aborted_and_leaves_no_object(bucket: Store) -> None:
    big = [ConnectorRecord(data="z" * 4_000_000, id=f"big-{n}", source="/s", subject="blobs") for n in range(10)]
    sink = await _sink(bucket, payload="data", part_bytes=5 * 1024 * 1024)
    try:
        upload = asyncio.create_task(sink.put(big))
        for _ in range(3000):  # at most 30 s; the upload lasts well under a second
            if upload.done() or await bucket.pending_uploads():
                break
            await asyncio.sleep(0.01)
        assert not upload.done(), "the upload finished before it could be interrupted"
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
    finally:
        await sink.stop()
    assert await bucket.objects() == {}
    assert await bucket.pending_uploads() == []


async def test_sink_shows_not_ready_while_s3_is_down_and_recovers(bucket: Store, tmp_path: Path) -> None:
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    config = _worker_config(
        "s3-archive",
        S3Sink.name,
        mesh,
        tmp_path,
        bucket.config(),
        sink={"topics": ["orders"], "batch_size": 10, "linger_ms": 20, "retry_initial": 0.1, "retry_max": 1.0},
    )
    worker = WorkerProcess(S3Sink, config, tmp_path)

    async def publish(numbers: range) -> None:
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("orders", "pub"), request_timeout=5) as client:
            for n in numbers:
                attributes = {"id": f"e-{n}", "source": "/shop", "type": "order", "subject": "orders"}
                await client.publish(CloudEvent({**attributes, "datacontenttype": "application/json"}, {"n": n}))

    async def stored(count: int) -> bool:
        return sorted(_ids(await bucket.objects())) == sorted(f"e-{n}" for n in range(count))

    try:
        await worker.start(30)
        await publish(range(5))
        await _eventually(lambda: stored(5))
        bucket.moto.pause()
        await publish(range(5, 10))
        await _eventually(lambda: _is(_ready(worker), 503))
        bucket.moto.resume()
        await _eventually(lambda: _is(_ready(worker), 200))
        await _eventually(lambda: stored(10))
        assert await worker.terminate(30) == 0, worker.log_tail()
    finally:
        bucket.moto.resume()
        await worker.kill()
        await mesh.stop()
    assert bucket.moto.secret_key not in worker.log_path.read_text()


async def test_round_trip_through_the_mesh_keeps_every_event_and_its_id(bucket: Store, tmp_path: Path) -> None:
    """events -> mesh -> s3-sink -> bucket -> s3-source -> mesh: the same ids and data come back."""
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    back: list[CloudEvent] = []
    sink_config = _worker_config(
        "s3-archive",
        S3Sink.name,
        mesh,
        tmp_path / "sink",
        bucket.config(prefix="archive/"),
        sink={"topics": ["orders"], "batch_size": 7, "linger_ms": 20},
    )
    source_config = _worker_config(
        "s3-replay",
        S3Source.name,
        mesh,
        tmp_path / "source",
        bucket.config(prefix="archive/", format="cloudevents", poll_interval=0.2),
        source={"topic": "replayed", "allowed_topics": ["orders"]},
    )
    sink, source = WorkerProcess(S3Sink, sink_config, tmp_path), WorkerProcess(S3Source, source_config, tmp_path)
    reader = asyncio.create_task(gather_events(mesh, "orders", back))
    sent = []
    try:
        await sink.start(30)
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("orders", "pub"), request_timeout=5) as client:
            for n in range(30):
                attributes = {"id": f"e-{n}", "source": "/shop", "type": "order", "subject": "orders"}
                event = CloudEvent({**attributes, "datacontenttype": "application/json"}, {"n": n, "text": "ünïcode"})
                await client.publish(event)
                sent.append(event)

        async def archived() -> bool:
            return len(_ids(await bucket.objects())) == 30

        await _eventually(archived)
        assert await sink.terminate(30) == 0, sink.log_tail()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        back.clear()  # what the sink consumed was read too: keep only what the source publishes
        reader = asyncio.create_task(gather_events(mesh, "orders", back))
        await source.start(30)
        await _eventually(lambda: _true(len({event.get_id() for event in back}) == 30))
        assert await source.terminate(30) == 0, source.log_tail()
    finally:
        await sink.kill()
        await source.kill()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await mesh.stop()
    returned = {event.get_id(): (event.get_source(), event.get_data()) for event in back}
    assert returned == {event.get_id(): (event.get_source(), event.get_data()) for event in sent}


async def test_sink_conformance(bucket: Store, tmp_path: Path) -> None:
    async def read() -> list[str]:
        return _ids(await bucket.objects())

    await run_sink_conformance(
        SinkHarness(
            connector=S3Sink,
            config=lambda: bucket.config(prefix="archive/"),
            read=read,
            kill_system=bucket.moto.pause,
            restart_system=bucket.moto.resume,
        ),
        workdir=tmp_path,
    )


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{topic}/{year}.jsonl", "must hold {batch}"),
        ("{data[id]}/{batch}", "not a placeholder"),
        ("{topic}/{batch:>10}", "not a placeholder"),
        ("a b/{batch}", "literal text"),
        ("/{topic}/{batch}", "must not start with '/'"),
        ("{topic}/../{batch}", "'..'"),
    ],
)
def test_an_unsafe_key_template_fails_at_load_naming_the_key(template: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        validate_model(S3SinkConfig, {"bucket": "b-1", "key_template": template}, prefix="config")
    assert info.value.key == "config.key_template"


async def test_a_missing_bucket_fails_at_start_naming_the_key_or_is_created(moto: MotoS3Server) -> None:
    store = Store(moto, f"missing-bucket-{next(_buckets)}")
    with pytest.raises(ConfigError, match="does not exist") as info:
        await _sink(store)
    assert info.value.key == "config.bucket"
    sink = await _sink(store, create_bucket=True)
    try:
        assert await sink.put([_event(1)]) == []
    finally:
        await sink.stop()
    assert _ids(await store.objects()) == ["e-1"]


def test_bucket_names_and_credentials_are_checked_and_hidden() -> None:
    with pytest.raises(ConfigError) as info:
        validate_model(S3SourceConfig, {"bucket": "Not_A_Bucket"}, prefix="config")
    assert info.value.key == "config.bucket"
    config = validate_model(S3SinkConfig, {"bucket": "b-1", "secret_access_key": "very-secret-key"})
    assert "very-secret-key" not in repr(config)
