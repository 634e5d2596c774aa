"""The Pulsar client both sides share: client options, bounded calls, pulsar-client's errors translated.

pulsar-source and pulsar-sink reach the broker only through these helpers, so a credential the
client reports refused is a :class:`ConfigError` naming ``config.token``, a topic name the broker
refuses one naming ``config.topics`` or ``config.topic``, and anything else the broker or the network
does is a :class:`RetriableError`, the same way on both sides. A token refused while connecting
reaches us only as a timeout (the client retries the connection until then): that error names the
token as one possible cause.

pulsar-client raises two exception families: the blocking API's ``pulsar.exceptions`` classes and
``pulsar.asyncio.PulsarException`` carrying a ``pulsar.Result``. Both are read here, by their result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pulsar
import pulsar.asyncio
import pulsar.exceptions

from runtime import ConfigError, RetriableError, Secret

__all__ = ["TOPIC_NAME", "client_options", "in_thread", "pulsar_blocking", "pulsar_call", "pulsar_error", "pulsar_result"]

T = TypeVar("T")

_NAME = r"[A-Za-z0-9_.=:-]*[A-Za-z0-9_=:-][A-Za-z0-9_.=:-]*"  # not dots alone: "." and ".." wedge lookups
TOPIC_NAME = rf"(persistent|non-persistent)://{_NAME}/{_NAME}/{_NAME}"
"""A fully qualified Pulsar topic: domain, tenant, namespace and local name, no other ``/``."""

_CREDENTIAL_RESULTS = frozenset(
    {pulsar.Result.AuthenticationError, pulsar.Result.AuthorizationError, pulsar.Result.ErrorGettingAuthenticationData}
)
_BLOCKING_RESULTS: dict[type[Exception], pulsar.Result] = {
    pulsar.exceptions.AuthenticationError: pulsar.Result.AuthenticationError,
    pulsar.exceptions.AuthorizationError: pulsar.Result.AuthorizationError,
    pulsar.exceptions.ErrorGettingAuthenticationData: pulsar.Result.ErrorGettingAuthenticationData,
    pulsar.exceptions.InvalidTopicName: pulsar.Result.InvalidTopicName,
    pulsar.exceptions.MessageTooBig: pulsar.Result.MessageTooBig,
    pulsar.exceptions.AlreadyClosed: pulsar.Result.AlreadyClosed,
    pulsar.exceptions.Timeout: pulsar.Result.Timeout,
}

# The C++ client logs every (re)connection at INFO; only its warnings and errors reach our logs.
_client_log = logging.getLogger("meshconnect.pulsar")
_client_log.setLevel(logging.WARNING)


def client_options(token: Secret | None, seconds: float, ca_file: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``pulsar.Client`` / ``pulsar.asyncio.Client``: timeouts, credentials, TLS, logging.

    Over ``pulsar+ssl://`` the broker's certificate is checked against ``ca_file`` (else the system's
    CAs) and must name the host connected to: pulsar-client checks no host name unless asked.
    """
    options: dict[str, Any] = {
        "operation_timeout_seconds": max(1, round(seconds)),
        "connection_timeout_ms": max(1, round(seconds * 1000)),
        "logger": _client_log,
        "tls_validate_hostname": True,
    }
    if ca_file is not None:
        if not Path(ca_file).is_file():
            raise ConfigError("config.ca_file", f"{ca_file} is not a readable file", "give the path of a PEM file of CAs")
        options["tls_trust_certs_file_path"] = ca_file
    if token is not None:
        options["authentication"] = pulsar.AuthenticationToken(token.get_secret_value())
    return options


def pulsar_result(exc: BaseException) -> pulsar.Result | None:
    """The ``pulsar.Result`` an exception of either family carries (None for anything else)."""
    if isinstance(exc, pulsar.asyncio.PulsarException):
        return exc.error()
    for kind, result in _BLOCKING_RESULTS.items():
        if isinstance(exc, kind):
            return result
    return None


def pulsar_error(what: str, exc: Exception, topic_key: str = "config.topic") -> Exception:
    """Our error for ``exc`` raised by pulsar-client during ``what``."""
    result = pulsar_result(exc)
    if result in _CREDENTIAL_RESULTS:
        return ConfigError("config.token", f"Pulsar refused the credentials during {what} ({exc})", "give a valid token")
    if result == pulsar.Result.InvalidTopicName:
        return ConfigError(
            topic_key, f"Pulsar refused the topic name during {what} ({exc})", "name topics tenant/namespace/topic"
        )
    if isinstance(exc, TimeoutError | pulsar.exceptions.Timeout) or result == pulsar.Result.Timeout:
        # pulsar-client retries a connection the broker refused for its token until the operation
        # times out, and reports only the timeout.
        return RetriableError(
            f"Pulsar gave no answer during {what} in time: the broker is down or unreachable, or it refuses config.token"
        )
    return RetriableError(f"Pulsar unavailable during {what}: {exc!r}")


async def pulsar_call(what: str, call: Awaitable[T], seconds: float, *, topic_key: str = "config.topic") -> T:
    """Await a ``pulsar.asyncio`` call under a timeout; one of the two seams where its errors become ours."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except (pulsar.asyncio.PulsarException, TimeoutError) as exc:
        raise pulsar_error(what, exc, topic_key) from exc


def in_thread(call: Callable[[], T]) -> asyncio.Future[T]:
    """Start a blocking pulsar-client call in a thread; its outcome is read even when nobody awaits it any more."""
    running = asyncio.ensure_future(asyncio.to_thread(call))
    running.add_done_callback(_retrieved)
    return running


async def pulsar_blocking(
    what: str, call: Callable[[], T] | asyncio.Future[T], seconds: float, *, topic_key: str = "config.topics"
) -> T:
    """Await a blocking pulsar-client call run in a thread at most ``seconds``; the other seam.

    ``call`` is the function, or the future :func:`in_thread` gave for it when its caller must be able to wait
    for the thread later: the wait here is shielded, so the future stays pending while the thread runs, also
    once this wait timed out or was cancelled (a client closed under a running call aborts the process).
    The client bounds its own calls by ``operation_timeout_seconds``; the wait here bounds ours too.
    """
    running = call if isinstance(call, asyncio.Future) else in_thread(call)
    try:
        async with asyncio.timeout(seconds):
            return await asyncio.shield(running)
    except (pulsar.exceptions.PulsarException, TimeoutError) as exc:
        raise pulsar_error(what, exc, topic_key) from exc


def _retrieved(running: asyncio.Future[Any]) -> None:
    """Reads the outcome of a call nobody awaits any more (its wait was cancelled), so asyncio logs no error."""
    if not running.cancelled():
        running.exception()
