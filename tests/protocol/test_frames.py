"""Frame codec behaviour beyond the vectors: limits, Java's reading rules, typed bodies, poisoning."""

from __future__ import annotations

import struct

import pytest

from runtime.errors import HeaderlessFrameError, LocalProtocolError, RemoteProtocolError
from runtime.protocol import jackson
from runtime.protocol.frames import (
    MAX_FRAME,
    NULL_PROPERTIES,
    PREFIX,
    Command,
    FrameDecoder,
    Header,
    Package,
    RedirectInfo,
    Subscription,
    SubscriptionItem,
    SubscriptionMode,
    SubscriptionType,
    UserAgent,
    encode,
    frame_bytes,
)
from runtime.protocol.java import frame_as_written, java_header_view


def frame(header: bytes | str, body: bytes = b"", *, header_length: int | None = None, length: int | None = None) -> bytes:
    header_bytes = header.encode() if isinstance(header, str) else header
    announced = 13 + len(header_bytes) + len(body) if length is None else length
    return (
        PREFIX
        + struct.pack(">ii", announced, len(header_bytes) if header_length is None else header_length)
        + header_bytes
        + body
    )


def decode_one(data: bytes) -> Package:
    packages = FrameDecoder().feed(data)
    assert len(packages) == 1
    return packages[0]


def test_header_json_is_written_in_javas_key_order_without_null_members() -> None:
    header = Header(Command.SERVER_GOODBYE_REQUEST, 1, desc="bye \u00e9 \U0001f389", properties={"b": 1, "a": "x"})
    assert header.to_json() == (
        b'{"cmd":"SERVER_GOODBYE_REQUEST","code":1,"desc":"bye \xc3\xa9 \\uD83C\\uDF89",'
        b'"properties":{"b":1,"a":"x"},"command":"SERVER_GOODBYE_REQUEST"}'
    )


def test_encode_refuses_frames_over_4_mib_like_java_and_decoder_refuses_frames_over_4_mib_minus_8() -> None:
    header = Header(Command.ASYNC_MESSAGE_TO_SERVER, seq="1")
    header_length = len(header.to_json())
    largest = Package(header, b"x" * (MAX_FRAME - 13 - header_length))
    encoded = encode(largest)
    assert struct.unpack_from(">i", encoded, 13)[0] == MAX_FRAME  # encodable (Java's encoder allows length == 4 MiB)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode(Package(header, b"x" * (MAX_FRAME - 12 - header_length)))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        FrameDecoder().feed(encoded[:17])  # refused from the length prefix alone
    fits = Package(header, b"x" * (MAX_FRAME - 8 - 13 - header_length))
    assert FrameDecoder().feed(encode(fits)) == [fits]


@pytest.mark.parametrize("length", [9, 12])
def test_frame_too_short_for_the_header_length_field_is_an_error(length: int) -> None:
    with pytest.raises(RemoteProtocolError, match="no room"):
        FrameDecoder().feed(PREFIX + struct.pack(">I", length) + b"\0" * (length - 9))


