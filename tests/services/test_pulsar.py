"""pulsar-source and pulsar-sink against a throwaway Pulsar standalone broker, driven directly."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pulsar
import pulsar.asyncio
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from runtime import record_to_json
from runtime.connector import SinkContext, SourceContext
from runtime.errors import ConfigError, RetriableError
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, SourceHarness, poll_until, run_sink_conformance, run_source_conformance
from services.pulsar.client import pulsar_error
from services.pulsar.sink.connector import PulsarSink, PulsarSinkConfig
from services.pulsar.source.connector import PulsarSource, PulsarSourceConfig
from tests.servers import PulsarServer

# The first test also resolves the broker from Maven (about 500 MB on a machine that never did) and starts it.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def pulsar_server() -> Iterator[PulsarServer]:
    """One broker for the module: tests that kill it start it again before they end."""
    server = PulsarServer.running()
    yield server  # type: ignore[misc]
    server.stop()


def _event(n: int, subject: str | None = "orders", **overrides: Any) -> ConnectorRecord:
    return ConnectorRecord(
        **{"data": {"n": n}, "id": f"id-{n}", "source": "/tests", "type": "t", "subject": subject, **overrides}
    )


def _topic() -> str:
    return f"persistent://public/default/t{uuid.uuid4().hex[:8]}"


def _produce(url: str, topic: str, payloads: list[bytes]) -> None:
    client = pulsar.Client(url, operation_timeout_seconds=10)
    try:
        producer = client.create_producer(topic)
        for payload in payloads:
            producer.send(payload)
    finally:
        client.close()


def _read_all(url: str, topic: str) -> list[pulsar.Message]:
    """Every message of ``topic`` from the start, through a reader that leaves no subscription behind."""
    client = pulsar.Client(url, operation_timeout_seconds=10)
    try:
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        messages = []
        while reader.has_message_available():
            messages.append(reader.read_next(5000))
        return messages
    finally:
        client.close()


async def _source(url: str, topic: str, **config: Any) -> PulsarSource:
    settings = {"service_url": url, "topics": [topic], "subscription": "test", **config}
    source = PulsarSource(PulsarSourceConfig.model_validate(settings))
    await source.start(SourceContext(connector_name="pulsar-test", committed_offsets={}))
    return source


async def _sink(url: str, **config: Any) -> PulsarSink:
    sink = PulsarSink(PulsarSinkConfig.model_validate({"service_url": url, **config}))
    await sink.start(SinkContext(connector_name="pulsar-test"))
    return sink


async def test_source_acks_on_commit_and_a_new_consumer_gets_the_rest(pulsar_server: PulsarServer) -> None:
    topic = _topic()
    source = await _source(pulsar_server.url, topic)
    _produce(pulsar_server.url, topic, [record_to_json(_event(n, subject=None)) for n in range(5)])
    first = await poll_until(source, 5)
    assert [record.id for record in first] == [f"id-{n}" for n in range(5)]
    assert first[0].partition == {"topic": topic}
    assert set(first[0].offset) == {"ledger", "entry", "batch"}
    await source.commit(first[:2])
    await source.stop()
    source = await _source(pulsar_server.url, topic)
    try:
        again = await poll_until(source, 3)  # the subscription's cursor: what was not acknowledged comes back
        await source.commit(again)
        assert await poll_until(source, 1, within=1.5) == []
    finally:
        await source.stop()
    assert [record.id for record in again] == ["id-2", "id-3", "id-4"]
    assert [record.offset for record in again] == [record.offset for record in first[2:]]


async def test_source_derives_stable_ids_for_plain_payloads(pulsar_server: PulsarServer) -> None:
    topic = _topic()
    _produce(pulsar_server.url, topic, [b'{"a": 1}', b"not json"])
    source = await _source(pulsar_server.url, topic, format="json")
    try:
        records = await poll_until(source, 2)
    finally:
        await source.stop()  # nothing committed: a second reader sees the same positions
    source = await _source(pulsar_server.url, topic, format="json")
    try:
        replayed = await poll_until(source, 2)
    finally:
        await source.stop()
    assert records[0].data == {"a": 1} and records[1].data == b"not json"  # invalid JSON travels on, to be dead-lettered
    assert [(r.partition, r.offset) for r in records] == [(r.partition, r.offset) for r in replayed]


async def test_source_is_retriable_while_the_broker_is_down_and_loses_nothing(pulsar_server: PulsarServer) -> None:
    topic = _topic()
    source = await _source(pulsar_server.url, topic, timeout=3)
    try:
        _produce(pulsar_server.url, topic, [record_to_json(_event(n, subject=None)) for n in range(10)])
        first = await poll_until(source, 10)
        await source.commit(first[:5])
        pulsar_server.kill()
        await source.commit(first[5:])  # acknowledgements into the void: logged, redelivered later
        with pytest.raises(RetriableError, match="unreachable"):
            await source.poll()
        pulsar_server.start()
        _produce(pulsar_server.url, topic, [record_to_json(_event(n, subject=None)) for n in range(10, 15)])
        seen = {record.id for record in first}
        rest: list[ConnectorRecord] = []
        for _ in range(30):  # bounded: the client reconnects within a few seconds
            if seen >= {f"id-{n}" for n in range(15)}:
                break
            try:
                batch = await poll_until(source, 1, within=1)
            except RetriableError:
                continue
            await source.commit(batch)
            rest += batch
            seen |= {record.id for record in batch}
    finally:
        await source.stop()
    assert seen == {f"id-{n}" for n in range(15)}


async def test_source_reports_how_far_behind_the_topic_it_reads(pulsar_server: PulsarServer) -> None:
    topic = _topic()
    settings = {"service_url": pulsar_server.url, "topics": [topic], "subscription": "lag"}
    source = PulsarSource(PulsarSourceConfig.model_validate(settings))
    await source.start(SourceContext("pulsar-lag-test", {}, connector_type="pulsar-source"))
    labels = {"connector": "pulsar-source", "name": "pulsar-lag-test"}
    try:
        _produce(pulsar_server.url, topic, [record_to_json(_event(1, subject=None))])
        records = await poll_until(source, 1)
        lag = REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels)
        assert lag is not None and 0 < lag < 60  # read after the broker stored it, on this host's clock
        await source.commit(records)
        assert await source.poll() == []
        assert REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels) == 0
    finally:
        await source.stop()


async def test_sink_publishes_payload_and_cloudevent_properties(pulsar_server: PulsarServer) -> None:
    topic = _topic()
    sink = await _sink(pulsar_server.url, topic=topic, payload="data")
    events = [_event(1), _event(2, data="a,b", datacontenttype="text/csv"), _event(3, data=None)]
    try:
        assert await sink.put(events) == []
    finally:
        await sink.stop()
    messages = _read_all(pulsar_server.url, topic)
    assert [message.data() for message in messages] == [b'{"n":1}', b"a,b", b""]
    assert [message.properties() for message in messages] == [
        {"content-type": content_type, "ce_id": f"id-{n}", "ce_source": "/tests", "ce_type": "t"}
        for n, content_type in ((1, "application/json"), (2, "text/csv"), (3, "application/octet-stream"))
    ]
    assert messages[0].event_timestamp() == round(events[0].timestamp.timestamp() * 1000)


async def test_sink_routes_by_subject_and_the_source_reads_the_cloudevents_back(pulsar_server: PulsarServer) -> None:
    prefix = f"r{uuid.uuid4().hex[:6]}"
    sink = await _sink(pulsar_server.url, topic=f"persistent://public/default/{prefix}-{{topic}}")
    try:
        rejected = await sink.put([_event(1, subject="a"), _event(2, subject="b"), _event(3, subject="a")])
    finally:
        await sink.stop()
    assert rejected == []
    source = await _source(pulsar_server.url, f"persistent://public/default/{prefix}-a")
    try:
        records = await poll_until(source, 2)
    finally:
        await source.stop()
    assert [(r.id, r.source, r.type, r.subject, r.data) for r in records] == [
        ("id-1", "/tests", "t", "a", {"n": 1}),
        ("id-3", "/tests", "t", "a", {"n": 3}),
    ]
    assert [orjson.loads(m.data())["id"] for m in _read_all(pulsar_server.url, f"persistent://public/default/{prefix}-b")] == [
        "id-2"
    ]


async def test_sink_with_more_topics_in_a_batch_than_open_producers_publishes_them_all(pulsar_server: PulsarServer) -> None:
    prefix = f"m{uuid.uuid4().hex[:6]}"
    sink = await _sink(pulsar_server.url, topic=f"persistent://public/default/{prefix}-{{topic}}", max_producers=2)
    try:
        events = [_event(n, subject=subject) for n, subject in enumerate("abcab")]
        assert await sink.put(events) == []
    finally:
        await sink.stop()
    stored = {
        subject: [
            orjson.loads(m.data())["id"] for m in _read_all(pulsar_server.url, f"persistent://public/default/{prefix}-{subject}")
        ]
        for subject in "abc"
    }
    assert stored == {"a": ["id-0", "id-3"], "b": ["id-1", "id-4"], "c": ["id-2"]}


async def test_sink_dead_letters_events_whose_subject_or_topic_cannot_take_them(pulsar_server: PulsarServer) -> None:
    namespace = f"public/closed{uuid.uuid4().hex[:6]}"
    _admin(pulsar_server, "PUT", f"/admin/v2/namespaces/{namespace}")
    _admin(pulsar_server, "POST", f"/admin/v2/namespaces/{namespace}/autoTopicCreation", {"allowAutoTopicCreation": False})
    sink = await _sink(pulsar_server.url, topic=f"persistent://{namespace}/{{topic}}")
    try:
        rejections = await sink.put(
            [_event(1, subject="../default/x"), _event(2, subject="nothing-here"), _event(3, subject="..")]
        )
    finally:
        await sink.stop()
    not_a_name = "not a topic name (one name of letters, digits, -_.=: and not dots alone)"
    assert [(r.record.id, r.reason) for r in rejections] == [
        ("id-1", f"subject '../default/x' makes 'persistent://{namespace}/../default/x', {not_a_name}"),
        ("id-3", f"subject '..' makes 'persistent://{namespace}/..', {not_a_name}"),
        (
            "id-2",
            f"not published to persistent://{namespace}/nothing-here: "
            "its topic does not exist and the broker does not create topics",
        ),
    ]


async def test_sink_while_the_broker_is_down_is_retriable_and_recovers(pulsar_server: PulsarServer) -> None:
    topic = _topic()
    sink = await _sink(pulsar_server.url, topic=topic, timeout=3)
    try:
        assert await sink.put([_event(1)]) == []
        pulsar_server.kill()
        with pytest.raises(RetriableError, match="send"):
            await sink.put([_event(2)])
        pulsar_server.start()
        for _ in range(20):  # the worker's retry loop
            try:
                assert await sink.put([_event(2)]) == []
                break
            except RetriableError:
                continue
    finally:
        await sink.stop()
    ids = [orjson.loads(message.data())["id"] for message in _read_all(pulsar_server.url, topic)]
    assert ids[0] == "id-1" and "id-2" in ids


async def test_both_sides_over_tls_trust_the_given_ca_and_check_the_host_name(pulsar_server: PulsarServer) -> None:
    topic = _topic()
    ca_file = str(pulsar_server.ca_file)
    sink = await _sink(pulsar_server.tls_url, topic=topic, ca_file=ca_file)
    try:
        assert await sink.put([_event(1)]) == []
    finally:
        await sink.stop()
    source = await _source(pulsar_server.tls_url, topic, ca_file=ca_file)
    try:
        assert [record.id for record in await poll_until(source, 1)] == ["id-1"]
    finally:
        await source.stop()
    # a certificate from a CA not trusted, or not naming the host connected to, is refused
    wrong_host = pulsar_server.tls_url.replace("127.0.0.1", "localhost")
    for url, trusted in ((pulsar_server.tls_url, None), (wrong_host, ca_file)):
        sink = PulsarSink(PulsarSinkConfig.model_validate({"service_url": url, "topic": topic, "ca_file": trusted, "timeout": 2}))
        try:
            with pytest.raises(RetriableError, match="certificate verify failed"):
                await sink.start(SinkContext(connector_name="pulsar-test"))  # a fixed topic: its producer comes up now
        finally:
            await sink.stop()
    assert [orjson.loads(message.data())["id"] for message in _read_all(pulsar_server.url, topic)] == ["id-1"]


async def test_a_ca_file_that_is_not_there_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    sink = PulsarSink(PulsarSinkConfig.model_validate({"ca_file": str(tmp_path / "missing.pem")}))
    with pytest.raises(ConfigError) as refused:
        await sink.start(SinkContext(connector_name="pulsar-test"))
    assert refused.value.key == "config.ca_file"


def test_sink_config_names_a_topic_that_is_no_full_name() -> None:
    with pytest.raises(ValidationError, match="not a full topic name"):
        PulsarSinkConfig.model_validate({"topic": "orders-{topic}"})
    with pytest.raises(ValidationError, match="not a full topic name"):
        PulsarSinkConfig.model_validate({"topic": "persistent://public/default/{topic}/x"})


def _admin(server: PulsarServer, method: str, path: str, body: Any = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.admin_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_pulsar_sink_conformance(pulsar_server: PulsarServer, tmp_path: Path) -> None:
    topic = _topic()

    async def read() -> list[str]:
        messages = await asyncio.to_thread(_read_all, pulsar_server.url, topic)
        return [orjson.loads(message.data())["id"] for message in messages]

    await run_sink_conformance(
        SinkHarness(
            connector=PulsarSink,
            config=lambda: {"service_url": pulsar_server.url, "topic": topic, "timeout": 3},
            read=read,
            kill_system=pulsar_server.kill,
            restart_system=pulsar_server.start,
            idempotent=False,  # a topic keeps duplicates; consumers dedupe on ce_source + ce_id
        ),
        workdir=tmp_path,
    )


async def test_pulsar_source_conformance(pulsar_server: PulsarServer, tmp_path: Path) -> None:
    topic = _topic()

    async def produce(start: int, count: int) -> None:
        for _ in range(100):  # the broker may be restarting
            payloads = [record_to_json(_event(n, subject=None)) for n in range(start, start + count)]
            try:  # no CloudEvent subject: the topic is the worker's
                await asyncio.to_thread(_produce, pulsar_server.url, topic, payloads)
                return
            except pulsar.exceptions.PulsarException:
                await asyncio.sleep(0.2)

    await run_source_conformance(
        SourceHarness(
            connector=PulsarSource,
            config=lambda: {"service_url": pulsar_server.url, "topics": [topic], "timeout": 3},
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
            kill_system=pulsar_server.kill,
            restart_system=pulsar_server.start,
            source_settings={"topic": "conformance"},
        ),
        workdir=tmp_path,
    )


async def test_a_token_is_presented_and_a_refused_one_is_named_but_never_shown(pulsar_server: PulsarServer) -> None:
    topic = _topic()
    sink = await _sink(pulsar_server.url, topic=topic, token=pulsar_server.token("writer"))
    try:
        assert await sink.put([_event(1)]) == []
    finally:
        await sink.stop()
    forged = pulsar_server.token("writer", key=b"another key of thirty-two bytes!")
    settings = {"service_url": pulsar_server.url, "token": forged, "timeout": 2}
    sink = PulsarSink(PulsarSinkConfig.model_validate({**settings, "topic": topic}))
    source = PulsarSource(PulsarSourceConfig.model_validate({**settings, "topics": [topic]}))
    starts = ((sink.start(SinkContext("pulsar-test")), sink), (source.start(SourceContext("pulsar-test", {})), source))
    for start, connector in starts:
        try:
            # the broker refuses the connection; pulsar-client retries it and reports a timeout
            with pytest.raises(RetriableError, match=r"refuses config\.token") as refused:
                await start
        finally:
            await connector.stop()
        assert forged.split(".")[2] not in str(refused.value)


def test_credentials_the_client_reports_refused_are_a_config_error_naming_the_token() -> None:
    refused = pulsar_error("subscribe", pulsar.exceptions.AuthenticationError("Failed authentication"))
    assert isinstance(refused, ConfigError) and refused.key == "config.token"
    refused_async = pulsar_error("send", pulsar.asyncio.PulsarException(pulsar.Result.AuthorizationError))
    assert isinstance(refused_async, ConfigError) and refused_async.key == "config.token"
    assert isinstance(pulsar_error("subscribe", pulsar.exceptions.ConnectError("Connection refused")), RetriableError)
