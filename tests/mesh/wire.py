"""A raw EventMesh TCP peer for the mesh tests: the codec over an asyncio stream, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from typing import Any

import orjson

from runtime.protocol.frames import (
    Command,
    FrameDecoder,
    Header,
    Package,
    Subscription,
    SubscriptionItem,
    SubscriptionMode,
    SubscriptionType,
    UserAgent,
    encode,
)

PUBLISH_PROPERTIES = {"protocolversion": "1.0", "protocoldesc": "tcp", "protocoltype": "cloudevents"}
PUSH_ACK = {
    Command.ASYNC_MESSAGE_TO_CLIENT: Command.ASYNC_MESSAGE_TO_CLIENT_ACK,
    Command.BROADCAST_MESSAGE_TO_CLIENT: Command.BROADCAST_MESSAGE_TO_CLIENT_ACK,
    Command.REQUEST_TO_CLIENT: Command.REQUEST_TO_CLIENT_ACK,
}
_seqs = itertools.count(1)


def event_body(topic: str, data: Any = None, *, event_id: str | None = None, **extensions: Any) -> bytes:
    event = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "/tests/mesh",
        "type": "test.event",
        "datacontenttype": "application/json",
        "subject": topic,
        **extensions,
        "data": {"n": 0} if data is None else data,
    }
    return orjson.dumps(event)


def user_agent(group: str = "group", purpose: str = "sub", **fields: Any) -> UserAgent:
    values: dict[str, Any] = {
        "env": "test",
        "subsystem": "5017",
        "pid": 1,
        "version": "2.0",
        "idc": "FT",
        "group": group,
        "purpose": purpose,
    }
    values.update(fields)
    return UserAgent(**values)


class Peer:
    """One TCP connection speaking raw frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.inbox: list[Package] = []

    @classmethod
    async def connect(cls, port: int) -> Peer:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        return cls(reader, writer)

    @classmethod
    async def hello(cls, port: int, group: str = "group", purpose: str = "sub", **fields: Any) -> Peer:
        peer = await cls.connect(port)
        answer = await peer.request(
            Package.with_json(Header(Command.HELLO_REQUEST, seq=peer.seq()), user_agent(group, purpose, **fields).json_fields())
        )
        assert answer.header.code == 0, answer.header.desc
        return peer

    @staticmethod
    def seq() -> str:
        return f"{next(_seqs):010d}"

    def send(self, package: Package) -> None:
        self.writer.write(encode(package))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def receive(self, within: float = 5.0) -> Package:
        """The next frame from the mesh."""
        async with asyncio.timeout(within):
            while not self.inbox:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the mesh closed the connection")
                self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    async def nothing_within(self, seconds: float) -> None:
        """Assert the mesh sends nothing for ``seconds``."""
        try:
            package = await self.receive(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {package.header.command.name} seq={package.header.seq}")

    async def closed_within(self, within: float = 5.0) -> list[Package]:
        """Wait until the mesh closes the connection; the frames it sent before."""
        received = []
        async with asyncio.timeout(within):
            while True:
                try:
                    received.append(await self.receive(within))
                except ConnectionError:
                    self.writer.close()
                    return received

    async def request(self, package: Package, within: float = 5.0) -> Package:
        """Send ``package`` and return the answer with its seq (pushes arriving first are kept)."""
        self.send(package)
        kept = []
        try:
            while True:
                answer = await self.receive(within)
                if answer.header.seq == package.header.seq and answer.header.command not in PUSH_ACK:
                    return answer
                kept.append(answer)
        finally:
            self.inbox[:0] = kept

    async def call(self, command: Command, body: Package | None = None) -> Package:
        return await self.request(Package(Header(command, seq=self.seq()), None))

    async def subscribe(
        self,
        topic: str,
        mode: SubscriptionMode = SubscriptionMode.CLUSTERING,
        kind: SubscriptionType = SubscriptionType.ASYNC,
        *,
        listen: bool = True,
    ) -> None:
        subscription = Subscription((SubscriptionItem(topic, mode, kind),))
        answer = await self.request(
            Package.with_json(Header(Command.SUBSCRIBE_REQUEST, seq=self.seq()), subscription.json_fields())
        )
        assert answer.header.code == 0, answer.header.desc
        if listen:
            answer = await self.call(Command.LISTEN_REQUEST)
            assert answer.header.code == 0, answer.header.desc

    def publish_package(
        self, body: bytes, command: Command = Command.ASYNC_MESSAGE_TO_SERVER, properties: dict[str, Any] | None = None
    ) -> Package:
        return Package(Header(command, seq=self.seq(), properties=PUBLISH_PROPERTIES if properties is None else properties), body)

    async def publish(self, body: bytes, command: Command = Command.ASYNC_MESSAGE_TO_SERVER) -> Package:
        return await self.request(self.publish_package(body, command))

    async def publish_ok(self, topic: str, count: int = 1, start: int = 0) -> list[bytes]:
        """Publish ``count`` events numbered from ``start``, pipelined; every ack must be code 0."""
        bodies = [event_body(topic, {"n": n}) for n in range(start, start + count)]
        packages = [self.publish_package(body) for body in bodies]
        for package in packages:
            self.send(package)
        wanted = {package.header.seq for package in packages}
        while wanted:
            answer = await self.receive()
            assert answer.header.command is Command.ASYNC_MESSAGE_TO_SERVER_ACK, answer.header.command
            assert answer.header.code == 0, answer.header.desc
            wanted.remove(answer.header.seq)
        return bodies

    async def push(self, within: float = 5.0) -> Package:
        package = await self.receive(within)
        assert package.header.command in PUSH_ACK, f"{package.header.command.name}: {package.header.desc}"
        return package

    def ack(self, push: Package) -> None:
        self.send(Package(Header(PUSH_ACK[push.header.command], seq=push.header.seq), None))

    async def take(self, count: int, *, ack: bool = True, within: float = 5.0) -> list[Package]:
        """Receive ``count`` pushes, acking each (unless told not to)."""
        pushes = []
        for _ in range(count):
            push = await self.push(within)
            if ack:
                self.ack(push)
            pushes.append(push)
        return pushes

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def numbers(pushes: list[Package]) -> list[int]:
    """The ``n`` in the data of each pushed event."""
    return [orjson.loads(push.body or b"")["data"]["n"] for push in pushes]
