"""The chaos proxy itself: bytes arrive intact and in order however they were split and delayed; connections are cut."""

from __future__ import annotations

import asyncio
import os

from tests.chaos.proxy import ChaosProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_bytes_arrive_intact_and_in_order_through_splits_and_delays() -> None:
    upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = ChaosProxy(upstream.sockets[0].getsockname()[1], cut_after=(60.0, 60.0), max_delay=0.002, seed=3)
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = os.urandom(300_000)
        writer.write(payload)
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        writer.close()
    finally:
        await proxy.stop()
        upstream.close()
    assert echoed == payload
    assert proxy.stats.fragments > 0 and proxy.stats.delayed_pieces > 0
    assert proxy.stats.cuts == 0


async def test_a_connection_is_cut_within_its_lifetime() -> None:
    upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = ChaosProxy(upstream.sockets[0].getsockname()[1], cut_after=(0.2, 0.4), seed=4)
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        try:
            rest = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            rest = b""
        elapsed = loop.time() - started
        writer.close()
    finally:
        await proxy.stop()
        upstream.close()
    assert rest == b""
    assert elapsed < 2.0
    assert proxy.stats.cuts == 1
