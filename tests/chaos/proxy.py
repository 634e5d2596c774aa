"""A TCP chaos proxy: forwards each connection with random chunk splits and delays, and cuts it at random times.

Connectors point at the proxy's port instead of the mesh's. Per connection, each direction is
forwarded by its own task: what arrives is split at random points, each piece written after a
small random delay (order kept), and the whole connection is cut (both sides closed, as a network
failure would) after a random lifetime. ``cutting`` and ``mangling`` switch the two behaviours off,
for the drain at the end of a run.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import structlog

__all__ = ["ChaosProxy", "ProxyStats"]

log = structlog.get_logger("chaos.proxy")

_READ_SIZE = 64 * 1024
_CONNECT_TIMEOUT = 5.0


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    cuts: int = 0
    fragments: int = 0
    delayed_pieces: int = 0


class ChaosProxy:
    """``127.0.0.1:<port>`` -> ``upstream_host:upstream_port``, unreliably (see the module docstring)."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        port: int = 0,
        cut_after: tuple[float, float] = (2.0, 12.0),
        max_delay: float = 0.02,
        delay_share: float = 0.3,
        max_pieces: int = 4,
        seed: int | None = None,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.cut_after = cut_after
        self.max_delay = max_delay
        self.delay_share = delay_share
        self.max_pieces = max_pieces
        self.random = random.Random(seed)
        self.stats = ProxyStats()
        self.cutting = True
        self.mangling = True
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def cut_all(self) -> int:
        """Cut every open connection now; how many were cut."""
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.stats.cuts += len(tasks)
        return len(tasks)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(client_reader, client_writer)
        except asyncio.CancelledError:
            pass  # cut: the finally below closes both sides, as a dropped link would
        finally:
            self._connections.discard(task)
            client_writer.transport.abort()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), _CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            self.stats.refused += 1
            return
        self.stats.connections += 1
        try:
            pumps = [
                asyncio.create_task(self._pump(client_reader, upstream_writer)),
                asyncio.create_task(self._pump(upstream_reader, client_writer)),
            ]
            lifetime = self.random.uniform(*self.cut_after)
            try:
                done, _ = await asyncio.wait(pumps, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if self.cutting:
                        self.stats.cuts += 1
                    else:
                        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            upstream_writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return
            if not self.mangling or len(data) < 2:
                writer.write(data)
                await writer.drain()
                continue
            for piece in self._split(data):
                if self.random.random() < self.delay_share:
                    self.stats.delayed_pieces += 1
                    await asyncio.sleep(self.random.uniform(0, self.max_delay))
                writer.write(piece)
                await writer.drain()

    def _split(self, data: bytes) -> list[bytes]:
        pieces = self.random.randint(1, min(self.max_pieces, len(data)))
        if pieces == 1:
            return [data]
        cuts = sorted(self.random.sample(range(1, len(data)), pieces - 1))
        self.stats.fragments += pieces - 1
        return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
