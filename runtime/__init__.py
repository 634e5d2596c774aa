"""meshconnect's runtime: everything a connector author imports comes from here."""

from runtime.app import main_for
from runtime.cloudevents import (
    CLOUDEVENTS_JSON,
    PayloadFormat,
    SinkPayload,
    cloudevent_to_record,
    data_bytes,
    is_json_content_type,
    record_from_json,
    record_from_payload,
    record_to_json,
    record_to_payload,
)
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
from runtime.record import ConnectorRecord, JsonValue, partition_key

__all__ = [
    "CLOUDEVENTS_JSON",
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
    "PayloadFormat",
    "Rejection",
    "RetriableError",
    "Secret",
    "Sink",
    "SinkContext",
    "SinkPayload",
    "Source",
    "SourceContext",
    "cloudevent_to_record",
    "data_bytes",
    "is_json_content_type",
    "load_config",
    "main_for",
    "partition_key",
    "record_from_json",
    "record_from_payload",
    "record_to_json",
    "record_to_payload",
]
