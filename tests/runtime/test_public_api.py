"""The connector author's API is exactly what ``runtime`` exports: changing it is a deliberate act."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import runtime

AUTHOR_API = {
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
}


def test_runtime_exports_exactly_the_author_api() -> None:
    assert set(runtime.__all__) == AUTHOR_API
    assert all(getattr(runtime, name) is not None for name in runtime.__all__)


def test_connectors_define_no_metrics_of_their_own() -> None:
    # Metrics are defined once, in runtime/observability.py; a connector reaches its own through its context.
    services = Path(runtime.__file__).parent.parent / "services"
    offenders = [
        str(path.relative_to(services))
        for path in services.rglob("*.py")
        if re.search(r"^\s*(from|import) prometheus_client\b", path.read_text(), flags=re.M)
    ]
    assert offenders == [], offenders


SERVICES = Path(runtime.__file__).parent.parent / "services"
CONNECTOR_PACKAGES = sorted(".".join(path.parent.relative_to(SERVICES.parent).parts) for path in SERVICES.rglob("connector.py"))


def _connector_package(module: str) -> str | None:
    return next((package for package in CONNECTOR_PACKAGES if module == package or module.startswith(package + ".")), None)


@pytest.mark.parametrize("system", ["nats", "redis", "rabbitmq", "mqtt", "postgres", "http", "mysql", "chat"])
def test_the_connectors_of_a_system_share_code_through_its_client_module_not_each_other(system: str) -> None:
    # One folder per external system: what its source and sink have in common lives in
    # services/<system>/client.py; a connector importing its sibling's connector (or another
    # connector class to wrap) would tie their lifecycles and configs together again.
    offenders = []
    for path in (SERVICES / system).rglob("*.py"):
        module = ".".join(path.with_suffix("").relative_to(SERVICES.parent).parts)
        own = _connector_package(module)
        for imported in re.findall(r"^(?:from|import) (services[\w.]*)", path.read_text(), flags=re.M):
            other = _connector_package(imported)
            if other is not None and other != own:
                offenders.append(f"{module} imports {imported}")
    assert (SERVICES / system / "client.py").is_file()
    assert offenders == [], offenders
