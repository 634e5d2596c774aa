"""Connector discovery: every installed connector registers an entry point in ``meshconnect.connectors``.

``pyproject.toml``::

    [project.entry-points."meshconnect.connectors"]
    mysql-sink = "services.mysql.sink.connector:MysqlSink"

A connector whose optional dependencies are missing is still listed (as not installed, with the
extra to install) so ``meshconnect list`` shows the whole catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from runtime.connector import Sink, Source
from runtime.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "ConnectorInfo", "catalogue", "load_connector"]

ENTRY_POINT_GROUP = "meshconnect.connectors"

ConnectorClass = type[Source[Any]] | type[Sink[Any]]


@dataclass(frozen=True, slots=True)
class ConnectorInfo:
    """One registered connector as ``meshconnect list`` shows it."""

    name: str
    side: str
    description: str
    target: str
    """``module:Class`` of the entry point."""
    problem: str | None = None
    """Why it cannot be loaded here (a missing optional dependency), else ``None``."""


def _entry_points() -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def load_connector(name: str) -> ConnectorClass:
    """The connector class registered as ``name``; :class:`ConfigError` naming the fix if it is not usable."""
    points = _entry_points()
    point = points.get(name)
    if point is None:
        known = ", ".join(sorted(points)) or "none"
        raise ConfigError("connector", f"no connector named {name!r} is installed", f"use one of: {known} (meshconnect list)")
    try:
        loaded = point.load()
    except ImportError as exc:
        raise ConfigError(
            "connector", f"{name} cannot be loaded: {exc}", f"install its dependencies: pip install 'meshconnect[{name}]'"
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Source | Sink)):
        raise ConfigError(
            "connector", f"entry point {point.value} is not a Source or Sink class", "fix the package's entry point"
        )
    if getattr(loaded, "name", None) != name:
        raise ConfigError(
            "connector", f"{point.value} says its name is {getattr(loaded, 'name', None)!r}", f"set name = {name!r} on the class"
        )
    return loaded


def catalogue() -> list[ConnectorInfo]:
    """Every registered connector, sorted by name, loadable or not."""
    result = []
    for name, point in sorted(_entry_points().items()):
        try:
            cls = load_connector(name)
        except ConfigError as exc:
            side = "sink" if name.endswith("-sink") else "source"
            result.append(ConnectorInfo(name, side, "", point.value, problem=f"{exc.problem}; {exc.fix}"))
            continue
        result.append(ConnectorInfo(name, cls.side, cls.description, point.value))
    return result