@pytest.mark.parametrize("length", [0, 8, 2**31, 2**32 - 1])
def test_length_field_is_unsigned_and_bounded(length: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(PREFIX + struct.pack(">I", length) + b"\0\0\0\0")
    with pytest.raises(RemoteProtocolError, match="unusable"):
        decoder.feed(b"")


def test_magic_is_only_checked_once_the_whole_frame_is_there() -> None:
    bad = b"NotMesh!!0000" + frame('{"cmd":"HEARTBEAT_REQUEST"}')[13:]
    decoder = FrameDecoder()
    assert decoder.feed(bad[:-1]) == []
    assert decoder.buffered == len(bad) - 1
    with pytest.raises(RemoteProtocolError, match="magic"):
        decoder.feed(bad[-1:])


@pytest.mark.parametrize("header_length", [0, -1, -(2**31)])
def test_header_length_zero_or_negative_is_a_headerless_frame(header_length: int) -> None:
    data = frame('{"cmd":"HELLO_REQUEST"}', b'{"x":1}', header_length=header_length)
    with pytest.raises(HeaderlessFrameError, match="no header") as raised:
        FrameDecoder().feed(data)
    assert raised.value.header is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b'{"cmd":2}', Header(Command.HELLO_REQUEST)),
        (b'{"cmd":"36","code":"7"}', Header(Command.RECOMMEND_RESPONSE, 7)),
        (b'{"cmd":" HELLO_RESPONSE\\n","code":" +5 "}', Header(Command.HELLO_RESPONSE, 5)),
        (b'{"cmd":"HELLO_RESPONSE","code":"null","properties":null}', Header(Command.HELLO_RESPONSE, properties=NULL_PROPERTIES)),
        (b'{"cmd":"LISTEN_RESPONSE","code":1.9,"seq":42,"desc":true}', Header(Command.LISTEN_RESPONSE, 1, "true", "42")),
        (
            b'  {"cmd":"HEARTBEAT_REQUEST","extra":[1,{}],"command":"nonsense"} trailing junk \xff',
            Header(Command.HEARTBEAT_REQUEST),
        ),
        (
            b'\xef\xbb\xbf{"cmd":"HEARTBEAT_REQUEST","code":null,"properties":{"k":[1,2]}}',
            Header(Command.HEARTBEAT_REQUEST, properties={"k": [1, 2]}),
        ),
    ],
)
def test_header_is_read_like_jackson(header: bytes, expected: Header) -> None:
    assert decode_one(frame(header)).header == expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "not json",
        "[]",
        '"HELLO_REQUEST"',
        '{"cmd":"hello_request"}',
        '{"cmd":"NO_SUCH_COMMAND"}',
        '{"cmd":""}',
        '{"cmd":"  "}',
        '{"cmd":"1x"}',
        '{"cmd":37}',
        '{"cmd":-1}',
        '{"cmd":true}',
        '{"cmd":"HEARTBEAT_REQUEST","code":"zero"}',
        '{"cmd":"HEARTBEAT_REQUEST","code":2147483648}',
        '{"cmd":"HEARTBEAT_REQUEST","code":false}',
        '{"cmd":"HEARTBEAT_REQUEST","seq":{"a":1}}',
        '{"cmd":"HEARTBEAT_REQUEST","properties":[1]}',
        '{"cmd":"HEARTBEAT_REQUEST","code":NaN}',
        '{"cmd":"HEARTBEAT_REQUEST"',
    ],
)
def test_header_jackson_would_refuse_is_an_error(header: str) -> None:
    with pytest.raises(RemoteProtocolError, match="header"):
        FrameDecoder().feed(frame(header))


def test_null_properties_read_as_empty_but_show_as_null_in_javas_view() -> None:
    header = decode_one(frame('{"cmd":"HEARTBEAT_REQUEST","properties":null}')).header
    assert header.properties == {}
    assert java_header_view(header)["properties"] is None
    assert java_header_view(decode_one(frame('{"cmd":"HEARTBEAT_REQUEST"}')).header)["properties"] == {}


def test_header_with_invalid_utf8_inside_the_json_is_an_error() -> None:
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        FrameDecoder().feed(frame(b'{"cmd":"HEARTBEAT_REQUEST","seq":"\xff"}'))


def test_header_without_cmd_is_headerless_unless_a_body_follows() -> None:
    with pytest.raises(HeaderlessFrameError) as raised:
        FrameDecoder().feed(frame('{"code":3,"seq":"s"}'))
    assert raised.value.header == {"cmd": None, "code": 3, "desc": None, "seq": "s", "properties": {}}
    with pytest.raises(RemoteProtocolError) as refused:
        FrameDecoder().feed(frame('{"code":3}', b"x"))
    assert not isinstance(refused.value, HeaderlessFrameError)


def test_headerless_frame_is_consumed_and_the_decoder_goes_on_like_javas() -> None:
    heartbeat = encode(Package(Header(Command.HEARTBEAT_REQUEST, seq="1")))
    decoder = FrameDecoder()
    with pytest.raises(HeaderlessFrameError) as raised:
        decoder.feed(heartbeat + frame('{"seq":"2"}') + heartbeat + heartbeat[:5])
    assert [package.header.seq for package in raised.value.packages] == ["1"]
    assert decoder.feed(heartbeat[5:]) == [Package(Header(Command.HEARTBEAT_REQUEST, seq="1"))] * 2
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    ("command", "kept"),
    [
        (Command.HEARTBEAT_REQUEST, False),
        (Command.LISTEN_REQUEST, False),
        (Command.REGISTER_REQUEST, False),
        (Command.SYS_LOG_TO_LOGSERVER, False),
        (Command.ASYNC_MESSAGE_TO_CLIENT_ACK, True),
        (Command.SERVER_GOODBYE_REQUEST, True),
        (Command.RECOMMEND_RESPONSE, True),
    ],
)
def test_bodies_are_kept_or_dropped_by_command_like_java(command: Command, kept: bool) -> None:
    package = decode_one(encode(Package(Header(command), b"not even json \xff")))
    assert package.body == (b"not even json \xff" if kept else None)


