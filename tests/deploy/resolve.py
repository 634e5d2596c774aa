"""Load a worker config file as a connector process would, and report what matters to a deployment.

``python -m tests.deploy.resolve FILE`` prints JSON: the connector type, the validated settings
(secrets masked), and the keys whose value still points at this machine (127.0.0.1, localhost),
which inside a container reach nothing. Run with exactly the environment the container gets.
"""

from __future__ import annotations

import importlib
import json
import sys
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, SecretStr

from runtime.config import connector_config, load_config
from tests.deploy.layout import LOCAL_ADDRESSES


def local_address_keys(value: Any, key: str = "") -> list[str]:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, dict):
        return [found for child, item in value.items() for found in local_address_keys(item, f"{key}.{child}".lstrip("."))]
    if isinstance(value, list | tuple):
        return [found for index, item in enumerate(value) for found in local_address_keys(item, f"{key}[{index}]")]
    if isinstance(value, str) and any(address in value for address in LOCAL_ADDRESSES):
        return [key]
    return []


def main(path: str) -> None:
    worker = load_config(path)
    (entry_point,) = [ep for ep in entry_points(group="meshconnect.connectors") if ep.name == worker.connector] or [None]
    if entry_point is None:
        sys.exit(f"{worker.connector} is not an installed connector entry point")
    module_name, class_name = entry_point.value.split(":")
    connector_class = getattr(importlib.import_module(module_name), class_name)
    settings = connector_config(connector_class.config_model, worker)
    everything = {**dict(worker), "config": dict(settings)}
    report = {
        "connector": worker.connector,
        "side": connector_class.side,
        "worker": worker.model_dump(mode="json", exclude={"config"}),
        "config": settings.model_dump(mode="json"),
        "local_address_keys": local_address_keys({key: _plain(value) for key, value in everything.items()}),
    }
    print(json.dumps(report))  # the last line of stdout: anything logged comes before it


def _plain(value: Any) -> Any:
    """Pydantic models as dicts, recursively, keeping SecretStr objects for local_address_keys to open."""
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


if __name__ == "__main__":
    main(sys.argv[1])
