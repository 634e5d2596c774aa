"""The connector API: subclass :class:`Source` or :class:`Sink`, declare a config model, done.

Lifecycle, as the worker drives it (the order is a promise):

Source
    1. ``__init__(config)`` parses nothing more than the typed config; it does no IO.
    2. ``await start(context)`` connects to the external system. ``context.offset(partition)``
       returns the last committed offset of any partition (``None`` when it has none);
       ``context.assigned_groups`` says which partition groups this replica owns.
    3. ``await poll()`` is called in a loop and returns the next records (``[]`` when idle). It must
       return within about a second when there is nothing to read, and never block forever.
       Each record carries its ``partition`` and ``offset``.
    4. The worker publishes every record to the mesh and, once the mesh acknowledged every record
       of a partition up to some offset, checkpoints that offset to the registry.
    5. ``await commit(records)`` is called with the records whose offsets are now durable, in
       order: the place to ack upstream (a queue message, an HTTP response) if the system needs it.
    6. ``await stop()`` releases everything; it is called once, after the last poll and commit.

Sink
    1. ``__init__(config)``; 2. ``await start(context)`` connects.
    3. ``await put(records)`` writes a batch. When it returns, the writes are durable: the worker
       then acknowledges the events to the mesh. It returns the records it could not handle as
       :class:`Rejection` s (they go to the dead-letter topic; the rest count as written).
       Raise :class:`~runtime.errors.RetriableError` when the target is unavailable (the same
       batch is retried with backoff and never dead-lettered), or
       :class:`~runtime.errors.DataError` when the batch as a whole is bad (the worker retries
       record by record to single out the poison).
    4. ``await stop()``.

A complete source, runnable with ``meshconnect run`` once registered::

    import asyncio
    from pydantic import Field
    from runtime import ConnectorConfig, ConnectorRecord, Source, SourceContext

    class CounterConfig(ConnectorConfig):
        limit: int = Field(10, description="How many numbers to emit.")

    class CounterSource(Source[CounterConfig]):
        name = "counter-source"
        description = "Emits the numbers 0..limit-1, resuming where it stopped."
        config_model = CounterConfig

        async def start(self, context: SourceContext) -> None:
            last = context.offset({"counter": "main"})
            self.next = 0 if last is None else last["n"] + 1

        async def poll(self) -> list[ConnectorRecord]:
            if self.next >= self.config.limit:
                await asyncio.sleep(0.5)
                return []
            n, self.next = self.next, self.next + 1
            return [ConnectorRecord(data={"n": n}, partition={"counter": "main"}, offset={"n": n})]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import structlog

from runtime.config import ConnectorConfig
from runtime.observability import connector_counter, connector_gauge, seconds_behind
from runtime.protocol.events import MAX_EVENT_BODY
from runtime.publishing import PublishRules
from runtime.record import ConnectorRecord, JsonValue, partition_key

__all__ = ["MAX_EVENT_BODY", "CounterMetric", "GaugeMetric", "Rejection", "Sink", "SinkContext", "Source", "SourceContext"]

ConfigT = TypeVar("ConfigT", bound=ConnectorConfig)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record a sink could not handle, and why; the worker dead-letters it."""

    record: ConnectorRecord
    reason: str


class CounterMetric(Protocol):
    """A Prometheus counter of one connector instance, as ``context.counter(name)`` hands it out."""

    def inc(self, amount: float = 1) -> None: ...


class GaugeMetric(Protocol):
    """A Prometheus gauge of one connector instance, as ``context.gauge(name, **labels)`` hands it out."""

    def set(self, value: float) -> None: ...


class _Metrics:
    """The metrics a connector keeps itself, defined once in :mod:`runtime.observability`, labelled like the worker's."""

    __slots__ = ()
    connector_name: str
    connector_type: str

    def counter(self, metric: str, **labels: str) -> CounterMetric:
        """The counter ``metric`` (e.g. ``meshconnect_tombstones_purged_total``) of this instance, ``labels`` bound.

        An unknown name is a ConfigError: metrics are defined in runtime/observability.py, not by connectors.
        """
        return connector_counter(metric, self.connector_type, self.connector_name, labels)

    def gauge(self, metric: str, **labels: str) -> GaugeMetric:
        """The gauge ``metric`` (e.g. ``meshconnect_snapshot_rows_done``) of this instance, ``labels`` bound."""
        return connector_gauge(metric, self.connector_type, self.connector_name, labels)