@pytest.mark.parametrize(
    ("command", "body"),
    [
        (Command.HELLO_REQUEST, b'"a string"'),
        (Command.HELLO_REQUEST, b"[1]"),
        (Command.HELLO_REQUEST, b'{"pid":"abc"}'),
        (Command.HELLO_REQUEST, b'{"port":1e12}'),
        (Command.RECOMMEND_REQUEST, b'{"group":{"a":1}}'),
        (Command.SUBSCRIBE_REQUEST, b'{"topicList":[{"topic":"t","mode":"clustering","type":"ASYNC"}]}'),
        (Command.SUBSCRIBE_REQUEST, b'{"topicList":[{"topic":"t","mode":"CLUSTERING","type":"async"}]}'),
        (Command.SUBSCRIBE_REQUEST, b'{"topicList":{"topic":"t"}}'),
        (Command.UNSUBSCRIBE_REQUEST, b"garbage"),
        (Command.REDIRECT_TO_CLIENT, b'{"ip":"10.0.0.1","port":"http"}'),
        (Command.REDIRECT_TO_CLIENT, b"12"),
    ],
)
def test_typed_bodies_are_validated_like_javas_deserializer(command: Command, body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not a valid"):
        FrameDecoder().feed(encode(Package(Header(command), body)))


def test_typed_bodies_round_trip_through_their_accessors() -> None:
    agent = UserAgent(
        subsystem="5023", pid=7, host="h", port=1, version="2.0", username="u", password="p", token="t", group="g", purpose="sub"
    )
    hello = decode_one(encode(Package.with_json(Header(Command.HELLO_REQUEST, seq="1"), agent)))
    assert hello.user_agent() == agent
    subscription = Subscription(
        (SubscriptionItem("a"), SubscriptionItem("b", SubscriptionMode.BROADCASTING, SubscriptionType.SYNC))
    )
    subscribe = decode_one(encode(Package.with_json(Header(Command.SUBSCRIBE_REQUEST), subscription)))
    assert (
        subscribe.body
        == b'{"topicList":[{"topic":"a","mode":"CLUSTERING","type":"ASYNC"},{"topic":"b","mode":"BROADCASTING","type":"SYNC"}]}'
    )
    assert subscribe.subscription() == subscription
    redirect = decode_one(encode(Package.with_json(Header(Command.REDIRECT_TO_CLIENT), RedirectInfo("10.0.0.2", 10000))))
    assert redirect.redirect_info() == RedirectInfo("10.0.0.2", 10000)
    assert decode_one(encode(Package(Header(Command.HELLO_REQUEST), b"null"))).body is None


def test_lenient_typed_values_are_coerced_like_jackson() -> None:
    body = b'{"pid":"12","port":3.9,"version":2,"purpose":"pub","group":"g","unknown":{"x":[]},"unack":null}'
    agent = decode_one(encode(Package(Header(Command.HELLO_REQUEST), body))).user_agent()
    assert agent == UserAgent(pid=12, port=3, version="2", purpose="pub", group="g")


def test_string_body_is_a_quoted_json_string_like_java() -> None:
    package = Package.with_json(Header(Command.RECOMMEND_RESPONSE), "10.0.0.1:10000")
    assert package.body == b'"10.0.0.1:10000"'
    assert decode_one(encode(package)).text() == '"10.0.0.1:10000"'


def test_user_agent_repr_hides_secrets() -> None:
    text = repr(UserAgent(username="alice", password="hunter2", token="tok-secret", group="g"))
    assert "alice" in text
    assert "hunter2" not in text
    assert "tok-secret" not in text
    assert "password='***'" in text


def test_decoder_keeps_at_most_one_partial_frame() -> None:
    heartbeat = encode(Package(Header(Command.HEARTBEAT_REQUEST, seq="1")))
    decoder = FrameDecoder()
    packages = decoder.feed(heartbeat * 50 + heartbeat[:30])
    assert len(packages) == 50
    assert decoder.buffered == 30
    assert decoder.feed(heartbeat[30:]) == [Package(Header(Command.HEARTBEAT_REQUEST, seq="1"))]
    assert decoder.buffered == 0


def test_error_after_good_frames_carries_them() -> None:
    good = encode(Package(Header(Command.HEARTBEAT_REQUEST, seq="1")))
    with pytest.raises(RemoteProtocolError, match="limit") as raised:
        FrameDecoder().feed(good + b"X" * 30)
    assert raised.value.packages == (Package(Header(Command.HEARTBEAT_REQUEST, seq="1")),)


def test_a_header_framed_as_written_is_the_frame_encode_writes() -> None:
    package = Package(Header(Command.ASYNC_MESSAGE_TO_SERVER, seq="9", properties={"protocoltype": "cloudevents"}), b"{}")
    assert frame_as_written(package.header.to_json(), b"{}") == encode(package)
    assert frame_bytes(package.header.to_json(), b"{}") == encode(package)
    assert jackson.dumps({"k": None}) == b'{"k":null}'
