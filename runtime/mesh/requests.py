"""Request-reply through the embedded mesh: a REQUEST_TO_SERVER goes to one responder as REQUEST_TO_CLIENT,
and the responder's RESPONSE_TO_SERVER comes back to the requester as RESPONSE_TO_CLIENT.

Correlation as the Java runtime does it (facts from its TCP path and storage plugins): the runtime
answers the requester with the seq of its REQUEST_TO_SERVER, which the storage's request callback
keeps; it never reads the seq of a RESPONSE_TO_SERVER (the Java SDK sends each one with a new random
seq). The storage pairs reply and request: RocketMQ's request() gives the request a unique
CORRELATION_ID property (with REPLY_TO_CLIENT and TTL); the runtime pushes such properties to the
responder as CloudEvent extensions, lower case with '_' written '99' ("correlation99id"); a Java
responder answers with the event it got (the SDK's example) or one built from it, so the extension
comes back, and the runtime turns it back into the CORRELATION_ID by which RocketMQ finds the waiting
request. The standalone storage has no request-reply at all. So here each REQUEST_TO_CLIENT carries a
correlation99id of ours (replacing one the requester set, as RocketMQ does); a RESPONSE_TO_SERVER is
matched by that extension when it has one, else by its seq being the REQUEST_TO_CLIENT's (the
meshconnect client answers with that seq and carries the extension back).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from runtime.mesh.session import RequestPush, Session
from runtime.protocol.events import CORRELATION_EXTENSION, PUSH_PROPERTIES, correlation_of
from runtime.protocol.frames import Command, Header, Package

if TYPE_CHECKING:
    from runtime.mesh.server import EmbeddedMesh

__all__ = ["DEFAULT_REQUEST_TTL_MS", "RequestReply"]

log = structlog.get_logger("meshconnect.mesh")

DEFAULT_REQUEST_TTL_MS = 3000  # as the Java runtime, when the request carries no 'ttl' extension


@dataclass(slots=True, eq=False)
class _PendingRequest:
    """A REQUEST_TO_SERVER waiting for its RESPONSE_TO_SERVER."""

    requester: Session
    seq: str | None
    deadline: float


class RequestReply:
    """The requests waiting for their replies, by correlation id, and the choice of responders."""

    def __init__(self, mesh: EmbeddedMesh) -> None:
        self._mesh = mesh
        self._pending: dict[str, _PendingRequest] = {}
        self._correlation_prefix = uuid.uuid4().hex  # correlation ids unique across restarts too
        self._turn = 0

    def forward(self, requester: Session, package: Package, event: dict[str, Any], topic: str) -> str | None:
        """Push the request ``event`` to a responder of ``topic``; the reason when none can take it."""
        mesh = self._mesh
        seq = mesh.next_seq()
        correlation_id = self._correlation_id(seq)
        body = orjson.dumps({**event, CORRELATION_EXTENSION: correlation_id})
        responder = self._pick_responder(topic, len(body))
        if responder is None:
            return f"no session listens to topic {topic!r} with a SYNC subscription"
        try:
            ttl = int(event.get("ttl", DEFAULT_REQUEST_TTL_MS)) / 1000
        except (TypeError, ValueError):
            ttl = DEFAULT_REQUEST_TTL_MS / 1000
        now = mesh.now()
        self._pending[correlation_id] = _PendingRequest(requester, package.header.seq, now + ttl)
        requester.waiting_requests += 1
        responder.add_inflight(seq, RequestPush(correlation_id, len(body), now + mesh.redelivery_timeout))
        responder.send(Package(Header(Command.REQUEST_TO_CLIENT, seq=seq, properties=PUSH_PROPERTIES), body))
        return None

    def _correlation_id(self, seq: str) -> str:
        """The correlation id of the REQUEST_TO_CLIENT with ``seq``, so that a reply by seq finds it as well."""
        return f"{self._correlation_prefix}-{seq}"

    def _pick_responder(self, topic: str, size: int) -> Session | None:
        candidates = [
            session
            for consumer in self._mesh.broker.iter_consumers(topic)
            for session in consumer.sessions
            if isinstance(session, Session)
            and session.listening
            and session.has_room(size)
            and session.push_commands.get(topic) is Command.REQUEST_TO_CLIENT
        ]
        if not candidates:
            return None
        self._turn += 1
        return candidates[self._turn % len(candidates)]

    def response(self, session: Session, package: Package) -> None:
        """A RESPONSE_TO_SERVER: matched by correlation extension, else by seq (see the module docstring)."""
        seq = package.header.seq
        correlation_id = correlation_of(package.body)
        if correlation_id is None and seq is not None:
            correlation_id = self._correlation_id(seq)
        if correlation_id is None or not self.answer(correlation_id, package.body, None):
            log.info("mesh.response.unmatched", peer=session.peer, seq=seq, correlation_id=correlation_id)

    def answer(self, correlation_id: str, body: bytes | None, failure: str | None) -> bool:
        """Answer the request of ``correlation_id`` with ``body``, or code 1 and ``failure``; False when none waits."""
        pending = self._pending.pop(correlation_id, None)
        if pending is None:
            return False
        pending.requester.waiting_requests -= 1
        if pending.requester.closed:
            return False
        if failure is None:
            header = Header(Command.RESPONSE_TO_CLIENT, seq=pending.seq, properties=PUSH_PROPERTIES)
        else:
            header = Header(Command.RESPONSE_TO_CLIENT, code=1, desc=failure, seq=pending.seq)
        pending.requester.send(Package(header, body if failure is None else None))
        return True

    def expire(self, now: float) -> None:
        """Drop the requests whose ttl passed (their requesters time out on their own)."""
        for correlation_id, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[correlation_id]
                pending.requester.waiting_requests -= 1

    def forget_requester(self, session: Session) -> None:
        """Drop the requests of a session that closed: no answer can reach it."""
        for correlation_id, pending in list(self._pending.items()):
            if pending.requester is session:
                del self._pending[correlation_id]
