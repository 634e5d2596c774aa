"""Apache EventMesh's Java SDK (TCP, CloudEvents flavour) against meshconnect, both ways.

The Java side is the released ``eventmesh-sdk-java`` from Maven Central driven by ``SdkPeer.java``;
the mesh is meshconnect's embedded mesh. Each test counts what arrived, compares the fields and
counts duplicates: proof that the embedded mesh and meshconnect's client answer as Java expects.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloudevents.core.v1.event import CloudEvent

from runtime.client import MeshClient, PushedEvent, user_agent_for
from runtime.errors import HelloRefusedError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import Command, SubscriptionMode, SubscriptionType
from tests.interop.sdk import JavaPeer, events_of
from tests.mesh.process import MeshProcess
from tests.servers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FAST = {"request_timeout": 10.0, "backoff_initial": 0.05, "backoff_max": 0.5}
#: The only content type the Java SDK can serialise an event under (it looks its format up by it).
JAVA_CONTENT_TYPE = "application/cloudevents+json"
NON_BMP = "clef 𝄞, emoji 😀, han 𠀀"


def client(mesh: EmbeddedMesh, group: str, purpose: str) -> MeshClient:
    return MeshClient(mesh.address, user_agent_for(group, purpose), **FAST)  # type: ignore[arg-type]


def java_event(number: int, topic: str) -> dict[str, Any]:
    """A structured CloudEvent as a Java publisher sends one: JSON data of several kinds, extensions."""
    data: Any = [
        {"n": number, "text": NON_BMP, "nested": {"list": [1, 2.5, None, True]}},
        f"{number}: {NON_BMP}",
        number,
        [number, "x", {"y": False}],
    ][number % 4]
    extensions = {f"ext{index}": f"value-{number}-{index}" for index in range(number % 12)}
    return {
        "specversion": "1.0",
        "id": f"java-{number}",
        "source": "/interop/java",
        "type": "interop.java",
        "subject": topic,
        "datacontenttype": JAVA_CONTENT_TYPE,
        "data": data,
        **extensions,
    }


def python_event(number: int, topic: str) -> CloudEvent:
    """An event of one of every shape meshconnect carries: JSON, text, XML, binary, no data, many extensions."""
    shape = number % 6
    content_type, data = [
        ("application/json", {"n": number, "text": NON_BMP}),
        ("text/plain; charset=utf-8", f"text {number}: {NON_BMP}"),
        ("application/xml", f"<order n='{number}'>{NON_BMP}</order>"),
        ("application/octet-stream", bytes(range(256)) + number.to_bytes(4, "big")),
        (None, None),
        ("application/json", {"n": number}),
    ][shape]
    attributes: dict[str, Any] = {
        "id": f"py-{number}",
        "source": "/interop/python",
        "type": "interop.python",
        "specversion": "1.0",
        "subject": topic,
        "time": datetime(2026, 12, 5, tzinfo=UTC),
    }
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    if shape == 5:
        attributes.update({f"x{index}": f"v{index}" for index in range(30)})
    return CloudEvent(attributes=attributes, data=data)


def original_from_java_view(seen: dict[str, Any]) -> tuple[str | None, Any]:
    """(content type, data) of an event meshconnect published, as a Java consumer can restore them."""
    assert seen["datacontenttype"] == JAVA_CONTENT_TYPE
    encoding = seen["meshdataenc"]
    data = seen.get("data")
    content_type = seen.get("meshcontenttype")
    if encoding == "json":
        return content_type, data
    if encoding == "text":
        return content_type, data
    if encoding == "base64":
        return content_type, base64.b64decode(data)
    assert encoding == "none" and data == ""
    return content_type, None


async def pushes(subscriber: MeshClient, count: int, seconds: float = 60.0) -> list[PushedEvent]:
    received: list[PushedEvent] = []
    async with asyncio.timeout(seconds):
        async for pushed in subscriber.pushed():
            received.append(pushed)
            await pushed.ack()
            if len(received) == count:
                break
    return received


def duplicates(ids: list[str]) -> int:
    return sum(count - 1 for count in Counter(ids).values())


def extensions_of(event: dict[str, Any]) -> dict[str, Any]:
    core = {"specversion", "id", "source", "type", "subject", "datacontenttype", "data", "data_base64", "time"}
    return {key: value for key, value in event.items() if key not in core}


# -- pub/sub, both ways ------------------------------------------------------------------------


async def test_java_publisher_to_meshconnect_subscriber(mesh: EmbeddedMesh, java_classpath: str, logs: Path) -> None:
    sent = [java_event(number, "java-to-py") for number in range(1000)]
    async with client(mesh, "py-sinks", "sub") as subscriber:
        await subscriber.subscribe("java-to-py")
        await subscriber.listen()
        async with JavaPeer(java_classpath, "publish", mesh.port, logs) as publisher:
            await publisher.send(sent)
            acks = await publisher.until_done()
        received = await pushes(subscriber, len(sent))

    assert [(ack["kind"], ack["code"]) for ack in acks] == [("ack", 0)] * len(sent)
    ids = [pushed.event.get_id() for pushed in received]
    assert duplicates(ids) == 0 and sorted(ids) == sorted(event["id"] for event in sent)
    by_id = {pushed.event.get_id(): pushed.event for pushed in received}
    for expected in sent:
        got = by_id[expected["id"]]
        assert got.get_source() == expected["source"] and got.get_type() == expected["type"]
        assert got.get_subject() == "java-to-py"
        assert got.get_datacontenttype() == JAVA_CONTENT_TYPE
        assert got.get_data() == expected["data"]
        assert {key: got.get_extension(key) for key in extensions_of(expected)} == extensions_of(expected)


async def test_meshconnect_publisher_to_java_subscriber(mesh: EmbeddedMesh, java_classpath: str, logs: Path) -> None:
    sent = [python_event(number, "py-to-java") for number in range(1000)]
    async with JavaPeer(java_classpath, "subscribe", mesh.port, logs, topic="py-to-java", group="java-sinks", count=1000) as java:
        await java.expect("ready")
        async with client(mesh, "py-sources", "pub") as publisher:
            for event in sent:
                await publisher.publish(event)
        seen = events_of(await java.until_done())

    ids = [event["id"] for event in seen]
    assert duplicates(ids) == 0 and sorted(ids) == sorted(event.get_id() for event in sent)
    by_id = {event["id"]: event for event in seen}
    for expected in sent:
        got = by_id[expected.get_id()]
        assert (got["source"], got["type"], got["subject"]) == (expected.get_source(), expected.get_type(), "py-to-java")
        assert original_from_java_view(got) == (expected.get_datacontenttype(), expected.get_data())
        wanted_extensions = extensions_of(expected.get_attributes())
        assert {key: got[key] for key in wanted_extensions} == wanted_extensions


async def test_broadcast_both_ways(mesh: EmbeddedMesh, java_classpath: str, logs: Path) -> None:
    from_python = [python_event(number, "alerts-py") for number in range(50)]
    from_java = [java_event(number, "alerts-java") for number in range(50)]
    async with (
        JavaPeer(java_classpath, "subscribe", mesh.port, logs, topic="alerts-py", mode="BROADCASTING", count=50) as java_one,
        JavaPeer(java_classpath, "subscribe", mesh.port, logs, topic="alerts-py", mode="BROADCASTING", count=50) as java_two,
        client(mesh, "watchers", "sub") as py_one,
        client(mesh, "watchers", "sub") as py_two,
    ):
        for subscriber in (py_one, py_two):
            await subscriber.subscribe("alerts-java", SubscriptionMode.BROADCASTING)
            await subscriber.listen()
        await java_one.expect("ready")
        await java_two.expect("ready")
        async with client(mesh, "announcers", "pub") as publisher:
            for event in from_python:
                await publisher.broadcast(event)
        async with JavaPeer(java_classpath, "broadcast", mesh.port, logs) as java_publisher:
            await java_publisher.send(from_java)
            assert {ack["code"] for ack in await java_publisher.until_done()} == {0}
        for java in (java_one, java_two):
            ids = [event["id"] for event in events_of(await java.until_done())]
            assert sorted(ids) == sorted(event.get_id() for event in from_python)
        for subscriber in (py_one, py_two):
            got = await pushes(subscriber, 50)
            assert {pushed.command for pushed in got} == {Command.BROADCAST_MESSAGE_TO_CLIENT}
            assert sorted(pushed.event.get_id() for pushed in got) == sorted(event["id"] for event in from_java)


# -- request-reply -----------------------------------------------------------------------------


async def test_meshconnect_requester_java_responder(mesh: EmbeddedMesh, java_classpath: str, logs: Path) -> None:
    async with JavaPeer(java_classpath, "respond", mesh.port, logs, topic="questions", group="java-answerers", count=3) as java:
        await java.expect("ready")
        async with client(mesh, "askers", "pub") as asker:
            for number in range(3):
                question = CloudEvent(
                    attributes={
                        "id": f"q-{number}",
                        "source": "/interop",
                        "type": "interop.question",
                        "specversion": "1.0",
                        "subject": "questions",
                        "datacontenttype": "text/plain",
                    },
                    data=f"question {number}",
                )
                answer = await asker.request(question, 15.0)
                # Built from the request, the answer keeps its meshcontenttype and meshdataenc: text again.
                assert (answer.get_datacontenttype(), answer.get_data()) == ("text/plain", f"re:question {number}")


async def test_java_requester_meshconnect_responder(mesh: EmbeddedMesh, java_classpath: str, logs: Path) -> None:
    async with client(mesh, "py-answerers", "sub") as answerer:
        await answerer.subscribe("asks", SubscriptionMode.CLUSTERING, SubscriptionType.SYNC)
        await answerer.listen()

        async def answer(count: int) -> None:
            async with asyncio.timeout(60):
                answered = 0
                async for question in answerer.pushed():
                    assert question.command is Command.REQUEST_TO_CLIENT
                    data = question.event.get_data()
                    reply = CloudEvent(
                        attributes={**question.event.get_attributes(), "id": f"answer-{question.event.get_id()}"},
                        data={"answer": data},
                    )
                    await question.reply(reply)
                    await question.ack()
                    answered += 1
                    if answered == count:
                        return

        responder = asyncio.create_task(answer(3))
        async with JavaPeer(java_classpath, "request", mesh.port, logs) as java:
            await java.send(java_event(number, "asks") for number in range(3))
            responses = await java.until_done()
        await responder
    assert [response["kind"] for response in responses] == ["response"] * 3
    for number, response in enumerate(responses):
        body = json.loads(response["body"]) if response["body"].startswith("{") else response["body"]
        assert f"answer-java-{number}" in json.dumps(body)


# -- size, sessions, auth ----------------------------------------------------------------------


async def test_a_burst_of_large_events_reaches_a_java_subscriber(mesh: EmbeddedMesh, java_classpath: str, logs: Path) -> None:
    """The SDK acks by echoing each whole event: the mesh must not flood it with large pushes."""
    big = [python_event(0, "big") for _ in range(100)]
    events = [
        CloudEvent(attributes={**event.get_attributes(), "id": f"big-{number}"}, data={"pad": "x" * 200_000, "n": number})
        for number, event in enumerate(big)
    ]
    async with JavaPeer(java_classpath, "subscribe", mesh.port, logs, topic="big", group="java-big", count=100) as java:
        await java.expect("ready")
        async with client(mesh, "big-publishers", "pub") as publisher:
            for event in events:
                await publisher.publish(event)
        seen = events_of(await java.until_done())
    assert sorted(event["id"] for event in seen) == sorted(f"big-{number}" for number in range(100))


@pytest.fixture
async def guarded_mesh() -> AsyncIterator[EmbeddedMesh]:
    server = EmbeddedMesh(port=0, users={"interop": "s3cret"})
    await server.start()
    yield server
    await server.stop()


async def test_authentication_with_the_java_sdk(guarded_mesh: EmbeddedMesh, java_classpath: str, logs: Path) -> None:
    async with JavaPeer(java_classpath, "publish", guarded_mesh.port, logs, password="wrong") as refused:
        await refused.send([java_event(1, "guarded")])
        # The SDK does not read HELLO's answer; the mesh closes the session, so the publish fails.
        assert [line["kind"] for line in await refused.until_done()] == ["error"]
    async with JavaPeer(java_classpath, "publish", guarded_mesh.port, logs, password="s3cret") as allowed:
        await allowed.send([java_event(1, "guarded")])
        assert [ack["code"] for ack in await allowed.until_done()] == [0]
    with pytest.raises(HelloRefusedError):
        async with MeshClient(guarded_mesh.address, user_agent_for("py", "pub", password="wrong"), **FAST):  # type: ignore[arg-type]
            pass


# -- connectors between Java peers -------------------------------------------------------------


async def test_demo_connectors_with_java_peers_on_a_running_mesh(mesh: EmbeddedMesh, java_classpath: str, logs: Path) -> None:
    """`meshconnect demo --mesh`: http-source -> mesh -> Java subscriber, Java publisher -> mesh -> file-sink."""
    http_port, out = free_port(), logs / "out"
    async with JavaPeer(java_classpath, "subscribe", mesh.port, logs, topic="demo", group="java-watchers", count=6) as java:
        await java.expect("ready")
        demo = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "runtime.cli", "demo", "--mesh", mesh.address, "--http-port", str(http_port)),
            *("--out", str(out), "--state-dir", str(logs / "state")),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            await _wait_for_banner(demo)
            url = f"http://127.0.0.1:{http_port}/events"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                for number in range(3):
                    headers = {"ce-specversion": "1.0", "ce-id": f"http-{number}", "ce-source": "/curl", "ce-type": "t"}
                    async with http.post(url, json={"n": number}, headers=headers) as response:
                        assert response.status == 200, await response.text()
            async with JavaPeer(java_classpath, "publish", mesh.port, logs) as publisher:
                await publisher.send(java_event(number, "demo") for number in range(3))
                assert [ack["code"] for ack in await publisher.until_done()] == [0, 0, 0]
            expected = {"http-0", "http-1", "http-2", "java-0", "java-1", "java-2"}
            async with asyncio.timeout(60):
                while {line["id"] for line in _written(out)} != expected:  # noqa: ASYNC110 - a file has no event to wait on
                    await asyncio.sleep(0.1)
            assert sorted(event["id"] for event in events_of(await java.until_done())) == sorted(expected)
            written = {line["id"]: line for line in _written(out)}
            assert written["java-1"]["data"] == java_event(1, "demo")["data"]
            assert written["http-2"]["data"] == {"n": 2}
        finally:
            demo.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(demo.wait(), 60) == 0


async def _wait_for_banner(demo: asyncio.subprocess.Process) -> None:
    assert demo.stdout is not None
    banner = b""
    async with asyncio.timeout(60):
        while b"Ctrl-C" not in banner:
            line = await demo.stdout.readline()
            assert line, f"the demo ended before it was ready: {banner.decode()}"
            banner += line


def _written(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(out.glob("events-*.jsonl")) for line in path.read_bytes().splitlines() if line]


@pytest.mark.timeout(300)
async def test_java_sdk_session_outlives_an_idle_minute_and_a_mesh_kill(java_classpath: str, logs: Path) -> None:
    """Heartbeats (every 30 s from the SDK) keep an idle session past the mesh's 40 s timeout; after a
    kill -9 and restart of the mesh the SDK reconnects, subscribes again and receives."""
    mesh = MeshProcess(logs, extra_args=["--session-timeout", "40"])
    mesh.start()
    try:
        address = f"127.0.0.1:{mesh.port}"
        async with JavaPeer(
            java_classpath, "subscribe", mesh.port, logs, topic="life", group="java-life", count=2, idle_ms=200_000
        ) as java:
            await java.expect("ready")
            loop = asyncio.get_running_loop()
            idle_until = loop.time() + 65
            while loop.time() < idle_until:  # noqa: ASYNC110 - the idle minute is what is under test
                await asyncio.sleep(1)
            async with MeshClient(address, user_agent_for("life-pub", "pub"), **FAST) as publisher:  # type: ignore[arg-type]
                await publisher.publish(python_event(0, "life"))
            assert (await java.expect("event"))["event"]["id"] == "py-0", "the idle session was kept"

            mesh.kill()
            mesh.start()
            async with MeshClient(address, user_agent_for("life-pub", "pub"), **FAST) as publisher:  # type: ignore[arg-type]
                await publisher.publish(python_event(1, "life"))
            # The SDK notices the lost connection at its next heartbeat (30 s) and subscribes again.
            assert (await java.expect("event", timeout=90))["event"]["id"] == "py-1"
    finally:
        mesh.ensure_stopped()
