"""The embedded mesh's answers to each command a client sends, as the Java runtime gives them.

``handle`` dispatches a decoded package of a session to its handler by command; each handler checks
the request the way the Java runtime does, acts on the broker (or on request-reply, see
:mod:`runtime.mesh.requests`) and answers through the session.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson
import structlog

from runtime.errors import RemoteProtocolError
from runtime.mesh.broker import Delivery, Refusal
from runtime.mesh.limits import MAX_TOPIC_LENGTH, append_refusal, topic_too_long
from runtime.mesh.session import DEFAULT_PUSH_WINDOW, SUCCESS
from runtime.protocol.frames import Command, Header, Package, SubscriptionMode, SubscriptionType, UserAgent
from runtime.record import EXTENSION_NAME

if TYPE_CHECKING:
    from runtime.mesh.server import EmbeddedMesh
    from runtime.mesh.session import Session

__all__ = ["handle"]

log = structlog.get_logger("meshconnect.mesh")

NO_SESSION = "no session is found"
PUBLISH_PROPERTIES = ("protocoltype", "protocolversion", "protocoldesc")
CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64"}
)

_KNOWN_NAMES: set[str] = set()  # extension and property names already found valid, a bounded few
_KNOWN_NAMES_LIMIT = 4096


def _valid_name(name: str) -> bool:
    """``EXTENSION_NAME`` matches ``name``; the answer for a name seen before is a set lookup."""
    if name in _KNOWN_NAMES:
        return True
    if EXTENSION_NAME.fullmatch(name) is None:
        return False
    if len(_KNOWN_NAMES) < _KNOWN_NAMES_LIMIT:
        _KNOWN_NAMES.add(name)
    return True


class _Refused(Exception):
    """A request the mesh answers with code 1 and this reason."""


def _check_properties(properties: Mapping[str, Any]) -> None:
    """Refuse a publish whose header properties the Java runtime refuses."""
    for key in PUBLISH_PROPERTIES:
        if not properties.get(key):
            raise _Refused(f"header property '{key}' is missing: publish with protocoltype, protocolversion and protocoldesc")
    if properties["protocoltype"] != "cloudevents":
        raise _Refused(f"protocoltype {properties['protocoltype']!r} is not supported by the embedded mesh: publish CloudEvents")
    for key in properties:
        if not _valid_name(key):
            raise _Refused(f"header property name {key!r} is invalid: extension names are [a-z0-9]+")


def _parse_event(package: Package, max_event_size: int | None) -> dict[str, Any]:
    """The published CloudEvent as JSON, validated the way the Java runtime validates a publish."""
    _check_properties(package.header.properties)
    if not package.body:
        raise _Refused("the publish has no body: send the CloudEvent in structured JSON")
    try:
        event = orjson.loads(package.body)
    except orjson.JSONDecodeError as exc:
        raise _Refused(f"the body is not CloudEvents JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise _Refused("the body is not a CloudEvents JSON object")
    for attribute in ("specversion", "id", "source", "type"):
        if not isinstance(event.get(attribute), str) or not event[attribute]:
            raise _Refused(f"the event has no '{attribute}' attribute")
    subject = event.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise _Refused("the event has no subject: the subject is the topic to publish to")
    for name in event:
        if name not in CONTEXT_ATTRIBUTES and not _valid_name(name):
            raise _Refused(f"extension name {name!r} is invalid: extension names are [a-z0-9]+")
    data = event.get("data")
    if data is None and event.get("data_base64") is None:
        raise _Refused("the event data is null: the mesh needs data (send an empty string for none)")
    if max_event_size is not None:
        size = len(event["data_base64"]) * 3 // 4 if data is None else len(orjson.dumps(data))
        if size > max_event_size:
            raise _Refused(f"the event data is {size} bytes, above the mesh's max_event_size of {max_event_size}")
    return event


_Text = Annotated[str, msgspec.Meta(min_length=1)]
_NULL = msgspec.Raw(b"null")


class _PlainPublish(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The members of a published event with no extension but the two of the body mapping (what meshconnect's
    sources publish), typed as :func:`_parse_event` checks them; ``data`` is left as its raw JSON text."""

    specversion: _Text
    id: _Text
    source: _Text
    type: _Text
    subject: _Text
    datacontenttype: Any = None
    dataschema: Any = None
    time: Any = None
    meshdataenc: Any = None
    meshcontenttype: Any = None
    data: msgspec.Raw = _NULL
    data_base64: Any = None


_PLAIN_PUBLISH = msgspec.json.Decoder(_PlainPublish)


