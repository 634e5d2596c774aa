"""Kill -9 the mesh process mid-stream and restart it: the clients reconnect and nothing is lost."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator, Sequence

import pytest

from runtime.client import ClientState, MeshClient, user_agent_for
from runtime.errors import MeshUnavailableError
from tests.client.fakes import make_event
from tests.servers import ServerProcess

TOTAL = 600


class MeshProcess(ServerProcess):
    """``meshconnect mesh`` as its own process, durable in its temp dir."""

    name = "mesh"

    def command(self) -> Sequence[str]:
        return [
            sys.executable,
            "-m",
            "runtime.commands.mesh",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.dir / "data"),
            "--redelivery-timeout",
            "2",
            "--log-level",
            "warning",
        ]


@pytest.fixture
def mesh_process() -> Iterator[MeshProcess]:
    server = MeshProcess()
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def publish_all(client: MeshClient, published: set[int], quarter_done: asyncio.Event) -> None:
    """Publish 0..TOTAL-1 pipelined, in a steady stream; an event whose ack never came goes again."""
    retry: list[int] = []
    upcoming = iter(range(TOTAL))

    def settle(number: int, waiter: asyncio.Future[None]) -> None:
        if waiter.exception() is None:
            published.add(number)
            if len(published) >= TOTAL // 4:
                quarter_done.set()
        else:
            retry.append(number)

    while len(published) < TOTAL:
        number = retry.pop(0) if retry else next(upcoming, None)
        if number is None:
            await asyncio.sleep(0.05)  # everything is sent: wait for the last acks (or retries)
            continue
        try:
            waiter = await client.start_publish(make_event(number), timeout=3.0)
        except MeshUnavailableError:
            retry.append(number)
            continue
        waiter.add_done_callback(lambda done, number=number: settle(number, done))
        await asyncio.sleep(0.002)  # a steady stream, so the outage hits it mid-way


async def consume(client: MeshClient, received: set[int]) -> None:
    async for pushed in client.pushed():
        received.add(pushed.event.get_data()["n"])  # type: ignore[index]
        await pushed.ack()
        if len(received) == TOTAL:
            return


@pytest.mark.slow
async def test_kill_and_restart_of_the_mesh_loses_no_event(mesh_process: MeshProcess) -> None:
    address = f"127.0.0.1:{mesh_process.port}"
    options = {"request_timeout": 3.0, "heartbeat_interval": 1.0, "backoff_initial": 0.05, "backoff_max": 0.5}
    async with (
        MeshClient(address, user_agent_for("producers", "pub"), max_in_flight=50, **options) as pub,  # type: ignore[arg-type]
        MeshClient(address, user_agent_for("sinks", "sub"), **options) as sub,  # type: ignore[arg-type]
    ):
        await sub.subscribe("orders")
        await sub.listen()
        published: set[int] = set()
        received: set[int] = set()
        states: list[ClientState] = []
        pub.add_state_listener(states.append)
        quarter_done = asyncio.Event()
        publishing = asyncio.create_task(publish_all(pub, published, quarter_done))
        consuming = asyncio.create_task(consume(sub, received))
        await asyncio.wait_for(quarter_done.wait(), 30)
        mesh_process.kill()
        await asyncio.sleep(0.5)
        assert not publishing.done(), "the outage happens mid-stream"
        await asyncio.to_thread(mesh_process.start)
        try:
            async with asyncio.timeout(60):
                await publishing
                await consuming
        except TimeoutError:
            missing_acks = sorted(set(range(TOTAL)) - published)
            missing_pushes = sorted(set(range(TOTAL)) - received)
            pytest.fail(
                f"stuck: publisher {pub.state.value} in flight {pub.in_flight}, {len(missing_acks)} unacked {missing_acks[:10]}; "
                f"subscriber {sub.state.value}, {len(missing_pushes)} not received {missing_pushes[:10]}"
            )
        assert published == set(range(TOTAL))
        assert received == set(range(TOTAL))
        assert ClientState.RECONNECTING in states and states[-1] is ClientState.CONNECTED
