"""A scripted EventMesh server on the codec, for behaviours the embedded mesh cannot be told to show
(ignoring heartbeats, never acking, saying goodbye or redirecting on demand)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cloudevents.core.v1.event import CloudEvent

from runtime.protocol.frames import Command, FrameDecoder, Header, Package, encode

_ANSWERS = {
    Command.HELLO_REQUEST: Command.HELLO_RESPONSE,
    Command.HEARTBEAT_REQUEST: Command.HEARTBEAT_RESPONSE,
    Command.SUBSCRIBE_REQUEST: Command.SUBSCRIBE_RESPONSE,
    Command.UNSUBSCRIBE_REQUEST: Command.UNSUBSCRIBE_RESPONSE,
    Command.LISTEN_REQUEST: Command.LISTEN_RESPONSE,
    Command.CLIENT_GOODBYE_REQUEST: Command.CLIENT_GOODBYE_RESPONSE,
    Command.ASYNC_MESSAGE_TO_SERVER: Command.ASYNC_MESSAGE_TO_SERVER_ACK,
    Command.BROADCAST_MESSAGE_TO_SERVER: Command.BROADCAST_MESSAGE_TO_SERVER_ACK,
}


@dataclass
class FakeMesh:
    """Answers every request with success, except what the flags turn off."""

    ack_publishes: bool = True
    answer_heartbeats: bool = True
    publish_refusals: list[str] = field(default_factory=list)
    """Reasons to refuse the next publishes with (code 1), one each, before acking again."""
    received: list[Package] = field(default_factory=list)
    connections: int = 0
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    def commands(self, command: Command) -> list[Package]:
        return [package for package in self.received if package.header.command is command]

    async def send_to_all(self, package: Package) -> None:
        for writer in list(self._writers):
            writer.write(encode(package))
            await writer.drain()

    def _answer(self, package: Package) -> Package | None:
        command = package.header.command
        if command in (Command.ASYNC_MESSAGE_TO_SERVER, Command.BROADCAST_MESSAGE_TO_SERVER) and not self.ack_publishes:
            return None
        if command is Command.HEARTBEAT_REQUEST and not self.answer_heartbeats:
            return None
        answer = _ANSWERS.get(command)
        if answer is Command.ASYNC_MESSAGE_TO_SERVER_ACK and self.publish_refusals:
            return Package(Header(answer, code=1, desc=self.publish_refusals.pop(0), seq=package.header.seq), None)
        return None if answer is None else Package(Header(answer, desc="success", seq=package.header.seq), None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        decoder = FrameDecoder()
        try:
            while data := await reader.read(65536):
                for package in decoder.feed(data):
                    self.received.append(package)
                    answer = self._answer(package)
                    if answer is not None:
                        writer.write(encode(answer))
                    if package.header.command is Command.CLIENT_GOODBYE_REQUEST:
                        await writer.drain()
                        return
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.remove(writer)
            writer.close()


def make_event(number: int, topic: str = "orders", size: int = 0) -> CloudEvent:
    """A JSON event numbered ``number`` (``size``: pad its data to about that many bytes)."""
    data: dict[str, object] = {"n": number}
    if size:
        data["pad"] = "x" * size
    return CloudEvent(
        attributes={
            "id": f"event-{number}",
            "source": "/tests/client",
            "type": "test.event",
            "specversion": "1.0",
            "subject": topic,
            "time": datetime(2026, 1, 1, tzinfo=UTC),
            "datacontenttype": "application/json",
        },
        data=data,
    )
