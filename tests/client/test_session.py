"""The sans-IO client session: state table, seq correlation, deadlines and re-sending, no sockets."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from cloudevents.core.v1.event import CloudEvent

from runtime.errors import HelloRefusedError, LocalProtocolError, MeshRejectedError, RemoteProtocolError
from runtime.protocol.frames import (
    Command,
    FrameDecoder,
    Header,
    Package,
    RedirectInfo,
    SubscriptionItem,
    SubscriptionMode,
    UserAgent,
    encode,
)
from runtime.protocol.session import (
    TRANSITIONS,
    ClientSession,
    Completed,
    Expired,
    Failed,
    Pushed,
    Redirected,
    RequestKind,
    ServerGoodbye,
    SessionState,
    Trigger,
)

AGENT = UserAgent(version="2.0", group="g", purpose="pub", username="u", password="secret")


def event(number: int) -> CloudEvent:
    return CloudEvent(
        attributes={
            "id": f"event-{number}",
            "source": "/tests",
            "type": "test",
            "specversion": "1.0",
            "subject": "orders",
            "time": datetime(2026, 1, 1, tzinfo=UTC),
            "datacontenttype": "application/json",
        },
        data={"n": number},
    )


def sent(session: ClientSession[str]) -> list[Package]:
    return FrameDecoder().feed(session.data_to_send())


def answer(command: Command, seq: str | None, code: int = 0, desc: str | None = "success") -> bytes:
    return encode(Package(Header(command, code=code, desc=desc, seq=seq), None))


def ready_session() -> ClientSession[str]:
    session: ClientSession[str] = ClientSession(AGENT)
    seq = session.connection_made("hello", now=0.0, timeout=5.0)
    session.data_to_send()
    session.receive_data(answer(Command.HELLO_RESPONSE, seq))
    assert session.state is SessionState.READY
    return session


def test_hello_carries_the_user_agent_and_ready_on_success() -> None:
    session: ClientSession[str] = ClientSession(AGENT)
    assert session.state is SessionState.DISCONNECTED
    seq = session.connection_made("hello", now=0.0, timeout=5.0)
    assert session.state is SessionState.GREETING
    (hello,) = sent(session)
    assert hello.header.command is Command.HELLO_REQUEST
    assert hello.header.seq == seq and len(seq) == 10 and seq.isdigit()
    assert hello.user_agent() == AGENT
    events = session.receive_data(answer(Command.HELLO_RESPONSE, seq))
    assert [(type(e), e.kind, e.token) for e in events] == [(Completed, RequestKind.HELLO, "hello")]  # type: ignore[union-attr]
    assert session.state is SessionState.READY


def test_refused_hello_gives_the_servers_reason_and_leaves() -> None:
    session: ClientSession[str] = ClientSession(AGENT)
    seq = session.connection_made("hello", now=0.0, timeout=5.0)
    (event_,) = session.receive_data(answer(Command.HELLO_RESPONSE, seq, code=1, desc="auth failed for user u"))
    assert isinstance(event_, Failed)
    assert isinstance(event_.error, HelloRefusedError)
    assert "auth failed for user u" in str(event_.error)
    assert session.state is SessionState.LEAVING


def test_illegal_transitions_raise() -> None:
    session: ClientSession[str] = ClientSession(AGENT)
    with pytest.raises(LocalProtocolError, match="while disconnected"):
        session.connection_lost()
    with pytest.raises(LocalProtocolError, match="needs ready"):
        session.subscribe([SubscriptionItem("t")], "s", now=0.0, timeout=1.0)
    session.close()
    with pytest.raises(LocalProtocolError):
        session.connection_made("hello", now=0.0, timeout=1.0)
    # Every state has a way to CLOSED, and CLOSED leads nowhere else.
    assert all((state, Trigger.CLOSE) in TRANSITIONS for state in SessionState)
    assert {target for (state, _), target in TRANSITIONS.items() if state is SessionState.CLOSED} == {SessionState.CLOSED}


def test_answers_are_correlated_by_seq_in_any_order() -> None:
    session = ready_session()
    seqs = [session.message(RequestKind.PUBLISH, event(n), f"token-{n}", now=1.0, timeout=10.0) for n in range(5)]
    assert len(set(seqs)) == 5
    frames = sent(session)
    assert [p.header.seq for p in frames] == seqs
    assert all(p.header.command is Command.ASYNC_MESSAGE_TO_SERVER for p in frames)
    reversed_acks = b"".join(answer(Command.ASYNC_MESSAGE_TO_SERVER_ACK, seq) for seq in reversed(seqs))
    events = session.receive_data(reversed_acks)
    assert [e.token for e in events] == [f"token-{n}" for n in reversed(range(5))]  # type: ignore[union-attr]
    assert session.in_flight == 0


def test_rejected_publish_fails_with_the_servers_desc_and_others_still_succeed() -> None:
    session = ready_session()
    good = session.message(RequestKind.PUBLISH, event(1), "good", now=0.0, timeout=10.0)
    bad = session.message(RequestKind.PUBLISH, event(2), "bad", now=0.0, timeout=10.0)
    events = session.receive_data(
        answer(Command.ASYNC_MESSAGE_TO_SERVER_ACK, bad, code=1, desc="topic orders is full")
        + answer(Command.ASYNC_MESSAGE_TO_SERVER_ACK, good)
    )
    failed, completed = events
    assert isinstance(failed, Failed) and failed.token == "bad"
    assert isinstance(failed.error, MeshRejectedError) and "topic orders is full" in str(failed.error)
    assert isinstance(completed, Completed) and completed.token == "good"


def test_unknown_seq_and_wrong_command_are_ignored() -> None:
    session = ready_session()
    seq = session.message(RequestKind.PUBLISH, event(1), "p", now=0.0, timeout=10.0)
    assert session.receive_data(answer(Command.ASYNC_MESSAGE_TO_SERVER_ACK, "9999999999")) == []
    assert session.receive_data(answer(Command.SUBSCRIBE_RESPONSE, seq)) == []
    assert session.in_flight == 1


def test_deadlines_expire_only_when_due() -> None:
    session = ready_session()
    session.message(RequestKind.PUBLISH, event(1), "short", now=0.0, timeout=1.0)
    session.message(RequestKind.PUBLISH, event(2), "long", now=0.0, timeout=5.0)
    assert session.expire(0.5) == []
    (first,) = session.expire(1.0)
    assert isinstance(first, Expired) and first.token == "short" and not first.connection_lost
    assert session.expire(4.9) == []
    assert [e.token for e in session.expire(5.0)] == ["long"]


def test_messages_survive_connection_loss_and_are_resent_with_their_seq() -> None:
    session = ready_session()
    published = session.message(RequestKind.PUBLISH, event(1), "p", now=0.0, timeout=30.0)
    session.subscribe([SubscriptionItem("orders", SubscriptionMode.BROADCASTING)], "sub", now=0.0, timeout=5.0)
    session.data_to_send()
    lost = session.connection_lost()
    assert [(e.token, e.connection_lost) for e in lost] == [("sub", True)]
    assert session.state is SessionState.DISCONNECTED
    # Published while disconnected: queued, not written.
    queued = session.message(RequestKind.BROADCAST, event(2), "b", now=1.0, timeout=30.0)
    assert session.data_to_send() == b""
    hello = session.connection_made("hello", now=2.0, timeout=5.0)
    assert [p.header.command for p in sent(session)] == [Command.HELLO_REQUEST]
    session.receive_data(answer(Command.HELLO_RESPONSE, hello))
    resent = sent(session)
    assert [(p.header.command, p.header.seq) for p in resent] == [
        (Command.ASYNC_MESSAGE_TO_SERVER, published),
        (Command.BROADCAST_MESSAGE_TO_SERVER, queued),
    ]
    assert len({published, queued, hello}) == 3


def test_push_ack_goes_only_on_the_connection_it_came_from() -> None:
    session = ready_session()
    push = Package(Header(Command.ASYNC_MESSAGE_TO_CLIENT, seq="77", properties={"protocoltype": "cloudevents"}), b"{}")
    (pushed,) = session.receive_data(encode(push))
    assert isinstance(pushed, Pushed)
    assert session.ack(pushed)
    (ack,) = sent(session)
    assert (ack.header.command, ack.header.seq, ack.header.code) == (Command.ASYNC_MESSAGE_TO_CLIENT_ACK, "77", 0)
    session.connection_lost()
    seq = session.connection_made("hello", now=0.0, timeout=5.0)
    session.receive_data(answer(Command.HELLO_RESPONSE, seq))
    session.data_to_send()
    assert not session.ack(pushed)
    assert session.data_to_send() == b""


def test_server_goodbye_is_answered_and_redirect_reported() -> None:
    session = ready_session()
    (goodbye,) = session.receive_data(answer(Command.SERVER_GOODBYE_REQUEST, None, desc="graceful normal quit"))
    assert goodbye == ServerGoodbye(0, "graceful normal quit")
    assert session.state is SessionState.LEAVING
    assert [p.header.command for p in sent(session)] == [Command.SERVER_GOODBYE_RESPONSE]
    redirect = Package.with_json(Header(Command.REDIRECT_TO_CLIENT), RedirectInfo("10.0.0.2", 10001))
    assert session.receive_data(encode(redirect)) == [Redirected("10.0.0.2", 10001)]


def test_bytes_split_anywhere_give_the_same_events() -> None:
    session = ready_session()
    seqs = [session.message(RequestKind.PUBLISH, event(n), n, now=0.0, timeout=10.0) for n in range(3)]  # type: ignore[arg-type]
    wire = b"".join(answer(Command.ASYNC_MESSAGE_TO_SERVER_ACK, seq) for seq in seqs)
    tokens = [e.token for byte in range(len(wire)) for e in session.receive_data(wire[byte : byte + 1])]  # type: ignore[union-attr]
    assert tokens == [0, 1, 2]


def test_garbage_raises_remote_protocol_error() -> None:
    session = ready_session()
    with pytest.raises(RemoteProtocolError):
        session.receive_data(b"NotAMesh0000" + b"\x00" * 20)


def test_seq_wraps_after_ten_digits() -> None:
    session: ClientSession[str] = ClientSession(AGENT)
    session._next_seq = 10**10 - 1
    assert session.next_seq() == "9999999999"
    assert session.next_seq() == "0000000000"


def test_request_reply_correlates_the_response_and_acks_it() -> None:
    session = ready_session()
    seq = session.message(RequestKind.REQUEST, event(1), "ask", now=0.0, timeout=5.0)
    (request,) = sent(session)
    assert request.header.command is Command.REQUEST_TO_SERVER
    response = Package(Header(Command.RESPONSE_TO_CLIENT, seq=seq, properties={"protocoltype": "cloudevents"}), b"{}")
    (completed,) = session.receive_data(encode(response))
    assert isinstance(completed, Completed) and completed.token == "ask" and completed.package.body == b"{}"
    (ack,) = sent(session)
    assert (ack.header.command, ack.header.seq) == (Command.RESPONSE_TO_CLIENT_ACK, seq)


def test_reply_answers_a_request_push_with_its_seq() -> None:
    session = ready_session()
    push = Package(Header(Command.REQUEST_TO_CLIENT, seq="41", properties={"protocoltype": "cloudevents"}), b"{}")
    (pushed,) = session.receive_data(encode(push))
    assert isinstance(pushed, Pushed)
    assert session.reply(pushed, event(2))
    (reply,) = sent(session)
    assert (reply.header.command, reply.header.seq) == (Command.RESPONSE_TO_SERVER, "41")
    async_push = Package(Header(Command.ASYNC_MESSAGE_TO_CLIENT, seq="42"), b"{}")
    (not_a_request,) = session.receive_data(encode(async_push))
    with pytest.raises(LocalProtocolError, match="only a REQUEST_TO_CLIENT"):
        session.reply(not_a_request, event(3))  # type: ignore[arg-type]


def test_reply_carries_the_requests_correlation_id_back() -> None:
    """The real runtime pairs a reply with its request by the storage's correlation id, not the seq."""
    session = ready_session()
    body = b'{"specversion": "1.0", "id": "q", "source": "/s", "type": "t", "correlation99id": "rocketmq-7", "data": ""}'
    (pushed,) = session.receive_data(encode(Package(Header(Command.REQUEST_TO_CLIENT, seq="41"), body)))
    assert isinstance(pushed, Pushed)
    assert session.reply(pushed, event(2))
    (reply,) = sent(session)
    assert orjson.loads(reply.body or b"")["correlation99id"] == "rocketmq-7"
