"""Column types: for tables the sink creates or widens (from a JSON Schema, else from observed JSON values),
and the kind of JSON value each existing column takes (:mod:`runtime.columns`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from runtime import ColumnKind, ColumnRule, DataError
from services.mysql.sql import Column

__all__ = ["SchemaCatalog", "column_rule", "sql_type_from_json_schema", "sql_type_from_value"]

_INTEGER_BYTES = {"tinyint": 1, "smallint": 2, "mediumint": 3, "int": 4, "integer": 4, "bigint": 8}
_DOUBLES = frozenset({"double", "real", "double precision"})
# JSON columns are LONGTEXT with a json_valid() check in MariaDB: text and JSON take values alike.
_TEXTS = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "json"})
_WIDTH = re.compile(r"\((\d+)\)")


def column_rule(column: Column, field: str) -> ColumnRule:
    """The JSON values ``column`` takes (see :mod:`runtime.columns`); BOOLEAN (TINYINT(1)) and BIT(1) take booleans."""
    data_type = column.data_type
    if data_type in _INTEGER_BYTES:
        signed = "unsigned" not in column.column_type
        kind = ColumnKind.FLAG if column.column_type.startswith("tinyint(1)") else ColumnKind.INTEGER
        return ColumnRule.integer(field, column.name, column.column_type, 8 * _INTEGER_BYTES[data_type], signed=signed, kind=kind)
    if data_type == "bit":
        width = _WIDTH.search(column.column_type)
        bits = int(width[1]) if width else 1
        kind = ColumnKind.FLAG if bits == 1 else ColumnKind.INTEGER
        return ColumnRule.integer(field, column.name, column.column_type, bits, signed=False, kind=kind)
    if data_type == "year":
        return ColumnRule(field, column.name, column.column_type, ColumnKind.INTEGER, 0, 2155)
    if data_type in ("decimal", "numeric"):
        return ColumnRule(field, column.name, column.column_type, ColumnKind.DECIMAL)
    if data_type == "float":  # single precision: FLOAT(p) with p above 24 is a DOUBLE
        return ColumnRule.real(field, column.name, column.column_type)
    if data_type in _DOUBLES:
        return ColumnRule(field, column.name, column.column_type, ColumnKind.FLOAT)
    if data_type in _TEXTS:
        return ColumnRule(field, column.name, column.column_type, ColumnKind.TEXT)
    # Dates and times, ENUM and SET (a number would pick a member by position), binary, spatial: strings.
    return ColumnRule(field, column.name, column.column_type, ColumnKind.STRING)


def sql_type_from_value(value: Any, *, key: bool) -> str:
    """The column type for an observed JSON value (``None`` gives a nullable text column)."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE"
    if isinstance(value, dict | list):
        return "JSON"
    return "VARCHAR(255)" if key else "TEXT"


def sql_type_from_json_schema(node: Mapping[str, Any], *, key: bool) -> str | None:
    """The column type a JSON Schema property asks for, or ``None`` when it says nothing usable."""
    declared = node.get("type")
    types = [t for t in declared if t != "null"] if isinstance(declared, list) else [declared]
    if len(types) != 1:
        return None
    kind = types[0]
    if kind == "integer":
        return "BIGINT"
    if kind == "number":
        return "DOUBLE"
    if kind == "boolean":
        return "BOOLEAN"
    if kind in ("object", "array"):
        return "JSON"
    if kind == "string":
        fmt = node.get("format")
        if fmt == "date-time":
            return "DATETIME(6)"
        if fmt == "date":
            return "DATE"
        max_length = node.get("maxLength")
        if isinstance(max_length, int) and 0 < max_length <= 1024:
            return f"VARCHAR({max_length})"
        return "VARCHAR(255)" if key else "TEXT"
    return None


class SchemaCatalog:
    """JSON Schemas the sink may read: given inline in config, or ``file://`` paths. Never the network."""

    def __init__(self, inline: Mapping[str, Mapping[str, Any]]) -> None:
        self._schemas: dict[str, Mapping[str, Any] | None] = dict(inline)

    def get(self, uri: str | None) -> Mapping[str, Any] | None:
        if not uri:
            return None
        if uri not in self._schemas:
            self._schemas[uri] = self._read_file(uri) if uri.startswith("file://") else None
        return self._schemas[uri]

    @staticmethod
    def _read_file(uri: str) -> Mapping[str, Any]:
        try:
            schema = orjson.loads(Path(uri.removeprefix("file://")).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise DataError(f"dataschema {uri} cannot be read as a JSON Schema: {exc}") from exc
        if not isinstance(schema, dict):
            raise DataError(f"dataschema {uri} is not a JSON object")
        return schema

    @staticmethod
    def property_at(schema: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any] | None:
        """The schema node of a nested field path, following ``properties``."""
        node: Any = schema
        for part in path:
            properties = node.get("properties") if isinstance(node, dict) else None
            if not isinstance(properties, dict) or part not in properties:
                return None
            node = properties[part]
        return node if isinstance(node, dict) else None
