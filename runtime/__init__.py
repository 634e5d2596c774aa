"""meshconnect's runtime: everything a connector author imports comes from here."""

from runtime.app import main_for
from runtime.config import ConnectorConfig, Secret, load_config
from runtime.connector import CounterMetric, GaugeMetric, Rejection, Sink, SinkContext, Source, SourceContext
from runtime.errors import (
    ConfigError,
    DataError,
    FencedError,
    MeshConnectError,
    RetriableError,
)
from runtime.record import ConnectorRecord

__all__ = [
    "ConfigError",
    "ConnectorConfig",
    "ConnectorRecord",
    "CounterMetric",
    "DataError",
    "FencedError",
    "GaugeMetric",
    "MeshConnectError",
    "Rejection",
    "RetriableError",
    "Secret",
    "Sink",
    "SinkContext",
    "Source",
    "SourceContext",
    "load_config",
    "main_for",
]
