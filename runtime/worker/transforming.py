"""The ``transforms:`` chain of a connector, compiled for its side: what a route chooses, what the view fills in.

A source's steps see each record as the event the worker will publish (:class:`~runtime.transforms.EventView`
with the config's defaults), and its ``route`` picks a topic the config allows (``source.topic`` or
``source.allowed_topics``, :class:`~runtime.publishing.PublishRules`). A sink's steps see the event as
it arrived, and its ``route`` picks the sink's ``routed_target``.
"""

from __future__ import annotations

from typing import Any

from runtime.config import WorkerConfig
from runtime.connector import Sink, Source
from runtime.observability import ConnectorMetrics
from runtime.publishing import PublishRules
from runtime.transforms import EventView, Routing, TransformChain, compile_transforms

__all__ = ["transforms_for"]


def transforms_for(
    config: WorkerConfig, connector: type[Source[Any]] | type[Sink[Any]], metrics: ConnectorMetrics | None = None
) -> TransformChain | None:
    """The compiled ``transforms:`` of ``config`` for ``connector`` (None without steps); ConfigError naming the step."""
    counters = metrics.transform_step if metrics is not None else None
    if issubclass(connector, Sink):
        routing = Routing(side="sink", target=connector.routed_target, connector=connector.name)
        return compile_transforms(config.transforms, view=EventView(), routing=routing, counters=counters)
    rules = PublishRules.from_config(config)
    allowed = ", ".join(repr(topic) for topic in (rules.topic, *rules.allowed_topics) if topic) or "none configured"
    view = EventView(connector=rules.connector, source=rules.event_source, type=rules.event_type, subject=rules.topic)
    routing = Routing(side="source", permits=rules.permits, allowed=f"source.topic and source.allowed_topics: {allowed}")
    return compile_transforms(config.transforms, view=view, routing=routing, counters=counters)
