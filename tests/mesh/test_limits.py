"""The mesh under floods, as a real ``meshconnect mesh`` process: every bound refuses with an answer the
peer can read (or a close before HELLO) and a ``mesh.refused`` log line, the process's memory (VmRSS)
stays under a stated bound while the flood runs, and normal clients are served during and after."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from runtime.protocol.frames import (
    MAX_FRAME,
    Command,
    Header,
    Package,
    Subscription,
    SubscriptionItem,
    SubscriptionMode,
    SubscriptionType,
    encode,
)
from tests.mesh.process import MeshProcess
from tests.mesh.wire import Peer, event_body, user_agent

MIB = 1024 * 1024
T = TypeVar("T")


@pytest.fixture
def start_mesh(tmp_path: Path) -> Iterator[Callable[..., MeshProcess]]:
    started: list[MeshProcess] = []

    def start(*args: str) -> MeshProcess:
        process = MeshProcess(tmp_path, extra_args=args)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.ensure_stopped()


def refusals(mesh: MeshProcess, limit: str) -> list[dict[str, object]]:
    return [entry for entry in mesh.log_entries("mesh.refused") if entry.get("limit") == limit]


async def under_rss_bound(mesh: MeshProcess, work: Awaitable[T], bound: int, within: float) -> T:
    """Run ``work`` while sampling the mesh's RSS every 50 ms; every sample must stay under ``bound``."""
    task = asyncio.ensure_future(work)
    try:
        async with asyncio.timeout(within):
            while True:
                rss = mesh.rss_bytes()
                assert rss <= bound, f"the mesh's RSS reached {rss / MIB:.0f} MiB, above the bound of {bound / MIB:.0f} MiB"
                done, _ = await asyncio.wait({task}, timeout=0.05)
                if done:
                    rss = mesh.rss_bytes()
                    assert rss <= bound, f"the mesh's RSS ended at {rss / MIB:.0f} MiB, above {bound / MIB:.0f} MiB"
                    return task.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def round_trip(port: int, topic: str) -> None:
    """What a normal client does: subscribe, publish, receive and ack one event."""
    sub = await Peer.hello(port, group=f"sink-{topic}")
    await sub.subscribe(topic)
    pub = await Peer.hello(port, group=f"source-{topic}", purpose="pub")
    sent = await pub.publish_ok(topic, 1)
    [push] = await sub.take(1)
    assert push.body == sent[0]
    await sub.close()
    await pub.close()


