"""The PostgreSQL client both sides share: one connection, bounded calls, quoted identifiers.

postgres-source and postgres-sink reach the server only through these helpers, so a refusal is a
:class:`ConfigError` at start and a :class:`RetriableError` once running, a lost server is
retriable, and a name from the config becomes SQL only quoted, on both sides alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg

from runtime import ConfigError, RetriableError, Secret

__all__ = ["PgConnection", "pg_call", "quote_column", "quote_identifier", "quote_relation"]

T = TypeVar("T")


def quote_identifier(name: str) -> str:
    """A ``[schema.]name`` from the config as a quoted SQL identifier; checked, never interpolated raw.

    The dot separates the schema: a name the catalog gives (a column, a relation's parts) may hold dots
    itself and goes through :func:`quote_column` or :func:`quote_relation` instead.
    """
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(part and len(part) <= 63 and "\x00" not in part for part in parts):
        raise ConfigError("config", f"{name!r} is not a valid [schema.]name identifier", "use up to 63 characters per part")
    return ".".join(_quoted(part) for part in parts)


def quote_column(name: str) -> str:
    """One identifier (a column, as the catalog names it: dots and quotes are part of it) quoted for SQL."""
    return _quoted(name)


def quote_relation(schema: str, name: str) -> str:
    """A relation the catalog names by its schema and name (either may hold dots) quoted for SQL."""
    return f"{_quoted(schema)}.{_quoted(name)}"


def _quoted(part: str) -> str:
    return '"' + part.replace('"', '""') + '"'


_REFUSALS = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, or a role that may not log in
    asyncpg.InsufficientPrivilegeError,
    asyncpg.InvalidCatalogNameError,  # no such database
)


async def pg_call(what: str, call: Awaitable[T], seconds: float, *, running: bool = False) -> T:
    """Await an asyncpg call under a timeout; the one seam where its errors become ours (source and sink).

    A refused login or privilege, or an unknown database, is a :class:`ConfigError` at start; once
    ``running`` (after a start that passed) it is a revoked grant, a changed password or a dropped
    database for an operator to mend: :class:`RetriableError`, waited out with backoff.
    """
    try:
        async with asyncio.timeout(seconds):  # no task per call, unlike wait_for: this runs per ack
            return await call
    except _REFUSALS as exc:
        if running:  # the server's text names the user or the object, never the password
            raise RetriableError(
                f"PostgreSQL refused {what} ({exc.__class__.__name__}: {exc}); retrying until the grant, login or"
                " database is restored (config.dsn)"
            ) from exc
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            raise ConfigError("config.dsn", f"{what}: {exc}", "name an existing database in the DSN") from exc
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            raise ConfigError(
                "config.dsn", f"{what}: {exc}", "grant the privilege (replication needs REPLICATION or superuser)"
            ) from exc
        raise ConfigError("config.dsn", f"PostgreSQL refused the credentials ({exc})", "fix user or password in the DSN") from exc
    except (
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,  # a connection left mid-operation by a timeout
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.CrashShutdownError,
        asyncpg.exceptions.ObjectInUseError,  # the slot is busy with another reader for a moment
        ConnectionError,
        OSError,
        TimeoutError,
    ) as exc:
        raise RetriableError(f"PostgreSQL unavailable during {what}: {exc!r}") from exc


class PgConnection:
    """One asyncpg connection, opened on first use and dropped after a failure (asyncpg cannot reuse it)."""

    def __init__(self, dsn: Secret, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._connection: asyncpg.Connection | None = None

    async def get(self, *, running: bool = False) -> asyncpg.Connection:
        """The connection, opened if needed; ``running``: a refused login is retriable (see :func:`pg_call`)."""
        if self._connection is None or self._connection.is_closed():
            self._connection = await pg_call(
                "connect", asyncpg.connect(self._dsn.get_secret_value()), self._timeout, running=running
            )
        return self._connection

    def drop(self) -> None:
        """Forget a connection that failed mid-operation; the next :meth:`get` reconnects."""
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close(timeout=self._timeout)
