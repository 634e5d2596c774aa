"""The async EventMesh TCP client: a thin shell of IO, timeouts and reconnect around ClientSession.

::

    async with MeshClient("127.0.0.1:10000", user_agent_for("orders", "pub")) as client:
        await client.publish(event)                        # returns once the mesh acked it
        ack = await client.start_publish(event)            # pipelined: waits for window room only
        await ack

    async with MeshClient(address, user_agent_for("orders", "sub")) as client:
        await client.subscribe("orders")
        await client.listen()
        async for pushed in client.pushed():
            handle(pushed.event)
            await pushed.ack()                             # only once the event is safe

Protocol rules live in :mod:`runtime.protocol.session`; this package owns the socket, the clock and
the tasks: one supervisor (reconnect with exponential backoff and jitter, new HELLO, re-subscribe,
re-listen, then the session re-sends every publish still waiting for its ack) and one ticker
(request deadlines, heartbeats). Little is made per event: a publish's answer goes to a waiter
keyed by ``seq`` inside the session (a future, or with ``publish_nowait`` a lighter object of the
caller's), a pushed body is decoded only when read, a receiver takes and acks pushes a batch at a
time (``take_pushes``, ``ack_all``), and bytes queued during one loop iteration go out in one write.

Bounds: at most ``max_in_flight`` messages await an ack (``start_publish`` waits for room); at
most ``push_buffer`` pushed events wait for the receiver, after which the client stops reading the
socket (TCP backpressure; one read chunk may overshoot the bound); every request has a deadline.
A heartbeat that gets no answer within ``request_timeout`` marks the connection dead, except while
reading is paused for backpressure (the answer is then waiting in the socket, not lost).

Errors: :class:`~runtime.errors.MeshRejectedError` (the mesh said no, with its reason),
:class:`~runtime.errors.HelloRefusedError` (handshake refused, authentication included) and
:class:`~runtime.errors.MeshUnavailableError` (no connection, or no answer in time). A publish that
timed out may still have reached the mesh: retrying it is at-least-once, never at-most-once.

Modules: ``mesh_client`` (MeshClient: connection, ticker, requests), ``state`` (the lifecycle
table and its listeners), ``supervisor`` (addresses, backoff, the reconnect loop), ``window`` (the
publish window), ``inbox`` (pushed events and read backpressure), ``identity`` (HELLO identity,
addresses).
"""

from runtime.protocol.events import Publishable

from .identity import PROTOCOL_VERSION, Address, parse_addresses, user_agent_for
from .inbox import PushedEvent, event_of_body
from .mesh_client import AckWaiter, MeshClient
from .state import ClientState

__all__ = [
    "PROTOCOL_VERSION",
    "Address",
    "ClientState",
    "MeshClient",
    "PushedEvent",
    "AckWaiter",
    "Publishable",
    "event_of_body",
    "parse_addresses",
    "user_agent_for",
]
