"""Connector catalogue: each connector's events/s against its system's own raw client doing the same work.

Every connector is driven directly (sinks: ``put`` of batches of ``BATCH``; sources: ``poll`` +
``commit`` until ``EVENTS`` records were read), and its baseline is a plain client of the same
library doing the same job in the same run: the same payload bytes, the same batching or window,
the same durability (fsync, publisher confirms, PUBACKs, JetStream acks, committed rows, acks
upstream). Servers are throwaway (tests/servers/), RabbitMQ is the machine's, in a vhost of its
own. A connector whose system is missing is skipped. Each measure is the median of ``RUNS``.
The measures of the server-based systems are in catalogue_servers.py, what all share in
catalogue_common.py.

Prints one line per connector (events/s, raw events/s, ratio), then ``ratio: <median ratio>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.catalogue_common import (  # noqa: E402
    BATCH,
    EVENTS,
    HTTP_CONCURRENCY,
    RUNS,
    Measure,
    batches,
    make_records,
    sink_run,
    source_run,
    timed,
)
from bench.catalogue_servers import jetstream, kafka, mqtt, postgres, rabbitmq, redis  # noqa: E402
from runtime import record_to_json  # noqa: E402
from runtime.connector import SourceContext  # noqa: E402
from services.chat.client import ChatbotSink  # noqa: E402
from services.chat.dingtalk.connector import DingtalkSink  # noqa: E402
from services.chat.lark.connector import LarkSink  # noqa: E402
from services.chat.slack.connector import SlackSink  # noqa: E402
from services.chat.wecom.connector import WecomSink  # noqa: E402
from services.file_sink.connector import FileSink, FileSinkConfig  # noqa: E402
from services.file_source.connector import FileSource, FileSourceConfig  # noqa: E402
from services.http.knative.connector import KnativeSink, KnativeSinkConfig  # noqa: E402
from services.http.sink.connector import HttpSink, HttpSinkConfig  # noqa: E402
from services.http.source.connector import HttpSource, HttpSourceConfig  # noqa: E402
from services.prometheus_source.connector import PrometheusSource, PrometheusSourceConfig  # noqa: E402
from tests.servers import KafkaServer, MosquittoServer, NatsServer, PostgresServer, RedisServer, free_port  # noqa: E402

# -- file --------------------------------------------------------------------------------------


def file_sink(workdir: Path) -> tuple[Measure, Measure]:
    async def connector() -> float:
        directory = workdir / f"sink-{uuid.uuid4().hex[:6]}"
        return await sink_run(FileSink(FileSinkConfig(directory=str(directory))), make_records(EVENTS))

    async def raw() -> float:
        records = make_records(EVENTS)
        path = workdir / f"raw-{uuid.uuid4().hex[:6]}.jsonl"

        def append(handle: Any, chunk: bytes) -> None:
            handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

        with path.open("ab") as handle:
            started = time.perf_counter()
            for batch in batches(records):  # one fsync'ed write per batch, in a thread, as the connector does
                await asyncio.to_thread(append, handle, b"".join(record_to_json(record) + b"\n" for record in batch))
            return time.perf_counter() - started

    return connector, raw


def file_source(workdir: Path) -> tuple[Measure, Measure]:
    async def prepared() -> Path:
        path = workdir / f"in-{uuid.uuid4().hex[:6]}.log"
        path.write_bytes(b"".join(record_to_json(record) + b"\n" for record in make_records(EVENTS)))
        return path

    async def connector() -> float:
        path = await prepared()
        return await source_run(FileSource(FileSourceConfig(paths=[str(path)], format="cloudevents", batch_size=BATCH)), EVENTS)

    async def raw() -> float:
        path = await prepared()

        def read() -> int:
            with path.open("rb") as handle:
                return sum(1 for line in handle if orjson.loads(line))

        return await timed(asyncio.to_thread(read))

    return connector, raw


# -- http --------------------------------------------------------------------------------------


class _Receiver:
    """An HTTP endpoint answering every POST in this process: 204, or 200 with ``answer`` as JSON (a chat API's success)."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.answer = None if answer is None else orjson.dumps(answer)

    async def start(self) -> None:
        async def accept(request: web.Request) -> web.Response:
            await request.read()
            if self.answer is not None:
                return web.Response(body=self.answer, content_type="application/json")
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/in{tail:.*}", accept)  # any path under /in: an API base URL takes its method's path
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/in"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _post_all(url: str, bodies: list[tuple[dict[str, str], bytes]]) -> None:
    """POST every body, HTTP_CONCURRENCY at a time, each awaited for a 2xx."""
    connector = aiohttp.TCPConnector(limit=HTTP_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(HTTP_CONCURRENCY)

        async def post(headers: dict[str, str], body: bytes) -> None:
            async with gate, session.post(url, data=body, headers=headers) as response:
                await response.read()
                assert response.status < 300, response.status

        await asyncio.gather(*(post(headers, body) for headers, body in bodies))


def http_sink(workdir: Path) -> tuple[Measure, Measure]:
    receiver = _Receiver()

    async def connector() -> float:
        await receiver.start()
        try:
            return await sink_run(
                HttpSink(HttpSinkConfig(urls=[receiver.url], concurrency=HTTP_CONCURRENCY)), make_records(EVENTS)
            )
        finally:
            await receiver.stop()

    async def raw() -> float:
        await receiver.start()
        try:
            bodies = [({"content-type": "application/cloudevents+json"}, record_to_json(r)) for r in make_records(EVENTS)]
            started = time.perf_counter()
            for start in range(0, len(bodies), BATCH):
                await _post_all(receiver.url, bodies[start : start + BATCH])
            return time.perf_counter() - started
        finally:
            await receiver.stop()

    return connector, raw


def http_source(workdir: Path) -> tuple[Measure, Measure]:
    bodies = [({"content-type": "application/cloudevents+json"}, record_to_json(r)) for r in make_records(EVENTS)]

    async def connector() -> float:
        port = free_port()
        source = HttpSource(HttpSourceConfig(host="127.0.0.1", port=port, path="/in", queue_size=EVENTS, batch_size=BATCH))
        await source.start(SourceContext(connector_name="bench", committed_offsets={}))

        async def pump() -> None:  # the worker's part: poll, and commit what was polled
            while True:
                await source.commit(await source.poll())

        pumping = asyncio.create_task(pump())
        try:
            return await timed(_post_all(f"http://127.0.0.1:{port}/in", bodies))
        finally:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)
            await source.stop()

    async def raw() -> float:
        receiver = _Receiver()
        await receiver.start()
        try:
            return await timed(_post_all(receiver.url, bodies))
        finally:
            await receiver.stop()

    return connector, raw


# -- knative, chat robots, prometheus ---------------------------------------------------------------


def knative_sink(workdir: Path) -> tuple[Measure, Measure]:
    receiver = _Receiver()

    async def connector() -> float:
        await receiver.start()
        try:
            sink = KnativeSink(KnativeSinkConfig(url=receiver.url, concurrency=HTTP_CONCURRENCY))
            return await sink_run(sink, make_records(EVENTS))
        finally:
            await receiver.stop()

    async def raw() -> float:  # binary mode by hand: ce-* headers, the data as the body
        await receiver.start()
        try:
            bodies = [
                (
                    {
                        "ce-specversion": "1.0",
                        "ce-id": str(r.id),
                        "ce-source": str(r.source),
                        "ce-type": str(r.type),
                        "ce-subject": str(r.subject),
                        "ce-time": r.timestamp.isoformat(),
                        "content-type": "application/json",
                    },
                    orjson.dumps(r.data),
                )
                for r in make_records(EVENTS)
            ]
            started = time.perf_counter()
            for start in range(0, len(bodies), BATCH):
                await _post_all(receiver.url, bodies[start : start + BATCH])
            return time.perf_counter() - started
        finally:
            await receiver.stop()

    return connector, raw


_CHAT_TEMPLATE = "{subject} #{data[n]}: {data[text]}"
# Each robot's endpoint setting, success answer, and the JSON body a raw client would post for a text.
_CHATS: dict[str, tuple[type[ChatbotSink[Any]], dict[str, Any], dict[str, Any], Callable[[str], dict[str, Any]]]] = {
    "slack-sink": (
        SlackSink,
        {"token": "bench-token", "channel": "C1"},
        {"ok": True},
        lambda text: {"channel": "C1", "text": text},
    ),
    "dingtalk-sink": (
        DingtalkSink,
        {"access_token": "bench-token"},
        {"errcode": 0, "errmsg": "ok"},
        lambda text: {"msgtype": "text", "text": {"content": text}},
    ),
    "wecom-sink": (
        WecomSink,
        {"key": "bench-token"},
        {"errcode": 0, "errmsg": "ok"},
        lambda text: {"msgtype": "text", "text": {"content": text}},
    ),
    "lark-sink": (
        LarkSink,
        {"hook": "bench-token"},
        {"code": 0, "msg": "success"},
        lambda text: {"msg_type": "text", "content": {"text": text}},
    ),
}


def chat_sink(name: str) -> tuple[Measure, Measure]:
    """A chat robot sink with no pacing against a plain client posting the same messages one at a time."""
    sink_class, settings, answer, payload = _CHATS[name]
    receiver = _Receiver(answer)

    async def connector() -> float:
        await receiver.start()
        try:
            endpoint = {"api_url": receiver.url} if sink_class is SlackSink else {"webhook_url": receiver.url}
            config = sink_class.config_model.model_validate(
                {**settings, **endpoint, "template": _CHAT_TEMPLATE, "min_interval": 0}
            )
            return await sink_run(sink_class(config), make_records(EVENTS))
        finally:
            await receiver.stop()

    async def raw() -> float:
        await receiver.start()
        try:
            records = make_records(EVENTS)
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                for r in records:
                    text = _CHAT_TEMPLATE.format(subject=r.subject, data=r.data)
                    async with session.post(receiver.url, json=payload(text)) as response:
                        assert orjson.loads(await response.read()) == answer
                return time.perf_counter() - started
        finally:
            await receiver.stop()

    return connector, raw


_PROMETHEUS_SERIES = 8
_PROMETHEUS_T0 = 1_767_225_600  # seconds, on the 1 s step grid


def prometheus_source(workdir: Path) -> tuple[Measure, Measure]:
    """query_range windows of BATCH steps over 8 series, read into records vs fetched and parsed by hand."""
    steps = EVENTS // _PROMETHEUS_SERIES

    async def query_range(request: web.Request) -> web.Response:
        start, end = int(float(request.query["start"])), int(float(request.query["end"]))
        result = [
            {
                "metric": {"__name__": "bench", "instance": f"host-{i}:9100"},
                "values": [
                    [t, str(t % 97 + i)] for t in range(max(start, _PROMETHEUS_T0), min(end, _PROMETHEUS_T0 + steps - 1) + 1)
                ],
            }
            for i in range(_PROMETHEUS_SERIES)
        ]
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": result}})

    async def serving(measure: Callable[[str], Awaitable[float]]) -> float:
        app = web.Application()
        app.router.add_get("/api/v1/query_range", query_range)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            return await measure(f"http://127.0.0.1:{runner.addresses[0][1]}")
        finally:
            await runner.cleanup()

    async def connector() -> float:
        async def measure(url: str) -> float:
            config = PrometheusSourceConfig(
                url=url, query="bench", step=1, delay=0, interval=1, start=_PROMETHEUS_T0, max_points=BATCH
            )
            return await source_run(PrometheusSource(config), EVENTS)

        return await serving(measure)

    async def raw() -> float:
        async def measure(url: str) -> float:
            samples: list[tuple[float, dict[str, str], float]] = []
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                for start in range(_PROMETHEUS_T0, _PROMETHEUS_T0 + steps, BATCH):
                    params = {"query": "bench", "start": str(start), "end": str(start + BATCH - 1), "step": "1"}
                    async with session.get(f"{url}/api/v1/query_range", params=params) as response:
                        answer = orjson.loads(await response.read())
                    for series in answer["data"]["result"]:
                        samples.extend((float(t), series["metric"], float(v)) for t, v in series["values"])
                assert len(samples) >= EVENTS
                return time.perf_counter() - started

        return await serving(measure)

    return connector, raw


# -- the run -----------------------------------------------------------------------------------


async def _ratio(name: str, pair: tuple[Measure, Measure]) -> float:
    connector, raw = pair
    connector_seconds, raw_seconds = [], []
    for _ in range(RUNS):  # interleaved, so drift on a noisy machine hits both alike
        connector_seconds.append(await connector())
        raw_seconds.append(await raw())
    rate, raw_rate = EVENTS / statistics.median(connector_seconds), EVENTS / statistics.median(raw_seconds)
    ratio = rate / raw_rate
    print(f"{name:<16} {rate:>10.0f} events/s   raw {raw_rate:>10.0f} events/s   ratio {ratio:.2f}", flush=True)
    return ratio


def _start(server_class: type[Any]) -> Any:
    try:
        return server_class.running()
    except BaseException as exc:
        print(f"{server_class.name:<16} skipped: {exc}", flush=True)
        return None


def _vhost() -> tuple[str, str] | None:
    vhost = f"meshconnect-bench-{uuid.uuid4().hex[:6]}"
    try:
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"{'rabbitmq':<16} skipped: {exc}", flush=True)
        return None
    return vhost, f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # the raw aiomqtt baseline warns about its own pending publishes
    print(f"catalogue: {EVENTS} events per run, batches of {BATCH}, median of {RUNS} runs", flush=True)
    ratios: list[float] = []
    servers: list[Any] = []
    vhost = None
    with tempfile.TemporaryDirectory(prefix="meshconnect-bench-") as workdir:
        try:
            ratios.append(await _ratio("file-sink", file_sink(Path(workdir))))
            ratios.append(await _ratio("file-source", file_source(Path(workdir))))
            ratios.append(await _ratio("http-sink", http_sink(Path(workdir))))
            ratios.append(await _ratio("http-source", http_source(Path(workdir))))
            ratios.append(await _ratio("knative-sink", knative_sink(Path(workdir))))
            for chat in _CHATS:
                ratios.append(await _ratio(chat, chat_sink(chat)))
            ratios.append(await _ratio("prometheus-source", prometheus_source(Path(workdir))))
            systems = (
                ("redis", RedisServer, redis),
                ("mqtt", MosquittoServer, mqtt),
                ("nats", NatsServer, jetstream),
                ("kafka", KafkaServer, kafka),
                ("postgres", PostgresServer, postgres),
            )
            for system, server_class, pairs in systems:
                server = _start(server_class)
                if server is None:
                    continue
                servers.append(server)
                sink_pair, source_pair = pairs(server)
                ratios.append(await _ratio(f"{system}-sink", sink_pair))
                ratios.append(await _ratio(f"{system}-source", source_pair))
            vhost = _vhost()
            if vhost is not None:
                sink_pair, source_pair = rabbitmq(vhost[1])
                ratios.append(await _ratio("rabbitmq-sink", sink_pair))
                ratios.append(await _ratio("rabbitmq-source", source_pair))
        finally:
            for server in servers:
                server.stop()
            if vhost is not None:
                await asyncio.to_thread(
                    subprocess.run, ["rabbitmqctl", "delete_vhost", vhost[0]], check=False, capture_output=True, timeout=60
                )
    print(f"ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
