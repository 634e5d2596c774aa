"""The embedded mesh over raw sockets: handshake, publish, push, groups, timers, errors.

Request-reply, sync subscribers and broadcasts are in test_push_kinds.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import orjson
import pytest

from runtime.errors import ConfigError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import (
    Command,
    Header,
    Package,
    Subscription,
    SubscriptionItem,
    SubscriptionMode,
    SubscriptionType,
    encode,
)
from runtime.protocol.java import frame_as_written
from tests.mesh.wire import PUBLISH_PROPERTIES, Peer, event_body, numbers, user_agent


@pytest.fixture
async def mesh() -> AsyncIterator[EmbeddedMesh]:
    async with EmbeddedMesh(port=0, users=None) as running:
        yield running


async def hello_answer(port: int, **fields: object) -> tuple[Peer, Package]:
    peer = await Peer.connect(port)
    agent = user_agent(**fields)  # type: ignore[arg-type]
    answer = await peer.request(Package.with_json(Header(Command.HELLO_REQUEST, seq=peer.seq()), agent.json_fields()))
    return peer, answer


# -- handshake ------------------------------------------------------------------------------------------


async def test_hello_is_answered_success_with_its_seq(mesh: EmbeddedMesh) -> None:
    peer = await Peer.connect(mesh.port)
    request = Package.with_json(Header(Command.HELLO_REQUEST, seq="0000000042"), user_agent().json_fields())
    answer = await peer.request(request)
    assert (answer.header.command, answer.header.code, answer.header.desc, answer.header.seq) == (
        Command.HELLO_RESPONSE,
        0,
        "success",
        "0000000042",
    )
    heartbeat = await peer.call(Command.HEARTBEAT_REQUEST)
    assert (heartbeat.header.command, heartbeat.header.code) == (Command.HEARTBEAT_RESPONSE, 0)
    await peer.close()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"purpose": "both"}, "purpose"),
        ({"purpose": "PUB"}, "purpose"),
        ({"group": "  "}, "group"),
        ({"group": None}, "group"),
        ({"version": None}, "version"),
    ],
)
async def test_invalid_hello_is_refused_then_closed(mesh: EmbeddedMesh, fields: dict[str, object], reason: str) -> None:
    peer, answer = await hello_answer(mesh.port, **fields)
    assert (answer.header.command, answer.header.code) == (Command.HELLO_RESPONSE, 1)
    assert reason in (answer.header.desc or "")
    assert await peer.closed_within() == []


async def test_password_is_checked_when_users_are_configured() -> None:
    async with EmbeddedMesh(port=0, users={"alice": "s3cret"}) as mesh:
        peer, answer = await hello_answer(mesh.port, username="alice", password="not-it-42")
        assert answer.header.code == 1
        assert "authentication failed" in (answer.header.desc or "")
        assert "not-it-42" not in (answer.header.desc or "")
        await peer.closed_within()
        peer, answer = await hello_answer(mesh.port, username="mallory", password="s3cret")
        assert answer.header.code == 1
        await peer.closed_within()
        peer, answer = await hello_answer(mesh.port, username="alice", password="s3cret")
        assert (answer.header.code, answer.header.desc) == (0, "success")
        await peer.close()


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (Command.HEARTBEAT_REQUEST, Command.HEARTBEAT_RESPONSE),
        (Command.LISTEN_REQUEST, Command.LISTEN_RESPONSE),
        (Command.ASYNC_MESSAGE_TO_SERVER, Command.ASYNC_MESSAGE_TO_SERVER_ACK),
        (Command.REQUEST_TO_SERVER, Command.RESPONSE_TO_CLIENT),
        (Command.ASYNC_MESSAGE_TO_CLIENT_ACK, Command.ASYNC_MESSAGE_TO_CLIENT_ACK),
    ],
)
async def test_commands_before_hello_get_no_session_is_found(mesh: EmbeddedMesh, command: Command, reply: Command) -> None:
    peer = await Peer.connect(mesh.port)
    answer = await peer.request(Package(Header(command, seq=peer.seq(), properties=PUBLISH_PROPERTIES), event_body("t")))
    assert (answer.header.command, answer.header.code, answer.header.desc) == (reply, 1, "no session is found")
    assert mesh.topic_depth("t") == 0
    await peer.close()


async def test_listen_needs_purpose_sub(mesh: EmbeddedMesh) -> None:
    peer = await Peer.hello(mesh.port, purpose="pub")
    answer = await peer.call(Command.LISTEN_REQUEST)
    assert (answer.header.code, answer.header.desc) == (1, "client purpose config is not sub")
    await peer.close()


async def test_client_goodbye_is_answered_then_closed(mesh: EmbeddedMesh) -> None:
    peer = await Peer.hello(mesh.port)
    answer = await peer.call(Command.CLIENT_GOODBYE_REQUEST)
    assert (answer.header.command, answer.header.code) == (Command.CLIENT_GOODBYE_RESPONSE, 0)
    assert await peer.closed_within() == []


async def test_stop_says_server_goodbye_to_every_session() -> None:
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    peers = [await Peer.hello(mesh.port), await Peer.hello(mesh.port, purpose="pub")]
    await mesh.stop()
    for peer in peers:
        received = await peer.closed_within()
        assert [(p.header.command, p.header.code, p.header.desc) for p in received] == [
            (Command.SERVER_GOODBYE_REQUEST, 0, "graceful normal quit from eventmesh")
        ]


# -- publish ---------------------------------------------------------------------------------------------


async def test_publish_is_acked_with_its_seq(mesh: EmbeddedMesh) -> None:
    peer = await Peer.hello(mesh.port, purpose="pub")
    for command, ack in (
        (Command.ASYNC_MESSAGE_TO_SERVER, Command.ASYNC_MESSAGE_TO_SERVER_ACK),
        (Command.BROADCAST_MESSAGE_TO_SERVER, Command.BROADCAST_MESSAGE_TO_SERVER_ACK),
    ):
        package = peer.publish_package(event_body("orders"), command)
        answer = await peer.request(package)
        assert (answer.header.command, answer.header.code, answer.header.desc, answer.header.seq) == (
            ack,
            0,
            "success",
            package.header.seq,
        )
    assert mesh.topic_depth("orders") == 2
    await peer.close()


@pytest.mark.parametrize(
    ("body", "properties", "reason"),
    [
        (orjson.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": 1}), None, "subject"),
        (event_body("t", Bad_Name="x"), None, "extension name"),
        (orjson.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "subject": "t"}), None, "data is null"),
        (event_body("t"), {"protocoltype": "cloudevents", "protocolversion": "1.0"}, "protocoldesc"),
        (event_body("t"), {**PUBLISH_PROPERTIES, "protocoltype": "eventmeshmessage"}, "not supported"),
        (event_body("t"), {**PUBLISH_PROPERTIES, "Trace-Id": "1"}, "header property name"),
        (b"not json", None, "not CloudEvents JSON"),
        (None, None, "no body"),
    ],
)
async def test_invalid_publish_is_answered_code_1(
    mesh: EmbeddedMesh, body: bytes | None, properties: dict[str, str] | None, reason: str
) -> None:
    peer = await Peer.hello(mesh.port, purpose="pub")
    package = Package(Header(Command.ASYNC_MESSAGE_TO_SERVER, seq=peer.seq(), properties=properties or PUBLISH_PROPERTIES), body)
    answer = await peer.request(package)
    assert (answer.header.command, answer.header.code) == (Command.ASYNC_MESSAGE_TO_SERVER_ACK, 1)
    assert reason in (answer.header.desc or ""), answer.header.desc
    assert mesh.topic_depth("t") == 0
    await peer.close()


async def test_max_event_size_bounds_the_data() -> None:
    async with EmbeddedMesh(port=0, max_event_size=100) as mesh:
        peer = await Peer.hello(mesh.port, purpose="pub")
        assert (await peer.publish(event_body("t", "x" * 90))).header.code == 0
        answer = await peer.publish(event_body("t", "x" * 200))
        assert answer.header.code == 1
        assert "max_event_size" in (answer.header.desc or "")
        await peer.close()


async def test_full_topic_refuses_publishes_until_the_group_acks() -> None:
    async with EmbeddedMesh(port=0, max_topic_events=3) as mesh:
        sub = await Peer.hello(mesh.port)
        await sub.subscribe("t", listen=False)
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("t", 3)
        answer = await pub.publish(event_body("t", {"n": 3}))
        assert answer.header.code == 1
        assert "topic 't' is full" in (answer.header.desc or "")
        assert mesh.topic_depth("t") == 3
        assert (await sub.call(Command.LISTEN_REQUEST)).header.code == 0
        assert numbers(await sub.take(3)) == [0, 1, 2]
        await sub.call(Command.HEARTBEAT_REQUEST)  # the acks were handled before this answer
        assert mesh.topic_depth("t") == 0
        await pub.publish_ok("t", 1, start=3)
        assert numbers(await sub.take(1)) == [3]
        await sub.close()
        await pub.close()


async def test_a_group_gone_longer_than_the_expiry_no_longer_holds_a_full_topic() -> None:
    async with EmbeddedMesh(port=0, max_topic_events=3, group_expiry=0.5) as mesh:
        old = await Peer.hello(mesh.port, group="renamed")
        await old.subscribe("t", listen=False)
        await old.close()  # the group is left without a session
        new = await Peer.hello(mesh.port, group="current")
        await new.subscribe("t")
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("t", 3)
        for push in await new.take(3):
            new.ack(push)
        await new.call(Command.HEARTBEAT_REQUEST)
        assert (await pub.publish(event_body("t"))).header.code == 1  # "renamed" still holds all three
        assert "renamed" in str(mesh.status()["topics"]["t"]["groups"])
        for _ in range(50):
            if (await pub.publish(event_body("t", {"n": 3}))).header.code == 0:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the idle group never expired")
        assert mesh.status()["topics"]["t"]["groups"] == {"current/CLUSTERING": {"unacked": 1}}
        assert numbers(await new.take(1)) == [3]
        await new.close()
        await pub.close()


async def test_topic_nobody_subscribed_keeps_events_up_to_the_bound() -> None:
    async with EmbeddedMesh(port=0, max_topic_events=5) as mesh:
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("lonely", 5)
        assert (await pub.publish(event_body("lonely"))).header.code == 1
        assert mesh.topic_depth("lonely") == 5
        await pub.close()


# -- push and ack ------------------------------------------------------------------------------------------


async def test_push_carries_the_published_body_and_is_acked_by_seq(mesh: EmbeddedMesh) -> None:
    sub = await Peer.hello(mesh.port)
    await sub.subscribe("orders")
    pub = await Peer.hello(mesh.port, purpose="pub")
    [body] = await pub.publish_ok("orders", 1)
    push = await sub.push()
    assert push.header.command is Command.ASYNC_MESSAGE_TO_CLIENT
    assert push.header.code == 0
    assert dict(push.header.properties) == {"protocoltype": "cloudevents"}
    assert push.body == body
    assert mesh.unacked("group", "orders") == 1
    sub.ack(push)
    await sub.call(Command.HEARTBEAT_REQUEST)
    assert mesh.unacked("group", "orders") == 0
    assert mesh.topic_depth("orders") == 0
    await sub.nothing_within(0.2)
    await sub.close()
    await pub.close()


async def test_events_published_before_any_subscriber_are_delivered_once_a_group_subscribes(mesh: EmbeddedMesh) -> None:
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("early", 10)
    first = await Peer.hello(mesh.port, group="a")
    await first.subscribe("early")
    assert numbers(await first.take(10)) == list(range(10))
    await first.call(Command.HEARTBEAT_REQUEST)
    # Group a acked everything: the log is empty, so a group subscribing now starts at what comes next.
    assert mesh.topic_depth("early") == 0
    second = await Peer.hello(mesh.port, group="b")
    await second.subscribe("early")
    await pub.publish_ok("early", 1, start=10)
    assert numbers(await first.take(1)) == [10]
    assert numbers(await second.take(1)) == [10]
    for peer in (pub, first, second):
        await peer.close()


async def test_events_wait_while_no_session_of_the_group_listens(mesh: EmbeddedMesh) -> None:
    sub = await Peer.hello(mesh.port)
    await sub.subscribe("t")
    await sub.close()
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("t", 5)
    assert mesh.unacked("group", "t") == 5
    again = await Peer.hello(mesh.port)
    await again.subscribe("t")
    assert numbers(await again.take(5)) == list(range(5))
    await again.close()
    await pub.close()


async def test_clustering_shares_a_group_and_each_group_gets_everything(mesh: EmbeddedMesh) -> None:
    a1, a2, b = (
        await Peer.hello(mesh.port, group="a"),
        await Peer.hello(mesh.port, group="a"),
        await Peer.hello(mesh.port, group="b"),
    )
    for peer in (a1, a2, b):
        await peer.subscribe("t")
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("t", 20)
    got_b = numbers(await b.take(20))
    got_a1 = numbers(await a1.take(10))
    got_a2 = numbers(await a2.take(10))
    assert sorted(got_b) == list(range(20))
    assert sorted(got_a1 + got_a2) == list(range(20))
    for peer in (a1, a2, b):
        await peer.nothing_within(0.1)
    for peer in (a1, a2, b, pub):
        await peer.close()


async def test_broadcasting_gives_every_session_every_event(mesh: EmbeddedMesh) -> None:
    s1, s2 = await Peer.hello(mesh.port), await Peer.hello(mesh.port)
    for peer in (s1, s2):
        await peer.subscribe("news", SubscriptionMode.BROADCASTING)
    pub = await Peer.hello(mesh.port, purpose="pub")
    for n in range(5):
        answer = await pub.publish(event_body("news", {"n": n}), Command.BROADCAST_MESSAGE_TO_SERVER)
        assert answer.header.code == 0
    for peer in (s1, s2):
        pushes = await peer.take(5)
        assert {push.header.command for push in pushes} == {Command.BROADCAST_MESSAGE_TO_CLIENT}
        assert numbers(pushes) == list(range(5))
    await s1.call(Command.HEARTBEAT_REQUEST)
    await s2.call(Command.HEARTBEAT_REQUEST)
    assert mesh.topic_depth("news") == 0
    for peer in (s1, s2, pub):
        await peer.close()


async def test_unsubscribe_drops_every_topic_of_the_session(mesh: EmbeddedMesh) -> None:
    sub = await Peer.hello(mesh.port)
    await sub.subscribe("t1")
    await sub.subscribe("t2", listen=False)
    answer = await sub.call(Command.UNSUBSCRIBE_REQUEST)
    assert (answer.header.command, answer.header.code) == (Command.UNSUBSCRIBE_RESPONSE, 0)
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("t1", 1)
    await pub.publish_ok("t2", 1)
    await sub.nothing_within(0.3)
    await sub.close()
    await pub.close()


async def test_in_flight_pushes_per_session_are_bounded() -> None:
    async with EmbeddedMesh(port=0, max_unacked_per_session=4) as mesh:
        sub = await Peer.hello(mesh.port)
        await sub.subscribe("t")
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("t", 10)
        first = await sub.take(4, ack=False)
        await sub.nothing_within(0.2)
        for push in first[:2]:
            sub.ack(push)
        assert numbers(await sub.take(2, ack=False)) == [4, 5]
        await sub.nothing_within(0.2)
        await sub.close()
        await pub.close()


async def test_in_flight_pushes_are_bounded_by_bytes_and_one_event_larger_than_the_window_still_goes() -> None:
    """Large events: the window in bytes holds pushes back long before the count does."""
    pad = "x" * 3000  # about 3.2 KB a body: three fit in 10,000 bytes, four do not
    async with EmbeddedMesh(port=0, max_unacked_bytes_per_session=10_000) as mesh:
        sub = await Peer.hello(mesh.port)
        await sub.subscribe("big")
        pub = await Peer.hello(mesh.port, purpose="pub")
        for n in range(6):
            assert (await pub.publish(event_body("big", {"n": n, "pad": pad}))).header.code == 0
        first = await sub.take(3, ack=False)
        assert numbers(first) == [0, 1, 2]
        await sub.nothing_within(0.3)
        sub.ack(first[0])
        fourth = await sub.take(1, ack=False)
        assert numbers(fourth) == [3]  # one ack made room for one more
        await sub.nothing_within(0.3)
        for push in [*first[1:], *fourth]:
            sub.ack(push)
        assert numbers(await sub.take(2)) == [4, 5]
        huge = event_body("big", {"n": 6, "pad": "y" * 50_000})  # five times the window
        assert (await pub.publish(huge)).header.code == 0
        [alone] = await sub.take(1)
        assert alone.body == huge
        await sub.close()
        await pub.close()


# -- timers ---------------------------------------------------------------------------------------------------


async def test_unacked_push_is_redelivered_after_the_timeout_and_a_late_ack_still_counts() -> None:
    async with EmbeddedMesh(port=0, redelivery_timeout=0.3) as mesh:
        sub = await Peer.hello(mesh.port)
        await sub.subscribe("t")
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("t", 1)
        first = await sub.push()
        again = await sub.push(within=3)
        assert again.body == first.body
        assert again.header.seq != first.header.seq
        sub.ack(first)  # late: the mesh had taken that push back and pushed it again
        await sub.call(Command.HEARTBEAT_REQUEST)  # the ack was handled before this answer
        assert (mesh.unacked("group", "t"), mesh.topic_depth("t")) == (0, 0)
        await sub.nothing_within(0.8)  # the second push is never redelivered, though nobody acks it
        sub.ack(again)
        await sub.call(Command.HEARTBEAT_REQUEST)
        assert mesh.unacked("group", "t") == 0
        await sub.close()
        await pub.close()


async def test_unacked_pushes_of_a_closed_session_go_to_another_session(mesh: EmbeddedMesh) -> None:
    a1 = await Peer.hello(mesh.port)
    await a1.subscribe("t")
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("t", 3)
    taken = await a1.take(3, ack=False)
    a2 = await Peer.hello(mesh.port)
    await a2.subscribe("t")
    await a2.nothing_within(0.1)
    await a1.close()
    assert [push.body for push in await a2.take(3)] == [push.body for push in taken]
    await a2.close()
    await pub.close()


async def test_session_without_heartbeat_expires() -> None:
    async with EmbeddedMesh(port=0, session_timeout=0.8) as mesh:
        silent = await Peer.hello(mesh.port)
        beating = await Peer.hello(mesh.port)
        for _ in range(12):
            await asyncio.sleep(0.1)
            await beating.call(Command.HEARTBEAT_REQUEST)
        received = await silent.closed_within(3)
        assert [(p.header.command, p.header.code) for p in received] == [(Command.SERVER_GOODBYE_REQUEST, 1)]
        assert (await beating.call(Command.HEARTBEAT_REQUEST)).header.code == 0
        assert mesh.session_count == 1
        await beating.close()


async def test_topic_names_longer_than_1024_characters_are_refused(mesh: EmbeddedMesh) -> None:
    long_name = "t" * 1025
    sub = await Peer.hello(mesh.port)
    subscription = Subscription((SubscriptionItem(long_name, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC),))
    answer = await sub.request(Package.with_json(Header(Command.SUBSCRIBE_REQUEST, seq=sub.seq()), subscription.json_fields()))
    assert (answer.header.command, answer.header.code) == (Command.SUBSCRIBE_RESPONSE, 1)
    assert "1025 characters" in (answer.header.desc or "")
    pub = await Peer.hello(mesh.port, purpose="pub")
    for command in (Command.ASYNC_MESSAGE_TO_SERVER, Command.REQUEST_TO_SERVER):
        answer = await pub.publish(event_body(long_name), command)
        assert answer.header.code == 1
        assert "1025 characters" in (answer.header.desc or "")
    assert long_name not in mesh.status()["topics"]
    await pub.publish_ok("t" * 1024, 1)
    await sub.close()
    await pub.close()


# -- broken peers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 16,
        b"EventMesh0000\xff\xff\xff\xff\x00\x00\x00\x01",
        b"EventMesh0000\x00\x00\x00\x1a\x00\x00\x00\x0dnot json {{{{",
    ],
)
async def test_garbage_closes_the_connection_and_others_are_still_served(mesh: EmbeddedMesh, garbage: bytes) -> None:
    other = await Peer.hello(mesh.port)
    await other.subscribe("t")
    bad = await Peer.hello(mesh.port, purpose="pub")
    bad.send_raw(garbage)
    assert await bad.closed_within() == []
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("t", 1)
    assert numbers(await other.take(1)) == [0]
    await other.close()
    await pub.close()


@pytest.mark.parametrize("header", [b"", b'{"code":0,"seq":"2"}'])
async def test_frame_without_header_or_cmd_is_answered_with_a_goodbye_after_the_frames_before_it(
    mesh: EmbeddedMesh, header: bytes
) -> None:
    peer = await Peer.hello(mesh.port)
    heartbeat = encode(Package(Header(Command.HEARTBEAT_REQUEST, seq="1")))
    headerless = frame_as_written(header, b"")
    peer.send_raw(heartbeat + headerless + heartbeat)
    received = await peer.closed_within()
    assert [(p.header.command, p.header.seq, p.header.code) for p in received] == [
        (Command.HEARTBEAT_RESPONSE, "1", 0),
        (Command.SERVER_GOODBYE_REQUEST, None, 1),
    ]


def test_bad_settings_fail_at_construction_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="redelivery_timeout"):
        EmbeddedMesh(redelivery_timeout=0)
    with pytest.raises(ConfigError, match="max_unacked_per_session"):
        EmbeddedMesh(max_unacked_per_session=0)
    with pytest.raises(ConfigError, match="max_unacked_bytes_per_session"):
        EmbeddedMesh(max_unacked_bytes_per_session=0)
    with pytest.raises(ConfigError, match="max_bytes_before_hello"):
        EmbeddedMesh(max_bytes_before_hello=100)


async def test_publisher_that_does_not_read_its_acks_is_paused_not_buffered(mesh: EmbeddedMesh) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", mesh.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    pub = Peer(reader, writer)
    hello = Package.with_json(Header(Command.HELLO_REQUEST, seq=pub.seq()), user_agent(purpose="pub").json_fields())
    assert (await pub.request(hello)).header.code == 0
    total = 60_000  # more acks than the kernel buffers between the two ends (tcp_wmem max 4 MiB)
    frames = b"".join(encode(pub.publish_package(event_body("flood", {"n": n}))) for n in range(total))

    async def flood() -> None:
        writer.write(frames)
        await writer.drain()

    flooding = asyncio.create_task(flood())
    plateau = -1
    for _ in range(100):
        await asyncio.sleep(0.2)
        depth = mesh.topic_depth("flood")
        if depth == plateau:
            break
        plateau = depth
    assert 0 < plateau < total  # the mesh stopped reading the publisher it cannot answer
    other = await Peer.hello(mesh.port)
    assert (await other.call(Command.HEARTBEAT_REQUEST)).header.code == 0
    acks = 0
    while acks < total:  # reading the acks lets the mesh read the rest
        answer = await pub.receive(within=10)
        assert answer.header.code == 0
        acks += 1
    await flooding
    assert mesh.topic_depth("flood") == total
    await other.close()
    await pub.close()
