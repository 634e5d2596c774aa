"""Schema changes applied in source order, once per table however many replicas get them.

A change's marks (``ddl``, ``reset`` for CREATE/DROP/TRUNCATE, and ``pending``) are set before the
statement runs, under a named lock per table: a second replica with the same change skips it, and
newer row changes of the table wait until it ran (:func:`~.versions.newer_changes`).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

import pymysql
import structlog

from runtime import CounterMetric, DataError, RetriableError
from services.mysql.client import RETRIABLE_CODES, error_code
from services.mysql.sink.cdc.versions import DDL_MARK, PENDING_MARK, RESET_MARK, VERSIONS_TABLE, fetch_versions, raise_mark_sql
from services.mysql.sql import quote

__all__ = ["Ddl", "SchemaChanges"]

# Replaying DDL must not fail on what is already there: table exists, duplicate column/key, unknown column/key to drop.
_ALREADY_APPLIED = frozenset({1050, 1051, 1060, 1061, 1091, 1146})


@dataclass(frozen=True, slots=True)
class Ddl:
    """A schema change of ``table`` at source ``version`` (None: unordered), rebuilt by :func:`~.ddl.rebuild_ddl`.

    ``resets``: CREATE, DROP, TRUNCATE; ``removes_rows``: of those, DROP, TRUNCATE and CREATE OR REPLACE.
    """

    statement: str
    table: str
    version: str | None
    resets: bool
    removes_rows: bool


class SchemaChanges:
    """Runs :class:`Ddl` steps in ``database``; ``late_resets`` counts resets that came after newer row changes."""

    def __init__(self, database: str, write_timeout: float, late_resets: CounterMetric | None = None) -> None:
        self._database = database
        self._write_timeout = write_timeout
        self.late_resets = late_resets
        self.log: Any = structlog.get_logger()

    async def apply(self, conn: Any, steps: list[Ddl]) -> None:
        async with conn.cursor() as cursor:
            await cursor.execute(f"USE {quote(self._database)}")
            for step in steps:
                if step.version is None:
                    await self._run_ddl(cursor, step)
                    continue
                # One replica at a time applies a table's schema changes: a named lock outlives the DDL's implicit commit.
                lock = "meshconnect-ddl-" + hashlib.sha1(f"{self._database}.{step.table}".encode()).hexdigest()
                await cursor.execute("SELECT GET_LOCK(%s, %s)", (lock, self._write_timeout / 2))  # within put's bound
                (held,) = await cursor.fetchone()
                if held != 1:
                    raise RetriableError(f"another replica applies a schema change to {step.table}; retried once it is done")
                try:
                    await self._apply_ordered_ddl(conn, cursor, step)
                finally:
                    with contextlib.suppress(pymysql.MySQLError, OSError, RuntimeError):  # a lost session releases it too
                        await cursor.execute("SELECT RELEASE_LOCK(%s)", (lock,))
                        await cursor.fetchall()
        await conn.commit()

    async def _apply_ordered_ddl(self, conn: Any, cursor: Any, step: Ddl) -> None:
        """Apply ``step`` unless a change as new or newer was applied; its marks are set before it runs.

        Marks first (``ddl``, ``reset`` for CREATE/DROP/TRUNCATE, and ``pending``, in one transaction), then the
        statement, then ``pending`` goes. While it is pending, row changes of the table newer than it wait (the
        batch is retried) and older ones are obsolete if it resets the table; a replica that gets the same
        change after the marks skips it. A pending mark left by a crash makes the redelivered change run again.
        """
        versions = quote(self._database, VERSIONS_TABLE)
        assert step.version is not None
        await cursor.execute(
            f"SELECT `pk`, `version` FROM {versions} WHERE `tbl` = %s AND `pk` IN (%s, %s, %s) FOR UPDATE",
            (step.table, DDL_MARK, RESET_MARK, PENDING_MARK),
        )
        before = dict(await fetch_versions(cursor))
        applied = before.get(DDL_MARK, "")
        if applied > step.version or (applied == step.version and before.get(PENDING_MARK) != step.version):
            await conn.commit()
            self.log.info("schema change not newer than the table's last one; skipped", statement=step.statement[:200])
            return
        marks = [DDL_MARK, PENDING_MARK, *([RESET_MARK] if step.resets else [])]
        await cursor.executemany(raise_mark_sql(versions), [(step.table, mark, step.version) for mark in marks])
        if step.removes_rows:
            await self._report_newer_rows(cursor, step)
        await conn.commit()
        try:
            await self._run_ddl(cursor, step)
        except (pymysql.MySQLError, DataError):
            # The server said no: the marks go back and nothing waits for the change (it may be dead-lettered).
            # Cut off or cancelled instead, the marks stay, pending: the change is retried and runs again.
            with contextlib.suppress(pymysql.MySQLError, OSError, RuntimeError):
                listed = ",".join(["%s"] * len(marks))
                await cursor.execute(f"DELETE FROM {versions} WHERE `tbl` = %s AND `pk` IN ({listed})", (step.table, *marks))
                restore = [(step.table, mark, before[mark]) for mark in marks if mark in before and mark != PENDING_MARK]
                if restore:
                    await cursor.executemany(raise_mark_sql(versions), restore)
                await conn.commit()
            raise
        await cursor.execute(
            f"DELETE FROM {versions} WHERE `tbl` = %s AND `pk` = %s AND `version` = %s", (step.table, PENDING_MARK, step.version)
        )
        await conn.commit()

    async def _report_newer_rows(self, cursor: Any, step: Ddl) -> None:
        """Say so loudly when rows changed after ``step`` at the source were applied before it: it removes them.

        That takes several replicas and a redelivery of ``step``; the rows cannot be told apart from older ones
        in the target, so the way out is a re-sync of the table.
        """
        versions = quote(self._database, VERSIONS_TABLE)
        await cursor.execute(
            f"SELECT COUNT(*) FROM {versions} WHERE `tbl` = %s AND `version` > %s AND `deleted_at` IS NULL"
            f" AND `pk` NOT IN (%s, %s, %s)",
            (step.table, step.version, DDL_MARK, RESET_MARK, PENDING_MARK),
        )
        (newer,) = await cursor.fetchone()
        if newer:
            if self.late_resets is not None:
                self.late_resets.inc()
            self.log.error(
                "schema change applied after newer row changes of its table; they go with it",
                table=step.table,
                rows=int(newer),
                statement=step.statement[:200],
                fix="re-sync the table: re-snapshot it at the source (meshconnect offsets reset) into an emptied target table",
            )

    async def _run_ddl(self, cursor: Any, step: Ddl) -> None:
        try:
            await cursor.execute(step.statement)
        except pymysql.MySQLError as exc:
            code = error_code(exc)
            if code in _ALREADY_APPLIED:
                self.log.info("schema change already applied", statement=step.statement[:200])
                return
            # The server's own verdict on the statement (not a client-side 2xxx or a transient one) stands on retry.
            if code is not None and not 2000 <= code < 3000 and code not in RETRIABLE_CODES:
                raise DataError(f"the target refused the schema change {step.statement[:200]!r}: {exc.args[-1]}") from exc
            raise
