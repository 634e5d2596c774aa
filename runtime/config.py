"""Configuration: typed models, loaded from YAML, overridden by environment variables.

A deployment's config file has one block per concern; only ``name``, ``connector`` and, for most
connectors, ``config:`` are needed::

    name: orders-to-mysql          # this instance: registry keys, consumer group default
    connector: mysql-sink          # the registered connector type (meshconnect list)
    mesh:    {address: "127.0.0.1:10000", group: orders, username: ..., password: {env: MESH_PASSWORD}}
    sink:    {topics: [orders], batch_size: 500, linger_ms: 50}
    registry: {kind: redis, url: "redis://127.0.0.1:6379/0"}
    admin:   {port: 8090}
    config: {...}                  # the connector's own settings, validated by its config model

Environment variables override any key: ``MESHCONNECT__SINK__BATCH_SIZE=1000`` sets
``sink.batch_size``; ``MESHCONNECT__CONFIG__DSN=...`` a connector key. A secret is a plain
string, ``{env: NAME}`` or ``{file: /run/secrets/x}``; it is held as a ``SecretStr`` and never
logged. Every error names the key, the problem and the fix (:class:`~runtime.errors.ConfigError`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

__all__ = [
    "AdminSettings",
    "ConnectorConfig",
    "LogSettings",
    "MeshSettings",
    "RegistrySettings",
    "Secret",
    "SinkSettings",
    "SourceSettings",
    "WorkerConfig",
]


def _resolve_secret(value: Any) -> Any:
    """Accept ``"literal"``, ``{"env": NAME}`` or ``{"file": PATH}``; return the secret text."""
    if isinstance(value, dict):
        if set(value) == {"env"}:
            name = str(value["env"])
            if name not in os.environ:
                raise ValueError(f"environment variable {name} is not set; export it or use {{file: ...}}")
            return os.environ[name]
        if set(value) == {"file"}:
            path = Path(str(value["file"]))
            try:
                return path.read_text().rstrip("\n")
            except OSError as exc:
                raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from exc
        raise ValueError("a secret is a string, {env: NAME} or {file: PATH}")
    return value


Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]
"""A secret config value: a string, ``{env: NAME}`` or ``{file: PATH}``; never logged."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConnectorConfig(_Strict):
    """Base of every connector's own config model: unknown keys are errors, values are frozen.

    Give every field a default where one makes sense and a ``description``: the docs table and
    the error messages are made from them.
    """


class MeshSettings(_Strict):
    address: str = Field("127.0.0.1:10000", description="EventMesh TCP address, host:port.")
    group: str | None = Field(None, description="Producer/consumer group; defaults to the instance name.")
    username: str | None = Field(None, description="Mesh user (ACL).")
    password: Secret | None = Field(None, description="Mesh password (ACL).")
    token: Secret | None = Field(None, description="Mesh ACL token.")
    idc: str = Field("DEFAULT", description="IDC reported in the handshake.")
    env: str = Field("PRD", description="Environment reported in the handshake.")
    subsystem: str = Field("5023", description="Subsystem (the Java appId) reported in the handshake.")
    tls: bool = Field(False, description="Connect with TLS.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for TCP connect + HELLO.")
    request_timeout: float = Field(10.0, gt=0, description="Seconds to wait for any answer of the mesh.")
    heartbeat_interval: float = Field(30.0, gt=0, description="Seconds between heartbeats.")
    max_in_flight: int = Field(1000, ge=1, description="Publishes awaiting an ack at most (backpressure).")


class SourceSettings(_Strict):
    topic: str | None = Field(None, description="Default topic (CloudEvent subject) for records that name none.")
    event_source: str | None = Field(
        None, description="CloudEvent 'source' for records that set none; default /meshconnect/<name>."
    )
    event_type: str | None = Field(None, description="CloudEvent 'type' for records that set none; default <connector>.record.")
    checkpoint_every: int = Field(1000, ge=1, description="Checkpoint after this many acknowledged records.")
    checkpoint_interval: float = Field(1.0, gt=0, description="...or after this many seconds, whichever first.")
    poll_queue: int = Field(1000, ge=1, description="Records polled but not yet published, at most.")


class SinkSettings(_Strict):
    topics: list[str] = Field(default_factory=list, description="Topics to subscribe (CLUSTERING, ASYNC).")
    batch_size: int = Field(500, ge=1, description="Records per put() at most.")
    linger_ms: int = Field(50, ge=0, description="Wait this long for a batch to fill.")
    max_attempts: int = Field(10, ge=1, description="Attempts of a record that keeps failing as data before it is dead-lettered.")
    dead_letter_topic: str | None = Field(None, description="Topic for dead letters; default <name>-dlq.")
    retry_initial: float = Field(0.2, gt=0, description="First retry delay, seconds (exponential, with jitter).")
    retry_max: float = Field(30.0, gt=0, description="Longest retry delay, seconds.")


class RegistrySettings(_Strict):
    kind: Literal["redis", "file"] = Field("file", description="Offset and lease store.")
    url: Secret | None = Field(None, description="redis:// or rediss:// URL (kind=redis); may hold a password.")
    prefix: str = Field("meshconnect", description="Key prefix: one namespace per deployment.")
    path: str = Field("./state", description="State directory (kind=file).")
    lease_ttl: float = Field(10.0, gt=0, description="Lease time-to-live, seconds; renewed every ttl/3.")


class AdminSettings(_Strict):
    host: str = Field("0.0.0.0", description="Admin HTTP bind address.")
    port: int = Field(8090, ge=0, le=65535, description="Admin HTTP port (/healthz /readyz /metrics /status); 0 = any free port.")


class LogSettings(_Strict):
    format: Literal["auto", "json", "console"] = Field("auto", description="auto = console on a TTY, else JSON.")
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")


class WorkerConfig(_Strict):
    name: str = Field(description="Instance name: registry keys and default group derive from it.")
    connector: str = Field(description="Registered connector type, e.g. mysql-sink.")
    mesh: MeshSettings = Field(default_factory=MeshSettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    config: dict[str, Any] = Field(
        default_factory=dict, description="The connector's own settings, validated by its config model."
    )
