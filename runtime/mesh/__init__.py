"""The embedded mesh: an EventMesh TCP server for the test suite and for running on one machine.

**A development and test stand-in.** Production points every connector at a real Apache
EventMesh runtime; this server speaks the same TCP protocol (HELLO, SUBSCRIBE, LISTEN, publish
and ack, push and ack, request-reply, heartbeat, goodbye; codec in :mod:`runtime.protocol.frames`)
so that connectors, tests and ``meshconnect demo`` run without one. ``meshconnect mesh`` starts it on port 10000::

    async with EmbeddedMesh(port=0) as mesh:          # or: await mesh.start() ... await mesh.stop()
        address = f"127.0.0.1:{mesh.port}"

What it does as the Java runtime does:

* HELLO needs a ``version``, a ``purpose`` of ``pub`` or ``sub`` and a non-blank ``group``; with
  ``users`` the user name and password must match. A refusal is ``HELLO_RESPONSE`` code 1 with the
  reason, then the connection is closed. Commands before HELLO are answered code 1
  ``no session is found``; bytes that do not decode close the connection without an answer.
* Publishes (``ASYNC_MESSAGE_TO_SERVER``, ``BROADCAST_MESSAGE_TO_SERVER``) must carry the
  ``protocoltype`` (``cloudevents``), ``protocolversion`` and ``protocoldesc`` header properties,
  extension names ``[a-z0-9]+``, a ``subject`` (the topic) and non-null data; ``max_event_size``
  optionally bounds the data. They are answered ``*_ACK`` with the publish's seq, code 0
  ``success``, or code 1 and the reason.
* Pushes are ``ASYNC_MESSAGE_TO_CLIENT`` (CLUSTERING, ASYNC), ``REQUEST_TO_CLIENT`` (SYNC) or
  ``BROADCAST_MESSAGE_TO_CLIENT`` (BROADCASTING), with header properties
  ``{"protocoltype": "cloudevents"}`` and a server seq; the client acks with ``<push>_ACK`` and
  that seq. The body is the published body, byte for byte (the Java runtime re-serializes it and
  adds its own extensions; we do not).
* CLUSTERING: each event goes to one listening session of each subscribed group. BROADCASTING:
  to every listening session of the group. UNSUBSCRIBE drops every topic of the session.
* Request-reply: ``REQUEST_TO_SERVER`` is pushed as ``REQUEST_TO_CLIENT`` to one listening SYNC
  subscriber of its subject, with a ``correlation99id`` extension added to the event (as the Java
  runtime over RocketMQ does); that subscriber answers ``RESPONSE_TO_SERVER`` with an event that
  carries the extension back (the Java SDK does, under a new seq) or with the seq of the
  REQUEST_TO_CLIENT it answers, and the requester gets ``RESPONSE_TO_CLIENT`` with the seq of its
  request. Requests are not stored; they live for the event's ``ttl`` extension
  (milliseconds, 3000 by default). With no SYNC subscriber listening, or when the responder leaves
  before answering, the requester gets ``RESPONSE_TO_CLIENT`` code 1 and the reason.
* A session that sends no ``HEARTBEAT_REQUEST`` for ``session_timeout`` seconds (60) is closed
  (after a ``SERVER_GOODBYE_REQUEST`` code 1 saying why). ``CLIENT_GOODBYE_REQUEST`` is answered
  and the connection closed; :meth:`EmbeddedMesh.stop` sends ``SERVER_GOODBYE_REQUEST`` code 0 to
  every session before closing it.

Where the Java runtime loses events, this mesh does better:

* The Java runtime commits a push nobody acked after about 3 s, and drops events that arrive while
  no session of a group listens. Here every topic is a bounded log and every group that subscribed
  a topic has a cursor on it: an event leaves the log only once every such group acked it. A group
  subscribing a topic for the first time starts at the earliest retained event, so nothing
  published before the sink started is lost; events wait (bounded by the log) until a session of
  the group listens. A topic no group ever subscribed keeps its events up to the bound.
* A group with no session for ``group_expiry`` seconds (7 days, Kafka's default for the offsets
  of an empty group) is dropped, so that a group renamed or retired stops holding its topics'
  logs; should it come back, it starts at the earliest retained event.
* A push not acked within ``redelivery_timeout`` seconds (30) is pushed again, as are the un-acked
  pushes of a session that closes (to another session of the group, or the next that listens).
  An ack that arrives after its push was taken back still counts: the event is not pushed again
  if it waits for redelivery, and an ack of its other push changes nothing.
  Delivery is at least once: consumers must be idempotent, as every sink here is.
* When a topic's log holds ``max_topic_events`` events the publish is answered code 1
  ``topic ... is full``: the publisher backs off and retries, nothing is dropped silently. Each
  session has a push window, so a slow consumer slows its group down instead of filling memory, and
  a peer that does not read what the mesh writes is not read from until it does: the pushes its
  HELLO asks (``unack``; a meshconnect sink asks two batches) within ``max_unacked_per_session``,
  or 1000 when it asks none. Pushes in flight are bounded in bytes as well,
  ``max_unacked_bytes_per_session`` per 1000 pushes of the window, one push always allowed, because
  the Java SDK's acks echo the whole event and a burst of large ones fills its channel.

Floods are refused, each with a ``mesh.refused`` log line: at most ``max_connections`` connections;
a connection that has not said HELLO within ``hello_timeout`` or has buffered more than
``max_bytes_before_hello`` of a frame before it is closed; a connection whose bytes take the frames
begun and not complete, over all connections, past ``max_incomplete_frame_bytes`` gets a
``SERVER_GOODBYE_REQUEST`` code 1 and is closed; a publish or subscription past
``max_topics`` or ``max_retained_bytes`` (every retained event together) is answered code 1 with
the bound. A topic with no event and no consumer left (its last group expired) is dropped.

Durability: with ``data_dir`` the accepted events, group cursors and acks go to a SQLite file
(see :mod:`runtime.mesh.store`) in one transaction per loop turn, before that turn's answers are
written, so a publish is acked only once its event is on disk and a kill -9 loses nothing that was
acked either way: un-acked events are pushed again after a restart, acked ones are not. Without
``data_dir`` everything is in memory.

Layout: :mod:`runtime.mesh.broker` (topics, cursors, deliveries; no IO),
:mod:`runtime.mesh.store` (SQLite), :mod:`runtime.mesh.server` (lifecycle, ticks, timers),
:mod:`runtime.mesh.session` (one connection), :mod:`runtime.mesh.handlers` (the answer to each command),
:mod:`runtime.mesh.requests` (request-reply), :mod:`runtime.mesh.limits` (bounds and refusals).
"""

from runtime.mesh.server import EmbeddedMesh

__all__ = ["EmbeddedMesh"]