async def publish_all(peer: Peer, bodies: Iterable[bytes], window: int = 256) -> list[Package]:
    """Publish every body with at most ``window`` unanswered; the answers in publish order."""
    answers: dict[str, Package] = {}
    order: list[str] = []
    pending: set[str] = set()

    async def collect(down_to: int) -> None:
        while len(pending) > down_to:
            answer = await peer.receive(30)
            assert answer.header.seq in pending, f"unexpected {answer.header.command.name} {answer.header.desc}"
            pending.discard(answer.header.seq)
            answers[answer.header.seq] = answer

    for body in bodies:
        package = peer.publish_package(body)
        assert package.header.seq is not None
        order.append(package.header.seq)
        pending.add(package.header.seq)
        peer.send(package)
        if len(pending) >= window:
            await peer.writer.drain()
            await collect(window // 2)
    await collect(0)
    return [answers[seq] for seq in order]


def partial_frame(announced: int, sent: int) -> bytes:
    """The first ``sent`` bytes of a frame whose length prefix announces ``announced`` bytes."""
    prefix = b"EventMesh0000" + struct.pack(">I", announced - 8) + struct.pack(">i", 64)
    return prefix + b"\0" * (sent - len(prefix))


async def wait_closed_by_mesh(peer: Peer, within: float) -> None:
    assert await peer.closed_within(within) == []


async def written(peer: Peer) -> None:
    """Wait until the kernel took what ``peer`` wrote, or the mesh cut the connection."""
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(peer.writer.drain(), 30)


# -- before HELLO -------------------------------------------------------------------------------------------


async def test_big_frames_before_hello_are_cut_off_and_the_mesh_stays_small(
    start_mesh: Callable[..., MeshProcess],
) -> None:
    """100 connections each send 1 MiB of a frame announced at 4 MiB: the old mesh buffered it all."""
    mesh = start_mesh()
    await round_trip(mesh.port, "before")
    bound = mesh.rss_bytes() + 40 * MIB

    async def flood() -> None:
        peers = [await Peer.connect(mesh.port) for _ in range(100)]
        for peer in peers:
            peer.send_raw(partial_frame(MAX_FRAME, MIB))
        await asyncio.gather(round_trip(mesh.port, "during"), *(written(peer) for peer in peers))
        await asyncio.gather(*(wait_closed_by_mesh(peer, 20) for peer in peers))

    await under_rss_bound(mesh, flood(), bound, within=60)
    assert 0 < len(refusals(mesh, "max_bytes_before_hello")) < 20  # about one line a second, not one per connection
    assert len(mesh.log_entries("mesh.session.closed")) < 20  # the four sessions of the round trips, not the flood
    await round_trip(mesh.port, "after")


async def test_big_frames_left_incomplete_after_hello_are_bounded_over_all_connections(
    start_mesh: Callable[..., MeshProcess],
) -> None:
    """100 sessions say HELLO, then each sends 1 MiB of a frame announced at 4 MiB and stalls."""
    mesh = start_mesh("--max-incomplete-frame-bytes", str(8 * MIB))
    await round_trip(mesh.port, "before")
    bound = mesh.rss_bytes() + 40 * MIB
    peers = [await Peer.hello(mesh.port, group="stalling", purpose="pub") for _ in range(100)]

    async def flood() -> list[list[Package]]:
        for peer in peers:
            peer.send_raw(partial_frame(MAX_FRAME, MIB))
        await asyncio.gather(round_trip(mesh.port, "during"), *(written(peer) for peer in peers))
        closing = [asyncio.create_task(peer.closed_within(30)) for peer in peers]
        async with asyncio.timeout(30):  # all but the few whose frames fit in 8 MiB are sent away
            while sum(task.done() for task in closing) < 90:
                await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
        for task in closing:
            task.cancel()
        return [task.result() for task in closing if task.done() and not task.cancelled()]

    sent_away = await under_rss_bound(mesh, flood(), bound, within=60)
    assert len(sent_away) >= 90
    for frames in sent_away:  # the goodbye, unless the close's reset (their bytes unread) overtook it
        assert [(frame.header.command, frame.header.code) for frame in frames] in ([], [(Command.SERVER_GOODBYE_REQUEST, 1)])
        assert all("max_incomplete_frame_bytes" in (frame.header.desc or "") for frame in frames)
    assert refusals(mesh, "max_incomplete_frame_bytes")
    await round_trip(mesh.port, "after")
    for peer in peers:
        await peer.close()


async def test_connections_that_do_not_say_hello_in_time_are_closed(start_mesh: Callable[..., MeshProcess]) -> None:
    mesh = start_mesh("--hello-timeout", "0.5")
    hello = encode(Package.with_json(Header(Command.HELLO_REQUEST, seq="1"), user_agent().json_fields()))
    silent = [await Peer.connect(mesh.port) for _ in range(10)]
    halfway = await Peer.connect(mesh.port)
    halfway.send_raw(hello[: len(hello) // 2])
    on_time = await Peer.hello(mesh.port, group="on-time")
    await asyncio.gather(*(wait_closed_by_mesh(peer, 10) for peer in [*silent, halfway]))
    assert (await on_time.call(Command.HEARTBEAT_REQUEST)).header.code == 0  # a session past its HELLO stays
    assert refusals(mesh, "hello_timeout")
    await on_time.close()


async def test_connections_beyond_the_limit_are_closed_and_the_others_served(
    start_mesh: Callable[..., MeshProcess],
) -> None:
    mesh = start_mesh("--max-connections", "4")
    sub = await Peer.hello(mesh.port)
    await sub.subscribe("orders")
    pub = await Peer.hello(mesh.port, purpose="pub")
    idle = [await Peer.connect(mesh.port) for _ in range(2)]
    extra = await Peer.connect(mesh.port)
    await wait_closed_by_mesh(extra, 10)
    assert refusals(mesh, "max_connections")
    sent = await pub.publish_ok("orders", 1)
    assert [push.body for push in await sub.take(1)] == sent
    await idle[0].close()
    async with asyncio.timeout(10):  # the freed place goes to the next connection, once the mesh saw the close
        while True:
            try:
                newcomer = await Peer.hello(mesh.port, purpose="pub")
                break
            except ConnectionError:
                continue
    assert (await newcomer.call(Command.HEARTBEAT_REQUEST)).header.code == 0
    for peer in (sub, pub, idle[1], newcomer):
        await peer.close()


# -- topics and retained bytes ------------------------------------------------------------------------------


async def test_a_flood_of_new_topics_is_refused_past_max_topics_and_memory_stays_bounded(
    start_mesh: Callable[..., MeshProcess],
) -> None:
    """30,000 new topics of one 2 KiB event each: the old mesh kept them all."""
    mesh = start_mesh("--max-topics", "1000")
    sub = await Peer.hello(mesh.port, group="orders-sink")
    await sub.subscribe("orders")
    pub = await Peer.hello(mesh.port, purpose="pub")
    bound = mesh.rss_bytes() + 40 * MIB
    flooder = await Peer.hello(mesh.port, group="flooder", purpose="pub")

    async def orders_go_on() -> None:
        sent = await pub.publish_ok("orders", 1)
        assert [push.body for push in await sub.take(1, within=30)] == sent

    async def flood() -> list[Package]:
        bodies = (event_body(f"flood-{n}", "x" * 2048) for n in range(30_000))
        answers, _ = await asyncio.gather(publish_all(flooder, bodies), orders_go_on())
        return answers

    answers = await under_rss_bound(mesh, flood(), bound, within=90)
    assert sum(answer.header.code == 0 for answer in answers) == 999  # 'orders' is the thousandth
    refused = [answer for answer in answers if answer.header.code != 0]
    assert all("max_topics" in (answer.header.desc or "") for answer in refused)
    assert refusals(mesh, "max_topics")
    await orders_go_on()
    await asyncio.gather(sub.close(), pub.close(), flooder.close())


async def test_topics_left_without_events_and_groups_are_dropped_and_their_room_returns(
    start_mesh: Callable[..., MeshProcess],
) -> None:
    mesh = start_mesh("--max-topics", "50", "--group-expiry", "0.5")
    wide = await Peer.hello(mesh.port, group="wide")
    items = tuple(SubscriptionItem(f"t{n}", SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC) for n in range(50))
    subscribe = Package.with_json(Header(Command.SUBSCRIBE_REQUEST, seq=wide.seq()), Subscription(items).json_fields())
    assert (await wide.request(subscribe)).header.code == 0
    pub = await Peer.hello(mesh.port, purpose="pub")
    refused = await pub.publish(event_body("fresh"))
    assert refused.header.code == 1
    assert "max_topics" in (refused.header.desc or "")
    one_more = Subscription((SubscriptionItem("t50", SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC),))
    answer = await wide.request(Package.with_json(Header(Command.SUBSCRIBE_REQUEST, seq=wide.seq()), one_more.json_fields()))
    assert (answer.header.command, answer.header.code) == (Command.SUBSCRIBE_RESPONSE, 1)
    assert "max_topics" in (answer.header.desc or "")
    await wide.close()  # the group leaves: once it expired, its 50 topics hold nothing and are dropped
    async with asyncio.timeout(20):
        while (await pub.publish(event_body("fresh"))).header.code != 0:
            await asyncio.wait_for(pub.call(Command.HEARTBEAT_REQUEST), 5)  # one round trip per attempt
    await pub.close()


async def test_retained_bytes_are_bounded_and_acks_make_room_again(start_mesh: Callable[..., MeshProcess]) -> None:
    """600 events of 256 KiB (150 MiB) for topics nobody reads: the old mesh kept them all."""
    mesh = start_mesh("--max-retained-bytes", str(16 * MIB))
    await round_trip(mesh.port, "before")
    bound = mesh.rss_bytes() + 64 * MIB
    flooder = await Peer.hello(mesh.port, group="flooder", purpose="pub")
    big = "x" * (256 * 1024)
    bodies = (event_body(f"backlog-{n % 4}", {"n": n, "pad": big}) for n in range(600))
    answers = await under_rss_bound(mesh, publish_all(flooder, bodies, window=16), bound, within=120)
    accepted = [n for n, answer in enumerate(answers) if answer.header.code == 0]
    assert 0 < len(accepted) <= 16 * MIB // len(big)
    refused = [answer for answer in answers if answer.header.code != 0]
    assert refused
    assert all("max_retained_bytes" in (answer.header.desc or "") for answer in refused)
    assert refusals(mesh, "max_retained_bytes")
    sink = await Peer.hello(mesh.port, group="backlog-sink")
    await sink.subscribe("backlog-0")
    await sink.take(sum(n % 4 == 0 for n in accepted), within=30)  # acked: their bytes are free again
    await sink.call(Command.HEARTBEAT_REQUEST)
    await round_trip(mesh.port, "after")
    await asyncio.gather(flooder.close(), sink.close())
