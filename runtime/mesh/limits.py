"""The embedded mesh's bounds: their checks at start, what a refusal says, and how refusals are logged.

Each bound refuses with an answer the peer can read (a code 1 ack or response with the reason, or a
SERVER_GOODBYE) or, before HELLO, a close; and with a ``mesh.refused`` log line, at most one per bound
and ``REFUSAL_LOG_INTERVAL`` (with the count of the refusals in between), so that a flood of refusals
is not a flood of log lines.
"""

from __future__ import annotations

import structlog

from runtime.errors import ConfigError
from runtime.mesh.broker import Broker, Refusal
from runtime.protocol.frames import MAX_FRAME

__all__ = [
    "MAX_TOPIC_LENGTH",
    "MIN_BYTES_BEFORE_HELLO",
    "REFUSAL_LOG_INTERVAL",
    "RefusalLog",
    "append_refusal",
    "check_limits",
    "topic_too_long",
]

log = structlog.get_logger("meshconnect.mesh")

REFUSAL_LOG_INTERVAL = 1.0  # seconds between two 'mesh.refused' lines of the same bound
MIN_BYTES_BEFORE_HELLO = 1024  # a HELLO frame is a few hundred bytes
MAX_TOPIC_LENGTH = 1024  # characters: names are held apart from the retained bytes (RocketMQ allows 127)


def check_limits(
    *,
    timeouts: dict[str, float | None],
    counts: dict[str, int],
    max_bytes_before_hello: int,
    max_incomplete_frame_bytes: int,
    max_event_size: int | None,
) -> None:
    """Raise ``ConfigError`` naming the first bound that cannot work (``None`` timeouts are off)."""
    for key, value in timeouts.items():
        if value is not None and value <= 0:
            raise ConfigError(key, f"{value} is not a positive number of seconds", "give a number of seconds above 0")
    for key, count in counts.items():
        if count < 1:
            raise ConfigError(key, f"{count} is below 1", "give a count of at least 1")
    if max_bytes_before_hello < MIN_BYTES_BEFORE_HELLO:
        raise ConfigError(
            "max_bytes_before_hello",
            f"{max_bytes_before_hello} is below {MIN_BYTES_BEFORE_HELLO}",
            f"give at least {MIN_BYTES_BEFORE_HELLO} bytes: a HELLO frame takes a few hundred",
        )
    if max_incomplete_frame_bytes < MAX_FRAME:
        raise ConfigError(
            "max_incomplete_frame_bytes",
            f"{max_incomplete_frame_bytes} is below the protocol's frame limit of {MAX_FRAME}",
            f"give at least {MAX_FRAME} bytes, so that one frame of the largest size can arrive",
        )
    if max_event_size is not None and max_event_size < 1:
        raise ConfigError("max_event_size", f"{max_event_size} is below 1", "give a size in bytes, or none for no limit")


def topic_too_long(topic: str) -> str:
    return f"the topic name has {len(topic)} characters, more than {MAX_TOPIC_LENGTH}: use a shorter subject"


def append_refusal(broker: Broker, refusal: Refusal, topic: str, size: int) -> str:
    """What the publisher of ``size`` bytes to ``topic`` refused by ``refusal`` is told."""
    if refusal is Refusal.TOPIC_FULL:
        groups = sorted({consumer.group for consumer in broker.iter_consumers(topic)})
        return f"topic {topic!r} is full ({broker.max_topic_events} events wait for groups {groups[:10]}): retry later"
    if refusal is Refusal.TOO_MANY_TOPICS:
        return (
            f"topic {topic!r} would be new, and the mesh holds {len(broker.topics)} topics, its max_topics:"
            " publish to existing topics, or retry once idle topics are dropped"
        )
    return (
        f"the mesh retains {broker.retained_bytes} bytes of events, and {size} more would pass its"
        f" max_retained_bytes of {broker.max_retained_bytes}: retry once subscribers acked events"
    )


class RefusalLog:
    """At most one ``mesh.refused`` line per bound and ``REFUSAL_LOG_INTERVAL``, counting the refusals in between."""

    def __init__(self) -> None:
        self._quiet_until: dict[str, float] = {}  # keyed by bound: a handful of keys
        self._unlogged: dict[str, int] = {}

    def refused(self, now: float, limit: str, peer: str, reason: str) -> None:
        if now < self._quiet_until.get(limit, 0.0):
            self._unlogged[limit] = self._unlogged.get(limit, 0) + 1
            return
        self._quiet_until[limit] = now + REFUSAL_LOG_INTERVAL
        log.warning("mesh.refused", limit=limit, peer=peer, reason=reason, unlogged_before=self._unlogged.pop(limit, 0))
