"""Decoding of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1), no IO.

Each message is one ``bytea`` row of ``pg_logical_slot_peek_binary_changes``. Only what a change
event needs is decoded: Begin (commit LSN and time), Commit (end LSN), Relation (names and column
types), Insert, Update, Delete and Truncate. Other kinds (Origin, Type, Message) are returned as
``None`` and skipped. Column values arrive as text and become JSON values by their type: integers,
floats, booleans and json/jsonb are converted, everything else (numeric included, to keep its
precision) stays text. An unchanged TOASTed value is left out of its row.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

__all__ = ["Begin", "Change", "Commit", "Relation", "Truncate", "column_value", "decode"]

_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_INTEGER_TYPES = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_FLOAT_TYPES = frozenset({700, 701})  # float4, float8
_JSON_TYPES = frozenset({114, 3802})  # json, jsonb
_BOOL_TYPE = 16


@dataclass(frozen=True, slots=True)
class Begin:
    commit_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    table: str
    columns: tuple[tuple[str, int, bool], ...]
    """(name, type oid, part of the key)"""


@dataclass(frozen=True, slots=True)
class Change:
    op: str
    """insert, update, delete or truncate"""
    relation_oid: int
    new: dict[str, Any] | None = None
    old: dict[str, Any] | None = field(default=None)
    """the old key (replica identity) or, with REPLICA IDENTITY FULL, the old row"""


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    """every table the statement emptied (those reached by CASCADE included)"""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def byte(self) -> str:
        value = chr(self.data[self.at])
        self.at += 1
        return value

    def string(self) -> str:
        end = self.data.index(b"\x00", self.at)
        value = self.data[self.at : end].decode()
        self.at = end + 1
        return value


def decode(message: bytes, relations: dict[int, Relation]) -> Begin | Commit | Relation | Change | Truncate | None:
    """Decode one message; a Relation is also stored in ``relations`` for the changes that follow."""
    reader = _Reader(message)
    kind = reader.byte()
    if kind == "B":
        commit_lsn, micros, xid = reader.unpack(">QqI")
        return Begin(commit_lsn, _POSTGRES_EPOCH + timedelta(microseconds=micros), xid)
    if kind == "C":
        _flags, commit_lsn, end_lsn, _micros = reader.unpack(">BQQq")
        return Commit(commit_lsn, end_lsn)
    if kind == "R":
        (oid,) = reader.unpack(">I")
        schema, table = reader.string(), reader.string()
        _identity, count = reader.unpack(">BH")
        columns = []
        for _ in range(count):
            (flags,) = reader.unpack(">B")
            name = reader.string()
            type_oid, _typmod = reader.unpack(">Ii")
            columns.append((name, type_oid, bool(flags & 1)))
        relation = Relation(oid, schema or "public", table, tuple(columns))
        relations[oid] = relation
        return relation
    if kind in "IUD":
        (oid,) = reader.unpack(">I")
        relation = relations[oid]
        old = new = None
        marker = reader.byte()
        if marker in "KO":
            old = _tuple(reader, relation)
            marker = reader.byte() if kind == "U" else ""
        if marker == "N":
            new = _tuple(reader, relation)
        op = {"I": "insert", "U": "update", "D": "delete"}[kind]
        return Change(op, oid, new=new, old=old)
    if kind == "T":
        count, _options = reader.unpack(">IB")
        return Truncate(reader.unpack(f">{count}I"))
    return None


def _tuple(reader: _Reader, relation: Relation) -> dict[str, Any]:
    (count,) = reader.unpack(">H")
    row: dict[str, Any] = {}
    for index in range(count):
        kind = reader.byte()
        name, type_oid, _key = relation.columns[index]
        if kind == "n":
            row[name] = None
        elif kind == "t":
            (length,) = reader.unpack(">I")
            text = reader.data[reader.at : reader.at + length].decode()
            reader.at += length
            row[name] = column_value(text, type_oid)
        # "u": an unchanged TOASTed value the server did not send: left out
    return row


def column_value(text: str, type_oid: int) -> Any:
    """A column's text (as pgoutput and COPY send it) as a JSON value, by the column's type."""
    if type_oid in _INTEGER_TYPES:
        return int(text)
    if type_oid in _FLOAT_TYPES:
        return float(text)
    if type_oid == _BOOL_TYPE:
        return text == "t"
    if type_oid in _JSON_TYPES:
        return orjson.loads(text)
    return text
