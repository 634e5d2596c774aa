"""The MySQL/MariaDB client seam: connections (aiomysql over PyMySQL) and the one place their failures become ours.

Error codes are the server's (``ER_*``) and the client's (``CR_*``); the split decides what the
worker does: a broken connection or a lock conflict is retried, bad data is isolated and rejected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiomysql
import pymysql

from runtime import ConfigError, DataError, RetriableError, Secret

__all__ = [
    "RETRIABLE_CODES",
    "Pooled",
    "connect",
    "create_pool",
    "error_code",
    "is_data_error",
    "translate_mysql_errors",
]

# Client-side connection errors, server going away, too many connections, shutdown, killed query.
RETRIABLE_CODES = frozenset({1040, 1053, 1205, 1213, 1927, 2002, 2003, 2005, 2006, 2013, 2014, 2055, 4031})
# Access denied to the database, the login, a table or column, an operation; unknown database.
REFUSED_CODES = frozenset({1044, 1045, 1049, 1142, 1143, 1227})
# The row's values do not fit the table: out of range, bad date, bad string, too long, NULL in NOT NULL,
# unknown column, duplicate on a unique secondary key, foreign key, truncated, no default, bad JSON/CHECK.
DATA_CODES = frozenset({1048, 1054, 1062, 1136, 1216, 1265, 1264, 1292, 1364, 1366, 1406, 1411, 1416, 1451, 1452, 3140, 4025})


def error_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.MySQLError) and error_code(exc) in DATA_CODES


@contextmanager
def translate_mysql_errors(what: str, *, running: bool = False) -> Iterator[None]:
    """The one seam where aiomysql/pymysql failures become ours.

    Connection trouble, timeouts, deadlocks and lock waits -> :class:`RetriableError`; a row that
    does not fit -> :class:`DataError` (its ``__cause__`` keeps the server error). Access denied
    (a login, a privilege) or an unknown database -> :class:`ConfigError` at start; once ``running``
    (after a start that passed those checks) the same refusal is a revoked grant, a changed password
    or a dropped database for an operator to mend: :class:`RetriableError`, waited out with backoff.
    """
    try:
        yield
    except (RetriableError, DataError, ConfigError):
        raise
    except TimeoutError as exc:
        raise RetriableError(f"{what}: MySQL did not answer in time") from exc
    except pymysql.MySQLError as exc:
        code = error_code(exc)
        message = exc.args[1] if len(exc.args) > 1 else str(exc)  # the server's text: user and host, never a password
        if code in DATA_CODES:
            raise DataError(f"{what}: MySQL error {code}: {message}") from exc
        if code in REFUSED_CODES and running:
            raise RetriableError(
                f"{what}: MySQL refused access ({code}: {message}); retrying until the grant, password or database"
                " is restored (config.user, config.password, config.database)"
            ) from exc
        if code in REFUSED_CODES:
            raise ConfigError(
                "config.user/config.database", f"MySQL refused {what}: {code} {message}", "grant the privilege or fix the name"
            ) from exc
        if code in RETRIABLE_CODES or isinstance(exc, pymysql.OperationalError | pymysql.InterfaceError):
            raise RetriableError(f"{what}: MySQL unavailable ({code}: {message})") from exc
        raise DataError(f"{what}: MySQL error {code}: {message}") from exc
    except (ConnectionError, OSError, RuntimeError) as exc:
        # aiomysql raises RuntimeError/OSError when a connection dies under it.
        raise RetriableError(f"{what}: connection to MySQL lost ({exc})") from exc


async def connect(
    *, host: str, port: int, user: str, password: Secret | None, connect_timeout: float, running: bool = False
) -> Any:
    """One autocommit connection (the source's), within twice ``connect_timeout``; failures translated
    (``running``: after a good start, as :func:`translate_mysql_errors` says)."""
    with translate_mysql_errors(f"connecting to {host}:{port}", running=running):
        return await asyncio.wait_for(
            aiomysql.connect(
                host=host,
                port=port,
                user=user,
                password=password.get_secret_value() if password else "",
                charset="utf8mb4",
                autocommit=True,
                connect_timeout=connect_timeout,
            ),
            connect_timeout * 2,
        )


async def create_pool(
    *, host: str, port: int, user: str, password: Secret | None, connect_timeout: float, size: int, init_command: str
) -> Any:
    """A pool of ``size`` connections without autocommit (the sink's transactions), within twice ``connect_timeout``."""
    with translate_mysql_errors(f"connecting to {host}:{port}"):
        return await asyncio.wait_for(
            aiomysql.create_pool(
                host=host,
                port=port,
                user=user,
                password=password.get_secret_value() if password else "",
                minsize=1,
                maxsize=size,
                autocommit=False,
                charset="utf8mb4",
                connect_timeout=connect_timeout,
                init_command=init_command,
            ),
            connect_timeout * 2,
        )


class Pooled:
    """A pooled connection under a timeout; a connection that failed is closed so the pool drops it."""

    def __init__(self, pool: Any, timeout: float, connector: str) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connector = connector
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        if self._pool is None:
            raise ConfigError(self._connector, "put() before start()", "start the sink first")
        self._conn = await asyncio.wait_for(self._pool.acquire(), self._timeout)
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, DataError | ConfigError):
            self._conn.close()
        self._pool.release(self._conn)
