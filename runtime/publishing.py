"""How a source's records become events: the attributes the worker fills in, and the topics input may name.

The topic of an event is its CloudEvent ``subject``. A source's config names the topic
(``source.topic``); the input a source reads (an HTTP request's ``ce-subject``, the ``subject`` of a
structured CloudEvent on a queue or in a file) may name another one only when ``source.allowed_topics``
lets it: exact names or shell-style globs (``*``, ``?``, ``[abc]``, matched case-sensitively over the
whole name; ``*`` crosses dots, so ``orders.*`` admits ``orders.eu.created``). Globs and not regular
expressions: a glob cannot be written to match more than it reads like, nor take exponential time.

A subject outside that set is refused: http-source answers 403 and publishes nothing; the worker
dead-letters a polled record that names one (:meth:`PublishRules.refusal`), addressed for replay to
``source.topic``, never to the topic it asked for. A source that names every record's topic from
its own config (``Source.names_own_topics``, e.g. mysql-source's ``topic_template``) is not checked.

A source whose records may name no topic needs ``source.topic``: :func:`check_source_topics` refuses
the config at start-up (and in ``meshconnect check``) without it.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.cloudevents import record_to_body
from runtime.config import WorkerConfig
from runtime.errors import ConfigError
from runtime.protocol.events import EncodedEvent
from runtime.record import ConnectorRecord

if TYPE_CHECKING:
    from runtime.connector import Source

__all__ = ["PublishRules", "check_source_topics"]


@dataclass(frozen=True, slots=True)
class PublishRules:
    """What the worker does to a source's records on their way to the mesh (see the module docstring).

    ``connector`` is the instance name (event ids derive from it), ``event_source`` and
    ``event_type`` fill in records that set none, ``topic`` is the subject of records that name
    none, and ``allowed_topics`` the other topics a record's input may name.
    """

    connector: str = "meshconnect"
    event_source: str = "/meshconnect"
    event_type: str = "meshconnect.record"
    topic: str | None = None
    allowed_topics: tuple[str, ...] = ()
    _allowed: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled here, not looked up per event: a route step and the worker each ask for every event.
        object.__setattr__(self, "_allowed", _matcher(self.allowed_topics))

    @classmethod
    def from_config(cls, config: WorkerConfig) -> PublishRules:
        source = config.source
        return cls(
            connector=config.name,
            event_source=source.event_source or f"/meshconnect/{config.name}",
            event_type=source.event_type or f"{config.connector}.record",
            topic=source.topic,
            allowed_topics=tuple(source.allowed_topics),
        )

    def permits(self, subject: str) -> bool:
        """True when input may send an event to ``subject``."""
        return subject == self.topic or self._allowed.match(subject) is not None

    def refusal(self, subject: str | None) -> str | None:
        """Why an event whose input named ``subject`` may not be published, or None when it may."""
        if subject is None or self.permits(subject):
            return None
        return (
            f"topic {subject[:200]!r} named by the input is not allowed here"
            f" (this source publishes to {self.topic!r} and to the topics of source.allowed_topics)"
        )

    def encode(self, record: ConnectorRecord) -> EncodedEvent:
        """The message body the worker publishes for ``record``; raises ``DataError`` when it cannot be one."""
        return record_to_body(
            record,
            connector=self.connector,
            default_source=self.event_source,
            default_type=self.event_type,
            default_subject=self.topic,
        )


def check_source_topics(source: type[Source[Any]], worker: WorkerConfig, config: Any) -> None:
    """Refuse a config under which ``source`` could produce events without a topic, or under which its own
    ``config`` names a topic the rules do not allow (:meth:`Source.configured_topics`; see the module docstring)."""
    if not source.names_own_topics and not worker.source.topic:
        raise ConfigError(
            "source.topic",
            f"{source.name} publishes events whose input names no topic, and no topic is configured for them",
            "set source.topic to the topic these events go to (and source.allowed_topics to let the input choose others)",
        )
    rules = PublishRules.from_config(worker)
    for key, topic in source.configured_topics(config):
        if not rules.permits(topic):
            raise ConfigError(
                key,
                f"topic {topic[:200]!r} is neither source.topic nor matched by source.allowed_topics",
                "add it to source.allowed_topics, or name an allowed topic",
            )


@functools.lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regular expression matching a whole name that any of the glob ``patterns`` matches."""
    # fnmatch.translate anchors each pattern at its end (\Z), re.match at the start; no pattern matches nothing.
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns) or "(?!)")
