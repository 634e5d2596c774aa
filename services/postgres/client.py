"""The PostgreSQL client both sides share: one connection, bounded calls, quoted identifiers.

postgres-source and postgres-sink reach the server only through these helpers, so a refusal is a
:class:`ConfigError` at start and a :class:`RetriableError` once running, a lost server is
retriable, and a name becomes SQL only checked and quoted (:func:`quote_identifier`), on both sides alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg

from runtime import ConfigError, DataError, RetriableError, Secret

__all__ = ["PgConnection", "check_identifier", "pg_call", "quote_identifier", "relation_parts"]

T = TypeVar("T")

_NAME_BYTES = 63  # NAMEDATALEN - 1: the server cuts a longer name to this, which could name another object


def check_identifier(name: str, what: str = "identifier") -> str:
    """``name`` if PostgreSQL can hold it whole as one identifier: 1 to 63 bytes of UTF-8 and no NUL.

    Any other character is allowed: :func:`quote_identifier` quotes it. A :class:`DataError` otherwise
    (event data: dead-lettered; a config validator turns it into a refusal naming the key).
    """
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it
        size = 0
    if not 1 <= size <= _NAME_BYTES or "\x00" in name:
        raise DataError(f"{what} {name[:80]!r} is not a PostgreSQL identifier (1 to 63 bytes of UTF-8, no NUL)")
    return name


def quote_identifier(*parts: str) -> str:
    """An identifier, or one qualified by its parts (schema, name), checked and double-quoted for SQL.

    The one way a name (from the config, the catalog or event data) becomes SQL, on both sides.
    """
    return ".".join('"' + check_identifier(part).replace('"', '""') + '"' for part in parts)


def relation_parts(name: str) -> tuple[str, ...]:
    """A config's ``[schema.]name`` as its one or two parts, each checked; ValueError for the config's validator."""
    parts = tuple(name.split("."))
    if len(parts) > 2:
        raise ValueError(f"{name!r} is not [schema.]name: more than one dot")
    try:
        for part in parts:
            check_identifier(part, "name part")
    except DataError as exc:
        raise ValueError(f"{name!r} is not [schema.]name: {exc.reason}") from exc
    return parts


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
