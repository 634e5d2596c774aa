"""The Kafka client both sides share: connection settings, bounded calls with aiokafka's errors translated.

kafka-source and kafka-sink reach the brokers only through these helpers, so a refused credential
is a :class:`ConfigError` naming the SASL keys, a message the broker refuses for its size is a
:class:`DataError`, and anything else the brokers or the network do is a :class:`RetriableError`,
the same way on both sides. The settings keep aiokafka's names (``bootstrap_servers``,
``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``, ``ssl_cafile`` ...).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiokafka.errors
from aiokafka import AIOKafkaConsumer
from aiokafka.helpers import create_ssl_context
from pydantic import Field, model_validator

from runtime import ConfigError, ConnectorConfig, DataError, MeshConnectError, RetriableError, Secret

__all__ = ["KafkaConnectionConfig", "client_options", "kafka_call", "kafka_error", "stop_consumer"]

T = TypeVar("T")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_AUTHENTICATION_ERRORS = (
    aiokafka.errors.SaslAuthenticationFailed,
    aiokafka.errors.AuthenticationFailedError,
    aiokafka.errors.UnsupportedSaslMechanismError,
    aiokafka.errors.IllegalSaslStateError,
)
_AUTHORIZATION_ERRORS = (
    aiokafka.errors.TopicAuthorizationFailedError,
    aiokafka.errors.ClusterAuthorizationFailedError,
    aiokafka.errors.TransactionalIdAuthorizationFailed,
)


class KafkaConnectionConfig(ConnectorConfig):
    """How to reach the brokers: the keys kafka-source and kafka-sink share."""

    bootstrap_servers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:9092"], min_length=1, description="Brokers to bootstrap from, host:port."
    )
    client_id: str | None = Field(None, description="Client id the brokers see; default the instance name.")
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: SaslMechanism = Field("PLAIN", description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    sasl_plain_username: str | None = Field(None, description="SASL user (the SASL_* protocols need it).")
    sasl_plain_password: Secret | None = Field(None, description="SASL password (the SASL_* protocols need it).")
    ssl_cafile: Path | None = Field(None, description="CA certificates (PEM) to verify the brokers; default the system's.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Private key (PEM) of ssl_certfile.")
    ssl_password: Secret | None = Field(None, description="Password of ssl_keyfile, if it is encrypted.")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for connecting or for any broker answer.")

    @model_validator(mode="after")
    def _credentials_fit_the_protocol(self) -> KafkaConnectionConfig:
        if self.security_protocol.startswith("SASL_") and (self.sasl_plain_username is None or self.sasl_plain_password is None):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_plain_username and sasl_plain_password")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: give both or neither")
        return self


def client_options(config: KafkaConnectionConfig, default_client_id: str) -> dict[str, Any]:
    """The keyword arguments of an aiokafka client for ``config``; files are read here (ConfigError if unreadable)."""
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id or default_client_id,
        "security_protocol": config.security_protocol,
        "request_timeout_ms": int(config.timeout * 1000),
        "retry_backoff_ms": 200,
    }
    if config.security_protocol.startswith("SASL_"):
        assert config.sasl_plain_password is not None  # the model's validator
        options |= {
            "sasl_mechanism": config.sasl_mechanism,
            "sasl_plain_username": config.sasl_plain_username,
            "sasl_plain_password": config.sasl_plain_password.get_secret_value(),
        }
    if config.security_protocol.endswith("SSL"):
        options["ssl_context"] = _ssl_context(config)
    return options


def _ssl_context(config: KafkaConnectionConfig) -> ssl.SSLContext:
    password = config.ssl_password.get_secret_value() if config.ssl_password is not None else None
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=config.ssl_cafile, certfile=config.ssl_certfile, keyfile=config.ssl_keyfile, password=password
        )
    except (OSError, ssl.SSLError) as exc:
        # The message names files and OpenSSL's reason, never the password.
        raise ConfigError(
            "config.ssl_cafile",
            f"the TLS files cannot be loaded ({type(exc).__name__}: {exc})",
            "point ssl_cafile, ssl_certfile and ssl_keyfile at readable PEM files (and ssl_password at an encrypted key's)",
        ) from exc
    return context


def kafka_error(what: str, exc: BaseException) -> MeshConnectError:
    """Ours for an error aiokafka (or the network) raised during ``what``: the one place they are translated."""
    if isinstance(exc, _AUTHENTICATION_ERRORS):
        return ConfigError(
            "config.sasl_plain_password",
            f"the Kafka brokers refused the credentials during {what} ({type(exc).__name__})",
            "give the right sasl_mechanism, sasl_plain_username and sasl_plain_password",
        )
    if isinstance(exc, _AUTHORIZATION_ERRORS):
        return ConfigError(
            "config.sasl_plain_username",
            f"the Kafka brokers denied {what} ({type(exc).__name__})",
            "grant this user the ACLs for its topics (and IdempotentWrite for a sink) or use another user",
        )
    if isinstance(exc, aiokafka.errors.MessageSizeTooLargeError):
        return DataError(f"Kafka refused the message as too large during {what}: {exc}")
    return RetriableError(f"Kafka unavailable during {what}: {type(exc).__name__}: {exc}")


async def kafka_call(what: str, call: Awaitable[T], seconds: float) -> T:
    """Await an aiokafka call under a timeout, its errors translated by :func:`kafka_error` (source and sink)."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except (aiokafka.errors.KafkaError, OSError, TimeoutError) as exc:
        raise kafka_error(what, exc) from exc


async def stop_consumer(consumer: AIOKafkaConsumer, seconds: float) -> None:
    """Stop ``consumer`` within ``seconds``, even when a broker is down.

    aiokafka (0.14) re-raises the cancellation of a fetch that was waiting to retry out of
    ``stop()`` and leaves its connections open; that cancellation is not ours, so it is absorbed
    here and the connections are closed.
    """
    task = asyncio.current_task()
    try:
        await asyncio.wait_for(consumer.stop(), seconds)
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
        await asyncio.wait_for(consumer._client.close(), seconds)
