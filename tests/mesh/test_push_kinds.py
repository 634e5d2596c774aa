"""The embedded mesh over raw sockets: request-reply, sync subscribers and broadcasts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import (
    Command,
    Header,
    Package,
    SubscriptionMode,
    SubscriptionType,
)
from tests.mesh.wire import PUBLISH_PROPERTIES, Peer, event_body, numbers


@pytest.fixture
async def mesh() -> AsyncIterator[EmbeddedMesh]:
    async with EmbeddedMesh(port=0, users=None) as running:
        yield running


async def test_request_reply(mesh: EmbeddedMesh) -> None:
    responder = await Peer.hello(mesh.port, group="service")
    await responder.subscribe("rpc", kind=SubscriptionType.SYNC)
    requester = await Peer.hello(mesh.port, group="client", purpose="pub")
    request = Package(
        Header(Command.REQUEST_TO_SERVER, seq="0000000777", properties=PUBLISH_PROPERTIES), event_body("rpc", {"q": 1})
    )
    requester.send(request)
    pushed = await responder.push()
    assert pushed.header.command is Command.REQUEST_TO_CLIENT
    pushed_event = orjson.loads(pushed.body or b"")
    assert pushed_event.pop("correlation99id")
    assert pushed_event == orjson.loads(request.body or b"")
    responder.ack(pushed)
    reply_body = event_body("rpc", {"a": 2})  # no correlation extension: matched by the seq of the push
    responder.send(Package(Header(Command.RESPONSE_TO_SERVER, seq=pushed.header.seq, properties=PUBLISH_PROPERTIES), reply_body))
    answer = await requester.receive()
    assert (answer.header.command, answer.header.code, answer.header.seq) == (Command.RESPONSE_TO_CLIENT, 0, "0000000777")
    assert answer.body == reply_body
    await responder.close()
    await requester.close()


async def test_reply_with_a_new_seq_is_matched_by_its_correlation_extension_as_the_java_sdk_sends_it(
    mesh: EmbeddedMesh,
) -> None:
    """The Java SDK answers with the event it got (extensions included) under a new random seq."""
    responder = await Peer.hello(mesh.port, group="service")
    await responder.subscribe("rpc", kind=SubscriptionType.SYNC)
    requesters = [await Peer.hello(mesh.port, group="client", purpose="pub") for _ in range(2)]
    for n, requester in enumerate(requesters):
        requester.send(
            Package(
                Header(Command.REQUEST_TO_SERVER, seq="0000000777", properties=PUBLISH_PROPERTIES), event_body("rpc", {"q": n})
            )
        )
    pushes = [await responder.push() for _ in requesters]
    for pushed in reversed(pushes):  # answered out of order, each under a seq the mesh never sent
        responder.ack(pushed)
        reply = orjson.loads(pushed.body or b"")
        assert "correlation99id" in reply, "the request push carries no correlation extension to answer with"
        reply["data"] = {"a": reply["data"]["q"]}
        reply_seq = f"9{pushed.header.seq:0>9}"
        responder.send(
            Package(Header(Command.RESPONSE_TO_SERVER, seq=reply_seq, properties=PUBLISH_PROPERTIES), orjson.dumps(reply))
        )
    for n, requester in enumerate(requesters):
        answer = await requester.receive()
        assert (answer.header.command, answer.header.code, answer.header.seq) == (Command.RESPONSE_TO_CLIENT, 0, "0000000777")
        assert orjson.loads(answer.body or b"")["data"] == {"a": n}
    await responder.close()
    for requester in requesters:
        await requester.close()


async def test_requests_waiting_for_replies_are_bounded_per_requester() -> None:
    async with EmbeddedMesh(port=0, max_unacked_per_session=2) as mesh:
        responder = await Peer.hello(mesh.port, group="service")
        await responder.subscribe("rpc", kind=SubscriptionType.SYNC)
        requester = await Peer.hello(mesh.port, group="client", purpose="pub")

        def request(n: int) -> Package:
            body = event_body("rpc", {"q": n}, ttl="60000")
            return Package(Header(Command.REQUEST_TO_SERVER, seq=f"{n:010d}", properties=PUBLISH_PROPERTIES), body)

        for n in range(2):
            requester.send(request(n))
        pushes = await responder.take(2)  # acked, not answered: the requests still wait
        await responder.call(Command.HEARTBEAT_REQUEST)
        refused = await requester.request(request(2))
        assert (refused.header.command, refused.header.code) == (Command.RESPONSE_TO_CLIENT, 1)
        assert "max_unacked_per_session" in (refused.header.desc or "")
        responder.send(
            Package(Header(Command.RESPONSE_TO_SERVER, seq=responder.seq(), properties=PUBLISH_PROPERTIES), pushes[0].body)
        )
        answered = await requester.receive()
        [asked] = numbers_of_requests(pushes[:1])
        assert (answered.header.code, answered.header.seq) == (0, f"{asked:010d}")
        requester.send(request(3))
        assert numbers_of_requests(await responder.take(1)) == [3]
        await responder.close()
        await requester.close()


def numbers_of_requests(pushes: list[Package]) -> list[int]:
    return [orjson.loads(push.body or b"")["data"]["q"] for push in pushes]


async def test_request_without_a_responder_fails_fast(mesh: EmbeddedMesh) -> None:
    requester = await Peer.hello(mesh.port, purpose="pub")
    answer = await requester.request(
        Package(Header(Command.REQUEST_TO_SERVER, seq="1", properties=PUBLISH_PROPERTIES), event_body("rpc"))
    )
    assert (answer.header.command, answer.header.code) == (Command.RESPONSE_TO_CLIENT, 1)
    assert "SYNC" in (answer.header.desc or "")
    await requester.close()


async def test_sync_subscribers_get_published_events_as_requests(mesh: EmbeddedMesh) -> None:
    sub = await Peer.hello(mesh.port)
    await sub.subscribe("t", kind=SubscriptionType.SYNC)
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("t", 1)
    push = await sub.push()
    assert push.header.command is Command.REQUEST_TO_CLIENT
    sub.ack(push)
    await sub.call(Command.HEARTBEAT_REQUEST)
    assert mesh.unacked("group", "t") == 0
    await sub.close()
    await pub.close()


async def test_broadcast_event_acked_by_one_session_is_not_redelivered_when_the_other_leaves(mesh: EmbeddedMesh) -> None:
    s1, s2 = await Peer.hello(mesh.port), await Peer.hello(mesh.port)
    for peer in (s1, s2):
        await peer.subscribe("news", SubscriptionMode.BROADCASTING)
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("news", 1)
    await s1.take(1)
    await s2.take(1, ack=False)
    await s2.close()
    await s1.call(Command.HEARTBEAT_REQUEST)
    assert mesh.unacked("group", "news") == 0
    await s1.nothing_within(0.2)
    await s1.close()
    await pub.close()


async def test_broadcast_event_nobody_acked_goes_to_the_next_listener(mesh: EmbeddedMesh) -> None:
    s1 = await Peer.hello(mesh.port)
    await s1.subscribe("news", SubscriptionMode.BROADCASTING)
    pub = await Peer.hello(mesh.port, purpose="pub")
    await pub.publish_ok("news", 2)
    await s1.take(2, ack=False)
    await s1.close()
    s2 = await Peer.hello(mesh.port)
    await s2.subscribe("news", SubscriptionMode.BROADCASTING)
    assert numbers(await s2.take(2)) == [0, 1]
    await s2.close()
    await pub.close()


async def test_unacked_broadcast_push_is_redelivered_to_the_same_session() -> None:
    async with EmbeddedMesh(port=0, redelivery_timeout=0.3) as mesh:
        s1, s2 = await Peer.hello(mesh.port), await Peer.hello(mesh.port)
        for peer in (s1, s2):
            await peer.subscribe("news", SubscriptionMode.BROADCASTING)
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("news", 1)
        await s1.take(1)
        first = await s2.push()
        again = await s2.push(within=3)
        assert again.body == first.body
        s2.ack(again)
        await s1.nothing_within(0.5)
        await s2.call(Command.HEARTBEAT_REQUEST)
        assert mesh.unacked("group", "news") == 0
        for peer in (s1, s2, pub):
            await peer.close()
