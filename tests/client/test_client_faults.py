"""The client against a scripted server: window, timeouts, dead heartbeats, goodbye, redirect, TLS."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.client import ClientState, MeshClient, user_agent_for
from runtime.config import MeshSettings
from runtime.errors import ConfigError, MeshUnavailableError
from runtime.protocol.frames import Command, Header, Package, RedirectInfo
from tests.client.fakes import FakeMesh, make_event
from tests.servers import free_port, require_binary

AGENT = user_agent_for("producers", "pub")
FAST = {"request_timeout": 5.0, "backoff_initial": 0.05, "backoff_max": 0.5}


@pytest.fixture
async def fake() -> AsyncIterator[FakeMesh]:
    server = FakeMesh()
    await server.start()
    yield server
    await server.stop()


async def test_the_window_bounds_unacked_publishes(fake: FakeMesh) -> None:
    fake.ack_publishes = False
    async with MeshClient(f"127.0.0.1:{fake.port}", AGENT, max_in_flight=8, **FAST) as client:  # type: ignore[arg-type]
        waiters = [await client.start_publish(make_event(n)) for n in range(8)]
        blocked = asyncio.create_task(client.start_publish(make_event(8), timeout=5.0))
        await asyncio.sleep(0.3)
        assert not blocked.done(), "the ninth publish waits for room"
        assert len(fake.commands(Command.ASYNC_MESSAGE_TO_SERVER)) == 8
        assert client.in_flight == 8
        # One ack frees one slot, and the blocked publish goes out.
        first = fake.commands(Command.ASYNC_MESSAGE_TO_SERVER)[0]
        await fake.send_to_all(Package(Header(Command.ASYNC_MESSAGE_TO_SERVER_ACK, desc="success", seq=first.header.seq), None))
        await waiters[0]
        ninth = await asyncio.wait_for(blocked, 2)
        await asyncio.sleep(0.1)
        assert len(fake.commands(Command.ASYNC_MESSAGE_TO_SERVER)) == 9
        assert client.in_flight == 8
        for waiter in [*waiters[1:], ninth]:
            waiter.cancel()


async def test_waiting_for_window_room_is_bounded(fake: FakeMesh) -> None:
    fake.ack_publishes = False
    async with MeshClient(f"127.0.0.1:{fake.port}", AGENT, max_in_flight=1, **FAST) as client:  # type: ignore[arg-type]
        waiter = await client.start_publish(make_event(1), timeout=5.0)
        with pytest.raises(MeshUnavailableError, match="window of 1 stayed full"):
            await client.start_publish(make_event(2), timeout=0.3)
        waiter.cancel()


async def test_a_publish_without_ack_times_out_and_frees_its_slot(fake: FakeMesh) -> None:
    fake.ack_publishes = False
    async with MeshClient(f"127.0.0.1:{fake.port}", AGENT, max_in_flight=1, **FAST) as client:  # type: ignore[arg-type]
        started = asyncio.get_running_loop().time()
        with pytest.raises(MeshUnavailableError, match="no answer in time"):
            await client.publish(make_event(1), timeout=0.4)
        assert 0.35 <= asyncio.get_running_loop().time() - started < 2.0
        assert client.in_flight == 0
        fake.ack_publishes = True
        await client.publish(make_event(2), timeout=2.0)  # the window is usable again


async def test_a_missing_heartbeat_answer_means_a_dead_connection(fake: FakeMesh) -> None:
    fake.answer_heartbeats = False
    async with MeshClient(
        f"127.0.0.1:{fake.port}",
        AGENT,
        heartbeat_interval=0.2,
        request_timeout=0.3,
        backoff_initial=0.05,
        backoff_max=0.2,
    ) as client:
        assert await client.state_changed(timeout=5) is ClientState.RECONNECTING
        await client.wait_connected(timeout=5)
        assert fake.connections >= 2
        assert len(fake.commands(Command.HELLO_REQUEST)) >= 2


async def test_unacked_publishes_are_resent_after_a_reconnect(fake: FakeMesh) -> None:
    fake.ack_publishes = False
    async with MeshClient(f"127.0.0.1:{fake.port}", AGENT, **FAST) as client:  # type: ignore[arg-type]
        waiter = await client.start_publish(make_event(1), timeout=10.0)
        await asyncio.sleep(0.2)
        (sent,) = fake.commands(Command.ASYNC_MESSAGE_TO_SERVER)
        fake.ack_publishes = True
        client._conn.abort()  # type: ignore[union-attr]  # the network drops the connection
        await asyncio.wait_for(waiter, 5)
        resent = fake.commands(Command.ASYNC_MESSAGE_TO_SERVER)
        assert [p.header.seq for p in resent] == [sent.header.seq] * 2
        assert resent[0].body == resent[1].body


async def test_server_goodbye_moves_to_the_next_address(fake: FakeMesh) -> None:
    other = FakeMesh()
    await other.start()
    try:
        async with MeshClient(f"127.0.0.1:{fake.port},127.0.0.1:{other.port}", AGENT, **FAST) as client:  # type: ignore[arg-type]
            await fake.send_to_all(
                Package(Header(Command.SERVER_GOODBYE_REQUEST, desc="graceful normal quit from eventmesh"), None)
            )
            assert await client.state_changed(timeout=5) is ClientState.RECONNECTING
            await client.wait_connected(timeout=5)
            assert other.connections == 1
            assert len(fake.commands(Command.SERVER_GOODBYE_RESPONSE)) == 1
            await client.publish(make_event(1))
            assert len(other.commands(Command.ASYNC_MESSAGE_TO_SERVER)) == 1
    finally:
        await other.stop()


async def test_redirect_reconnects_to_the_named_address(fake: FakeMesh) -> None:
    target = FakeMesh()
    await target.start()
    try:
        async with MeshClient(f"127.0.0.1:{fake.port}", AGENT, **FAST) as client:  # type: ignore[arg-type]
            redirect = Package.with_json(Header(Command.REDIRECT_TO_CLIENT), RedirectInfo("127.0.0.1", target.port))
            await fake.send_to_all(redirect)
            assert await client.state_changed(timeout=5) is ClientState.RECONNECTING
            await client.wait_connected(timeout=5)
            assert target.connections == 1
    finally:
        await target.stop()


async def test_close_says_goodbye_and_fails_what_still_waits(fake: FakeMesh) -> None:
    fake.ack_publishes = False
    client = MeshClient(f"127.0.0.1:{fake.port}", AGENT, **FAST)  # type: ignore[arg-type]
    await client.start()
    waiter = await client.start_publish(make_event(1))
    await client.aclose()
    assert client.state is ClientState.CLOSED
    assert len(fake.commands(Command.CLIENT_GOODBYE_REQUEST)) == 1
    with pytest.raises(MeshUnavailableError, match="the client closed"):
        await waiter
    with pytest.raises(MeshUnavailableError, match="closed"):
        await client.publish(make_event(2))


async def test_connect_failure_is_mesh_unavailable() -> None:
    client = MeshClient(f"127.0.0.1:{free_port()}", AGENT, connect_timeout=1.0)
    with pytest.raises(MeshUnavailableError, match="cannot connect"):
        await client.start()
    assert client.state is ClientState.CLOSED


def test_a_bad_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"mesh\.address"):
        MeshClient("localhost", AGENT)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    fake = FakeMesh()
    fake._server = await asyncio.start_server(fake._serve, "127.0.0.1", 0, ssl=server_context)
    try:
        client_context = ssl.create_default_context(cafile=str(cert))
        async with MeshClient(f"127.0.0.1:{fake.port}", AGENT, ssl=client_context, **FAST) as client:  # type: ignore[arg-type]
            await client.publish(make_event(1))
        assert len(fake.commands(Command.ASYNC_MESSAGE_TO_SERVER)) == 1
        untrusting = MeshClient(f"127.0.0.1:{fake.port}", AGENT, ssl=ssl.create_default_context(), connect_timeout=2.0)
        with pytest.raises(MeshUnavailableError):
            await untrusting.start()
    finally:
        await fake.stop()


async def test_from_settings_sends_the_full_identity(fake: FakeMesh) -> None:
    settings = MeshSettings(address=f"127.0.0.1:{fake.port}", username="alice", password="s3cret", idc="FT", env="TEST")
    async with MeshClient.from_settings(settings, group="orders-sink", purpose="sub"):
        pass
    (hello,) = fake.commands(Command.HELLO_REQUEST)
    agent = hello.user_agent()
    assert agent is not None
    assert (agent.group, agent.purpose, agent.username, agent.password, agent.idc, agent.env) == (
        "orders-sink",
        "sub",
        "alice",
        "s3cret",
        "FT",
        "TEST",
    )
    assert agent.version and agent.pid > 0 and agent.host
    assert "s3cret" not in repr(agent)
