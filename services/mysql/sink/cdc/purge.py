"""Tombstones (versions of deleted rows) older than ``tombstone_retention`` are purged in the background.

The purge raises the table's floor to the newest version it removed, so what a tombstone kept out,
the floor still keeps out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog

from runtime import CounterMetric, MeshConnectError
from services.mysql.client import translate_mysql_errors
from services.mysql.sink.cdc.versions import RESET_MARK, VERSIONS_TABLE, fetch_versions, raise_mark_sql
from services.mysql.sql import quote

__all__ = ["TombstonePurger"]

_PURGE_CHUNK = 1000


class TombstonePurger:
    """Purges the tombstones of ``database``, once (:meth:`purge`) or every while (:meth:`run_forever`)."""

    def __init__(
        self,
        database: str,
        retention: float,
        write_timeout: float,
        connection: Callable[[], AbstractAsyncContextManager[Any]],
    ) -> None:
        self._database = database
        self._retention = retention
        self._write_timeout = write_timeout
        self._connection = connection
        self.log: Any = structlog.get_logger()

    async def run_forever(self, purged_total: CounterMetric) -> None:
        """Purge tombstones older than ``tombstone_retention`` now and then, for as long as the sink runs; count them.

        Housekeeping: a failed round (database down, a lock conflict with a batch) is logged and tried again
        at the next one; the batches' own retries show the outage.
        """
        retention = self._retention
        interval = min(max(retention / 4, 1.0), 3600.0)
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # replicas of one group do not purge in step
            try:
                with translate_mysql_errors(f"purging tombstones in {self._database}", running=True):
                    async with asyncio.timeout(self._write_timeout):
                        purged = await self.purge(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=retention))
            except MeshConnectError as exc:  # any verdict (down, refused, denied): the task lives on, the next round retries
                self.log.warning("tombstone purge failed; tried again later", error=str(exc), retry_in_s=round(interval, 1))
                continue
            if purged:
                purged_total.inc(purged)

    async def purge(self, cutoff: dt.datetime) -> int:
        """Remove the versions of rows deleted before ``cutoff`` (tombstones); returns how many went.

        A table's floor rises to the newest version purged, in the same transaction, so a change older
        than a purged delete is still skipped: what a tombstone did for one row, the floor does for all
        rows of the table, for changes older than it.
        """
        versions = quote(self._database, VERSIONS_TABLE)
        before = cutoff.astimezone(dt.UTC).replace(tzinfo=None)
        purged = 0
        async with self._connection() as conn, conn.cursor() as cursor:
            await cursor.execute(f"SELECT DISTINCT `tbl` FROM {versions} WHERE `deleted_at` < %s", (before,))
            tables = sorted(bytes(row[0]).decode() for row in await cursor.fetchall())
            await conn.commit()
            for table in tables:
                while True:
                    # The rows, then the floor mark: the order a batch locks them in, so the two wait rather than deadlock.
                    await cursor.execute(
                        f"SELECT `pk`, `version` FROM {versions} WHERE `tbl` = %s AND `deleted_at` < %s"
                        f" ORDER BY `pk` LIMIT {_PURGE_CHUNK} FOR UPDATE",
                        (table, before),
                    )
                    rows = await fetch_versions(cursor)
                    if not rows:
                        await conn.commit()
                        break
                    await cursor.execute(
                        f"DELETE FROM {versions} WHERE `tbl` = %s AND `pk` IN ({','.join(['%s'] * len(rows))})",
                        [table, *(pk for pk, _ in rows)],
                    )
                    floor = max(version for _, version in rows)
                    await cursor.execute(raise_mark_sql(versions), (table, RESET_MARK, floor))
                    await conn.commit()
                    purged += len(rows)
                    self.log.info("tombstones purged", table=table, tombstones=len(rows), floor=floor)
                    if len(rows) < _PURGE_CHUNK:
                        break
        return purged
