"""Versions of applied changes and per-table marks, kept in the target database's ``meshconnect_row_versions``.

One row per target row (``tbl``, ``pk`` = its key as JSON, ``version`` of the last change applied,
``deleted_at`` when that change was a delete: a tombstone), and per table the marks ``ddl`` (last
schema change applied), ``reset`` (the floor: changes from before it are skipped) and ``pending``
(a schema change being applied: newer row changes of the table wait for it). Row ids are JSON
arrays (or '#' and a hash), so the marks never collide with a row.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from runtime import DataError, RetriableError
from services.mysql.sink.changes import Change
from services.mysql.sql import load_table, quote

__all__ = [
    "DDL_MARK",
    "PENDING_MARK",
    "RESET_MARK",
    "VERSIONS_TABLE",
    "change_version",
    "fetch_versions",
    "newer_changes",
    "prepare_versions_table",
    "raise_mark_sql",
    "record_versions",
]

VERSIONS_TABLE = "meshconnect_row_versions"
DDL_MARK = "ddl"
RESET_MARK = "reset"
PENDING_MARK = "pending"  # a schema change being applied: newer row changes of the table wait for it
_MAX_ROW_ID = 255
_LOOKUP_CHUNK = 1000
_BINLOG_NUMBER = re.compile(r"(\d+)$")
_VERSIONS_DDL = """CREATE TABLE IF NOT EXISTS {table} (
  `tbl` VARBINARY(64) NOT NULL,
  `pk` VARBINARY(255) NOT NULL,
  `version` VARBINARY(64) NOT NULL,
  `deleted_at` DATETIME(6) NULL,
  PRIMARY KEY (`tbl`, `pk`),
  KEY `deleted_at` (`deleted_at`)
) ENGINE=InnoDB"""
# Versions tables made before tombstones were purged lack the deletion time.
_VERSIONS_DELETED_AT = "ALTER TABLE {table} ADD COLUMN `deleted_at` DATETIME(6) NULL, ADD KEY `deleted_at` (`deleted_at`)"


async def prepare_versions_table(cursor: Any, database: str) -> None:
    """Create the versions table, or add the deletion time to one made before tombstones were purged."""
    versions = await load_table(cursor, database, VERSIONS_TABLE)
    if versions is None:
        await cursor.execute(_VERSIONS_DDL.format(table=quote(database, VERSIONS_TABLE)))
    elif versions.column("deleted_at") is None:
        await cursor.execute(_VERSIONS_DELETED_AT.format(table=quote(database, VERSIONS_TABLE)))


def change_version(source: Mapping[str, Any], *, ddl: bool) -> str | None:
    """The totally ordered text of a change's source position (see :mod:`services.mysql.sink.cdc`); None for polling envelopes."""
    if source.get("mode") == "polling" and "pos" not in source:
        return None
    number = _BINLOG_NUMBER.search(str(source.get("file") or ""))
    pos = source.get("pos")
    if number is None or not isinstance(pos, int) or isinstance(pos, bool) or pos < 0:
        raise DataError("change envelope has no binlog position (source.file, source.pos): it cannot be ordered")
    if source.get("snapshot") is True:
        return f"{int(number[1]):010d}:{pos:020d}:{0 if ddl else 1}:{0:010d}"
    row = source.get("row")
    if not isinstance(row, int) or isinstance(row, bool) or row < 0:
        raise DataError("change envelope has no source.row (the change's index in its transaction): it cannot be ordered")
    return f"{int(number[1]):010d}:{pos:020d}:2:{row:010d}"


async def newer_changes(cursor: Any, database: str, changes: list[Change]) -> list[tuple[str, Change]]:
    """Per row the newest of ``changes``, if it is newer than the row's stored version and its table's floor.

    The rows' versions stay locked until the transaction ends, so a concurrent writer of the same
    rows (another replica) waits and then compares with what this one wrote.
    """
    latest: dict[tuple[str, str], Change] = {}
    for change in changes:
        slot = (change.table, _row_id(change.key))
        held = latest.get(slot)
        if held is None or str(change.version) > str(held.version):
            latest[slot] = change
    by_table: dict[str, list[str]] = {}
    for table, row_id in sorted(latest):  # one lock order for every writer
        by_table.setdefault(table, []).append(row_id)
    versions = quote(database, VERSIONS_TABLE)
    newer: list[tuple[str, Change]] = []
    for table, row_ids in by_table.items():
        stored: dict[str, str] = {}
        for start in range(0, len(row_ids), _LOOKUP_CHUNK):
            chunk = row_ids[start : start + _LOOKUP_CHUNK]
            await cursor.execute(
                f"SELECT `pk`, `version` FROM {versions} WHERE `tbl` = %s AND `pk` IN ({','.join(['%s'] * len(chunk))})"
                " FOR UPDATE",
                [table, *chunk],
            )
            stored.update(await fetch_versions(cursor))
        await cursor.execute(
            f"SELECT `pk`, `version` FROM {versions} WHERE `tbl` = %s AND `pk` IN (%s, %s) LOCK IN SHARE MODE",
            (table, RESET_MARK, PENDING_MARK),
        )
        marks = dict(await fetch_versions(cursor))
        floor = marks.get(RESET_MARK, "")
        pending = marks.get(PENDING_MARK)
        if pending is not None and any(str(latest[(table, row_id)].version) > pending for row_id in row_ids):
            raise RetriableError(f"changes to {table} wait for its schema change at {pending} to be applied")
        for row_id in row_ids:
            change = latest[(table, row_id)]
            if str(change.version) > max(stored.get(row_id, ""), floor):
                newer.append((row_id, change))
    return newer


async def record_versions(cursor: Any, database: str, applied: list[tuple[str, Change]]) -> None:
    """Store the versions of the ``applied`` (row id, change) pairs; a delete's is a tombstone, stamped now."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the session's time zone is UTC
    await cursor.executemany(
        f"INSERT INTO {quote(database, VERSIONS_TABLE)} (`tbl`, `pk`, `version`, `deleted_at`)"
        " VALUES (%s, %s, %s, %s)"
        " ON DUPLICATE KEY UPDATE `version` = VALUES(`version`), `deleted_at` = VALUES(`deleted_at`)",
        [(change.table, row_id, change.version, now if change.op == "delete" else None) for row_id, change in applied],
    )


async def fetch_versions(cursor: Any) -> list[tuple[str, str]]:
    """The (``pk``, ``version``) rows a query of the versions table returned, as text."""
    return [(bytes(pk).decode(), bytes(version).decode()) for pk, version in await cursor.fetchall()]


def raise_mark_sql(versions: str) -> str:
    """Set a table mark (``ddl``, ``reset``, ``pending``) to a version, never lowering it."""
    return (
        f"INSERT INTO {versions} (`tbl`, `pk`, `version`) VALUES (%s, %s, %s)"
        " ON DUPLICATE KEY UPDATE `version` = GREATEST(`version`, VALUES(`version`))"
    )


def _row_id(key: tuple[Any, ...]) -> str:
    """A row's key as the versions table stores it: JSON, or a hash of it when too long."""
    text = orjson.dumps(key, default=_key_default)
    return text.decode() if len(text) <= _MAX_ROW_ID else "#" + hashlib.sha256(text).hexdigest()


def _key_default(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else str(value)
