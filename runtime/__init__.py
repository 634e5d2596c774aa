"""meshconnect's runtime: everything a connector author imports comes from here."""

from runtime.app import main_for
from runtime.columns import ColumnKind, ColumnRule
from runtime.config import ConnectorConfig, HttpEndpoint, Secret, load_config
from runtime.connector import (
    MAX_EVENT_BODY,
    CounterMetric,
    GaugeMetric,
    Rejection,
    Sink,
    SinkContext,
    Source,
    SourceContext,
)
from runtime.errors import (
    ConfigError,
    DataError,
    FencedError,
    MeshConnectError,
    RetriableError,
)
from runtime.record import ConnectorRecord, JsonValue, cloudevent_to_record, is_json_content_type, partition_key

__all__ = [
    "MAX_EVENT_BODY",
    "ColumnKind",
    "ColumnRule",
    "ConfigError",
    "ConnectorConfig",
    "ConnectorRecord",
    "CounterMetric",
    "DataError",
    "FencedError",
    "GaugeMetric",
    "HttpEndpoint",
    "JsonValue",
    "MeshConnectError",
    "Rejection",
    "RetriableError",
    "Secret",
    "Sink",
    "SinkContext",
    "Source",
    "SourceContext",
    "cloudevent_to_record",
    "is_json_content_type",
    "load_config",
    "main_for",
    "partition_key",
]