def _topic_of_publish(package: Package, max_event_size: int | None) -> str:
    """The topic of a publish, refused (``_Refused``) as :func:`_parse_event` refuses it.

    Once per published event: a body :class:`_PlainPublish` fits is validated in C without building its
    data, each other one (an extension, a size limit to measure, a refusal and its reason) by ``_parse_event``.
    A number in the data beyond a double's range (``1e999``) passes here, as the Java runtime's reader takes
    it; ``_parse_event`` (orjson) still refuses it, in a body with an extension or under ``max_event_size``.
    """
    body = package.body
    if max_event_size is None and body:
        try:
            if not body.isascii():
                body.decode()  # the strict UTF-8 check orjson makes; msgspec does not check the data it skips
            event = _PLAIN_PUBLISH.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass  # the general check gives the verdict (nesting msgspec gives up on, orjson may still take)
        else:
            if event.subject.strip() and (event.data != _NULL or event.data_base64 is not None):
                _check_properties(package.header.properties)
                return event.subject
    topic: str = _parse_event(package, max_event_size)["subject"]
    return topic


def handle(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    """Answer one package of ``session``: HELLO first, then the handler of its command."""
    command = package.header.command
    if command is Command.HELLO_REQUEST:
        _hello(mesh, session, package)
        return
    if session.user_agent is None:
        if command is Command.RECOMMEND_REQUEST:
            _recommend(mesh, session, package)
        else:
            session.reply(package, code=1, desc=NO_SESSION)
        return
    handler = _HANDLER_BY_ORDINAL.get(command._value_)
    if handler is None:
        session.reply(package, code=1, desc=f"{command.name} is not a command a client sends", command=command)
        return
    handler(mesh, session, package)


def _hello(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    try:
        agent = package.user_agent()
    except RemoteProtocolError:
        agent = None
    reason = _refusal(mesh, agent)
    if reason is not None:
        log.warning("mesh.hello.refused", peer=session.peer, reason=reason)
        session.reply(package, code=1, desc=reason)
        session.close_after_flush()
        return
    assert agent is not None
    if session.user_agent is None:
        session.user_agent = agent
        if agent.unack > 0:
            session.push_window = min(agent.unack, mesh.max_unacked_per_session)
            # The byte bound is per default window (the Java SDK echoes each event in its ack, and a burst of
            # large ones fills its channel): a session that asks for more pushes gets as many more bytes.
            session.push_window_bytes = mesh.max_unacked_bytes_per_session * max(1, session.push_window // DEFAULT_PUSH_WINDOW)
        log.info("mesh.session.hello", peer=session.peer, group=agent.group, purpose=agent.purpose, user=agent.username)
    session.reply(package)


def _refusal(mesh: EmbeddedMesh, agent: UserAgent | None) -> str | None:
    if agent is None:
        return "HELLO_REQUEST needs a UserAgent body"
    if agent.version is None:
        return "user agent version is null"
    if agent.purpose not in ("pub", "sub"):
        return f"user agent purpose {agent.purpose!r} is invalid: use 'pub' or 'sub'"
    if agent.group is None or not agent.group.strip():
        return "user agent group is blank: name the producer or consumer group"
    if mesh.users is not None:
        expected = mesh.users.get(agent.username or "")
        given = agent.password or ""
        if expected is None or not hmac.compare_digest(expected.encode(), given.encode()):
            return f"authentication failed for user {agent.username!r}: unknown user or wrong password"
    return None


def _recommend(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    header = Header(Command.RECOMMEND_RESPONSE, desc=SUCCESS, seq=package.header.seq)
    session.send(Package.with_json(header, mesh.address))


def _heartbeat(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    session.last_heartbeat = mesh.now()
    session.reply(package)


def _goodbye(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    session.reply(package)
    session.close_after_flush()


def _server_goodbye_response(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    log.debug("mesh.session.goodbye_answered", peer=session.peer)


def _subscribe(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    assert session.user_agent is not None
    try:
        subscription = package.subscription()
    except RemoteProtocolError:
        subscription = None
    items = subscription.topic_list if subscription is not None else ()
    if not items:
        session.reply(package, code=1, desc="the subscription names no topic")
        return
    for item in items:
        if not item.topic or not item.topic.strip():
            session.reply(package, code=1, desc="a subscription item has a blank topic")
            return
    for item in items:
        if len(item.topic) > MAX_TOPIC_LENGTH:
            session.reply(package, code=1, desc=topic_too_long(item.topic))
            return
    if not mesh.broker.has_room_for_topics(item.topic for item in items if item.topic not in session.subscriptions):
        reason = (
            f"the mesh holds {len(mesh.broker.topics)} topics, its max_topics is {mesh.broker.max_topics}:"
            " subscribe to existing topics, or retry once idle topics are dropped"
        )
        mesh.refusals.refused(mesh.now(), "max_topics", session.peer, reason)
        session.reply(package, code=1, desc=reason)
        return
    for item in items:
        if item.topic in session.subscriptions:
            continue  # as the Java runtime: the first subscription of a topic wins
        consumer = mesh.broker.consumer(session.user_agent.group or "", item.topic, item.mode)
        session.subscriptions[item.topic] = item
        session.consumers[item.topic] = consumer
        if item.mode is SubscriptionMode.BROADCASTING:
            session.push_commands[item.topic] = Command.BROADCAST_MESSAGE_TO_CLIENT
        elif item.type is SubscriptionType.SYNC:
            session.push_commands[item.topic] = Command.REQUEST_TO_CLIENT
        else:
            session.push_commands[item.topic] = Command.ASYNC_MESSAGE_TO_CLIENT
        mesh.broker.attach(session, consumer)
    log.info(
        "mesh.session.subscribed",
        peer=session.peer,
        group=session.user_agent.group,
        topics=[item.topic for item in items[:10]],
        count=len(items),
    )
    session.reply(package)


def _unsubscribe(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    # As the Java runtime: the body is ignored and every topic of the session is dropped.
    for consumer in session.consumers.values():
        mesh.broker.detach(session, consumer)
    session.subscriptions.clear()
    session.consumers.clear()
    session.push_commands.clear()
    session.reply(package)


def _listen(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    assert session.user_agent is not None
    if session.user_agent.purpose != "sub":
        session.reply(package, code=1, desc="client purpose config is not sub")
        return
    session.reply(package)
    session.listening = True
    mesh.broker.pump_all_of(session.consumers.values())


def _publish(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    try:
        topic = _topic_of_publish(package, mesh.max_event_size)
    except _Refused as refused:
        session.reply(package, code=1, desc=str(refused))
        return
    assert package.body is not None
    if len(topic) > MAX_TOPIC_LENGTH:
        session.reply(package, code=1, desc=topic_too_long(topic))
        return
    appended = mesh.broker.append(topic, package.body)
    if isinstance(appended, Refusal):
        reason = append_refusal(mesh.broker, appended, topic, len(package.body))
        mesh.refusals.refused(mesh.now(), appended.value, session.peer, reason)
        session.reply(package, code=1, desc=reason)
        return
    session.reply(package)


def _push_ack(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    seq = package.header.seq
    entry = session.take_inflight(seq) if seq is not None else None
    if entry is None:
        late = session.expired.pop(seq, None) if seq is not None else None
        if late is not None:
            # Acked after it was taken back: the event is done, wherever it was pushed again (at most once more).
            late.consumer.ack(late.offset)
            mesh.broker.pump_later(late.consumer)
        return
    if isinstance(entry, Delivery):
        mesh.broker.acked(session, entry)
    mesh.broker.pump_all_of(session.consumers.values())


def _request(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    try:
        event = _parse_event(package, mesh.max_event_size)
    except _Refused as refused:
        session.reply(package, code=1, desc=str(refused))
        return
    if session.waiting_requests >= mesh.max_unacked_per_session:
        # The requester sets each request's ttl: without this bound, requests acked but never answered pile up.
        reason = (
            f"{session.waiting_requests} requests of this session wait for replies, its max_unacked_per_session:"
            " send more once replies came or their ttl passed"
        )
        mesh.refusals.refused(mesh.now(), "max_unacked_per_session", session.peer, reason)
        session.reply(package, code=1, desc=reason)
        return
    topic: str = event["subject"]
    if len(topic) > MAX_TOPIC_LENGTH:
        session.reply(package, code=1, desc=topic_too_long(topic))
        return
    refusal = mesh.requests.forward(session, package, event, topic)
    if refusal is not None:
        session.reply(package, code=1, desc=refusal)


def _response(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    mesh.requests.response(session, package)


def _response_ack(mesh: EmbeddedMesh, session: Session, package: Package) -> None:
    """RESPONSE_TO_CLIENT_ACK: the requester got its answer; nothing is kept for it."""


_HANDLERS: Mapping[Command, Callable[[EmbeddedMesh, Session, Package], None]] = {
    Command.HEARTBEAT_REQUEST: _heartbeat,
    Command.CLIENT_GOODBYE_REQUEST: _goodbye,
    Command.SERVER_GOODBYE_RESPONSE: _server_goodbye_response,
    Command.RECOMMEND_REQUEST: _recommend,
    Command.SUBSCRIBE_REQUEST: _subscribe,
    Command.UNSUBSCRIBE_REQUEST: _unsubscribe,
    Command.LISTEN_REQUEST: _listen,
    Command.ASYNC_MESSAGE_TO_SERVER: _publish,
    Command.BROADCAST_MESSAGE_TO_SERVER: _publish,
    Command.REQUEST_TO_SERVER: _request,
    Command.RESPONSE_TO_SERVER: _response,
    Command.ASYNC_MESSAGE_TO_CLIENT_ACK: _push_ack,
    Command.BROADCAST_MESSAGE_TO_CLIENT_ACK: _push_ack,
    Command.REQUEST_TO_CLIENT_ACK: _push_ack,
    Command.RESPONSE_TO_CLIENT_ACK: _response_ack,
}


# By command ordinal: an int hashes in C, an Enum member in Python (looked up per frame).
_HANDLER_BY_ORDINAL = {command.value: handler for command, handler in _HANDLERS.items()}