@dataclass(slots=True)
class SourceContext(_Metrics):
    """What a running source may know about its place in the deployment."""

    connector_name: str
    committed_offsets: Mapping[str, Mapping[str, JsonValue]]
    assigned_groups: frozenset[str] = frozenset({"default"})
    log: Any = field(default_factory=structlog.get_logger)
    rules: PublishRules = field(default_factory=PublishRules)
    """How the worker publishes the records: the topic, the topics input may name, the defaults it fills in."""
    count_refused: Callable[[str], None] = field(default=lambda reason: None)
    """Count input the source refused before it became a record (``meshconnect_refused_total{reason}``)."""
    connector_type: str = ""
    """The registered connector (e.g. ``mysql-source``): the ``connector`` label of the metrics."""

    def offset(self, partition: Mapping[str, JsonValue]) -> Mapping[str, JsonValue] | None:
        """The last committed offset of ``partition``, or ``None`` when nothing was committed."""
        return self.committed_offsets.get(partition_key(partition))

    def report_lag(self, newest: datetime | None) -> None:
        """How far behind its system this source reads (``meshconnect_source_lag_seconds``): ``newest`` is the
        system's time (commit, append) of the newest record just read; None once a read found nothing newer."""
        self.gauge("meshconnect_source_lag_seconds").set(0.0 if newest is None else seconds_behind(newest))


@dataclass(slots=True)
class SinkContext(_Metrics):
    """What a running sink may know about its place in the deployment."""

    connector_name: str
    log: Any = field(default_factory=structlog.get_logger)
    connector_type: str = ""
    """The registered connector (e.g. ``mysql-sink``): the ``connector`` label of the metrics."""


class _Connector(Generic[ConfigT]):
    name: ClassVar[str]
    """The registered connector name, ``<system>-source`` or ``<system>-sink``."""
    description: ClassVar[str]
    """One line for ``meshconnect list``."""
    config_model: ClassVar[type[ConnectorConfig]]
    """The typed model of this connector's ``connector:`` config block."""

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    async def stop(self) -> None:
        """Release every resource; called once."""


class Source(_Connector[ConfigT]):
    """Reads an external system and hands records to the worker. See the module docstring."""

    side: ClassVar[str] = "source"
    exclusive: ClassVar[bool] = True
    """True: one active replica per partition group holds a lease, the others stand by (a source
    that reads a replayable position: binlog, file, stream). False: every replica is active and
    needs no lease (a source that is pushed to: an HTTP endpoint behind a load balancer)."""
    names_own_topics: ClassVar[bool] = False
    """True when the connector sets every record's subject from its own config (mysql-source's
    ``topic_template``): ``source.topic`` is then optional and subjects are not checked. False: a
    subject on a record came from the input and must be ``source.topic`` or match
    ``source.allowed_topics`` (see :mod:`runtime.publishing`)."""

    @classmethod
    def configured_topics(cls, config: Any) -> Iterable[tuple[str, str]]:
        """(config key, topic) for each topic this source's own ``config`` sends events to (mcp-source: a
        tool's topic). Each must be ``source.topic`` or match ``source.allowed_topics``: the worker and
        ``meshconnect check`` refuse the config otherwise, naming the key. None by default."""
        return ()

    async def start(self, context: SourceContext) -> None:
        """Connect; resume from ``context.offset(...)``."""

    async def poll(self) -> Sequence[ConnectorRecord]:
        """The next records, or ``[]`` after at most about a second of nothing to read."""
        raise NotImplementedError

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        """Called after the offsets of ``records`` are durable; ack upstream here if needed."""

    async def partition_groups(self) -> Sequence[str]:
        """The groups this source's partitions fall into, for spreading work over replicas.

        One group (the default) means one active replica at a time, the others standby.
        Called before ``start``; may connect to list tables, files or queues.
        """
        return ["default"]

    def group_of(self, partition: Mapping[str, JsonValue]) -> str:
        """The partition group ``partition`` belongs to: one of :meth:`partition_groups`.

        Called for every record when the source has more than one group, so it must be cheap and
        do no IO. The default reads the partition's ``"group"`` key, or ``"default"``.
        """
        return str(partition.get("group", "default"))


class Sink(_Connector[ConfigT]):
    """Writes records to an external system. See the module docstring."""

    side: ClassVar[str] = "sink"
    routed_target: ClassVar[str | None] = None
    """What a ``route`` transform step chooses for this sink (mysql-sink: ``"table"``), read from each
    record's :attr:`~runtime.record.ConnectorRecord.target` (None: the config's own) and validated by the
    sink as its config's value is. None: the sink has no such choice, and a route step is a config error."""

    async def start(self, context: SinkContext) -> None:
        """Connect."""

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        """Write ``records`` durably; return the ones that could not be handled."""
        raise NotImplementedError
