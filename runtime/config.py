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
    transforms: [{filter: 'type != "heartbeat"'}]   # filters, routes and transforms of each event

Environment variables override any key: ``MESHCONNECT__SINK__BATCH_SIZE=1000`` sets
``sink.batch_size``; ``MESHCONNECT__CONFIG__DSN=...`` a connector key. A secret is a plain
string, ``{env: NAME}`` or ``{file: /run/secrets/x}``; it is held as a ``SecretStr`` and never
logged. Every error names the key, the problem and the fix (:class:`~runtime.errors.ConfigError`),
and the variable when the value came from the environment. Nothing in the file is expanded: a
value written ``${VAR}`` stays those characters, so the loader warns about it.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import structlog
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from runtime.errors import ConfigError
from runtime.validation import validate_model

__all__ = [
    "AdminSettings",
    "ConfigFileError",
    "ConnectorConfig",
    "LogSettings",
    "MeshSettings",
    "RegistrySettings",
    "HttpEndpoint",
    "Secret",
    "SinkSettings",
    "SpoolSettings",
    "SourceSettings",
    "WorkerConfig",
    "ENV_PREFIX",
    "apply_env_overrides",
    "connector_config",
    "load_config",
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


def _http_endpoint(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return url


HttpEndpoint = Annotated[str, AfterValidator(_http_endpoint)]
"""A config value naming an HTTP API endpoint: an http:// or https:// URL."""


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
    topic: str | None = Field(
        None,
        min_length=1,
        description="Topic (CloudEvent subject) of the events; required unless the connector names each event's topic itself.",
    )
    allowed_topics: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Other topics the input may name (a ce-subject header, a CloudEvent's subject): exact names or globs"
        " (*, ?, [abc]); an event naming any other topic is refused (HTTP 403) or dead-lettered.",
    )
    event_source: str | None = Field(
        None, description="CloudEvent 'source' for records that set none; default /meshconnect/<name>."
    )
    event_type: str | None = Field(None, description="CloudEvent 'type' for records that set none; default <connector>.record.")
    checkpoint_every: int = Field(1000, ge=1, description="Checkpoint after this many acknowledged records.")
    checkpoint_interval: float = Field(1.0, gt=0, description="...or after this many seconds, whichever first.")
    poll_queue: int = Field(1000, ge=1, description="Records polled but not yet published, at most.")


class SpoolSettings(_Strict):
    path: str = Field(
        min_length=1,
        description="Directory of the spool, one per sink instance, on durable storage (a PVC in Kubernetes).",
    )
    max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=4096,
        description="Bytes of events spooled and not yet written at most; when full the sink stops taking pushes"
        " and says not ready.",
    )
    fsync: Literal["before_ack"] = Field(
        "before_ack", description="When the spool syncs to disk: before a batch is acked to the mesh (the only choice)."
    )


class SinkSettings(_Strict):
    topics: list[str] = Field(default_factory=list, description="Topics to subscribe (CLUSTERING, ASYNC).")
    batch_size: int = Field(500, ge=1, description="Records per put() at most.")
    linger_ms: int = Field(
        50, ge=0, description="Wait this long for a batch to fill (longer only while put() still writes the batch before)."
    )
    push_window: int | None = Field(
        None,
        ge=1,
        description="Pushes in flight to the sink at most: the window it asks of the mesh (HELLO unack) and the size of"
        " its push buffer; default 2 x batch_size, so that the next batch fills while one is written.",
    )
    max_attempts: int = Field(10, ge=1, description="Attempts of a record that keeps failing as data before it is dead-lettered.")
    dead_letter_topic: str | None = Field(None, description="Topic for dead letters; default <name>-dlq.")
    retry_initial: float = Field(0.2, gt=0, description="First retry delay, seconds (exponential, with jitter).")
    retry_max: float = Field(30.0, gt=0, description="Longest retry delay, seconds.")
    spool: SpoolSettings | None = Field(
        None,
        description="A durable spool: pushed events are acked once on disk and written from there (for a real"
        " EventMesh runtime, which does not redeliver); none: acked once written.",
    )

    @property
    def effective_push_window(self) -> int:
        """``push_window``, or what ``batch_size`` asks: two batches, the one written and the one filling."""
        return self.push_window if self.push_window is not None else 2 * self.batch_size

    def flow_problem(self) -> str | None:
        """What keeps batches from filling with this ``batch_size`` and ``push_window``, or None."""
        window = self.effective_push_window
        if window < self.batch_size:
            return (
                f"sink.push_window {window} is below sink.batch_size {self.batch_size}: a batch closes at {window}"
                f" events, never full; raise push_window to {2 * self.batch_size} (or unset it)"
            )
        if window < 2 * self.batch_size:
            return (
                f"sink.push_window {window} is below twice sink.batch_size {self.batch_size}: the next batch cannot"
                f" fill while one is written; raise push_window to {2 * self.batch_size} (or unset it)"
            )
        return None


class RegistrySettings(_Strict):
    kind: Literal["redis", "file"] = Field("file", description="Offset and lease store.")
    url: Secret | None = Field(
        None,
        description=(
            "kind=redis: redis://[:password@]host:port/db, rediss:// for TLS, or through Sentinel"
            " redis+sentinel://[:password@]host1:port1,host2:port2/service/db (rediss+sentinel:// for TLS),"
            " or a Redis Cluster redis+cluster://[:password@]host1:port1,host2:port2 (rediss+cluster:// for TLS);"
            " may hold a password."
        ),
    )
    prefix: str = Field("meshconnect", description="Key prefix: one namespace per deployment.")
    path: str = Field("./state", description="State directory (kind=file).")
    lease_ttl: float = Field(10.0, gt=0, description="Lease time-to-live, seconds; renewed every ttl/3.")
    min_replicas: int = Field(
        0,
        ge=0,
        description=(
            "kind=redis: replicas that must acknowledge (WAIT) a lease acquisition or renewal and an offset"
            " commit before it counts; 0 counts a write once the primary has it."
        ),
    )
    replica_timeout: float = Field(
        1.0,
        gt=0,
        description=(
            "Seconds to wait for min_replicas acknowledgements, below lease_ttl/3 (a renewal must not wait"
            " its lease away); a write not acknowledged by then is retried."
        ),
    )

    @field_validator("replica_timeout")
    @classmethod
    def _replica_wait_within_renewal(cls, replica_timeout: float, info: ValidationInfo) -> float:
        lease_ttl, min_replicas = info.data.get("lease_ttl"), info.data.get("min_replicas")
        if min_replicas and lease_ttl is not None and replica_timeout >= lease_ttl / 3:
            raise ValueError(
                f"{replica_timeout:g} s is not below a third of registry.lease_ttl ({lease_ttl:g} s):"
                " a renewal waiting that long for replicas would let the lease lapse"
            )
        return replica_timeout


class AdminSettings(_Strict):
    host: str = Field(
        "0.0.0.0",
        description=(
            "Admin HTTP bind address: 0.0.0.0 (every interface) lets probes and Prometheus reach it in a container;"
            " 127.0.0.1 keeps it on the machine."
        ),
    )
    port: int = Field(8090, ge=0, le=65535, description="Admin HTTP port (/healthz /readyz /metrics /status); 0 = any free port.")
    stall_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a worker may hold pending work without committing any before /readyz says not ready.",
    )
    token: Secret | None = Field(
        None,
        description=(
            "Bearer token that /metrics and /status require (Authorization: Bearer <token>); /healthz and /readyz stay open."
        ),
    )


class LogSettings(_Strict):
    format: Literal["auto", "json", "console"] = Field("auto", description="auto = console on a TTY, else JSON.")
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")


class WorkerConfig(_Strict):
    """A whole worker config file (see the module docstring)."""

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
    transforms: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Steps applied to every event in order (filter, route, set, remove, map, mask): a source's after"
        " poll, a sink's before put; see the README's transforms section.",
    )
    _env_overrides: dict[str, str] = PrivateAttr(default_factory=dict)
    """Dotted key -> the ``MESHCONNECT__...`` variable that set it, so that an error can name the variable."""


ConnectorConfigT = TypeVar("ConnectorConfigT", bound=ConnectorConfig)


# --------------------------------------------------------------------------------------------------
# The loader: YAML file (our layout or the Java connectors' layout), then environment overrides,
# then validation; pydantic's errors become ConfigError here and nowhere else.
# --------------------------------------------------------------------------------------------------

ENV_PREFIX = "MESHCONNECT__"
"""Environment variables starting with this override config keys: ``MESHCONNECT__SINK__BATCH_SIZE=1000``."""

_SHELL_VARIABLE = re.compile(r"\$\{[^}]*\}")
_HOW_ENV_WORKS = (
    "config files are not expanded: write a secret as {env: NAME} or {file: PATH},"
    " or set any key from the environment with MESHCONNECT__SECTION__KEY=value (e.g. MESHCONNECT__CONFIG__HOST)"
)


class ConfigFileError(ConfigError):
    """The config file itself cannot be read (missing, a directory, unreadable): nothing in it was looked at."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        super().__init__(path, problem, fix)
        self.args = (f"config file {path}: {problem}; fix: {fix}",)


_JAVA_KEYS = frozenset(
    {"pubSubConfig", "connectorConfig", "sourceConnectorConfig", "sinkConnectorConfig", "offsetStorageConfig", "pollConfig"}
)
_JAVA_PUBSUB = {
    "meshAddress": ("mesh", "address"),
    "group": ("mesh", "group"),
    "idc": ("mesh", "idc"),
    "env": ("mesh", "env"),
    "appId": ("mesh", "subsystem"),
    "userName": ("mesh", "username"),
    "passWord": ("mesh", "password"),
}
_JAVA_POLL = {
    "source": {"capacity": ("source", "poll_queue")},
    "sink": {"maxBatchSize": ("sink", "batch_size"), "maxWaitTime": ("sink", "linger_ms")},
}


def load_config(
    path: str | os.PathLike[str],
    *,
    connector: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> WorkerConfig:
    """Read a worker config file, apply ``MESHCONNECT__...`` overrides and validate it.

    ``connector`` (e.g. from ``meshconnect run <name>``) fills in the connector type when the file
    gives none, which files in the Java layout never do. Raises :class:`ConfigError`.
    """
    data = _read_yaml(Path(path))
    if _JAVA_KEYS & data.keys():
        data = _from_java_layout(data, connector)
    overrides: dict[str, str] = {}
    data = apply_env_overrides(data, os.environ if environ is None else environ, origins=overrides)
    _warn_of_shell_variables(data)
    if connector is not None:
        given = data.setdefault("connector", connector)
        if given != connector:
            raise ConfigError(
                "connector", f"the file says {given!r} but {connector!r} was asked for", f"run {given!r} or fix the file"
            )
    try:
        worker = validate_model(WorkerConfig, data)
    except ConfigError as exc:
        raise _from_environment(exc, overrides) from None
    worker._env_overrides = overrides
    return worker


def connector_config(model: type[ConnectorConfigT], worker: WorkerConfig) -> ConnectorConfigT:
    """Validate the ``config:`` block of ``worker`` with the connector's own model."""
    try:
        return validate_model(model, worker.config, prefix="config")
    except ConfigError as exc:
        raise _from_environment(exc, worker._env_overrides) from None


def _from_environment(exc: ConfigError, overrides: Mapping[str, str]) -> ConfigError:
    """``exc``, saying which variable set the value when it came from a ``MESHCONNECT__...`` override."""
    variable = next(
        (name for key, name in overrides.items() if exc.key == key or exc.key.startswith(f"{key}.")),
        None,
    )
    if variable is None:
        return exc
    return ConfigError(
        exc.key,
        f"{exc.problem} (the value came from the environment variable {variable})",
        f"{exc.fix}; change or unset {variable}",
    )


def _warn_of_shell_variables(data: Any, key: str = "") -> None:
    """Warn about every string value holding ``${...}``: a shell habit that the loader does not honour."""
    if isinstance(data, dict):
        for name, value in data.items():
            _warn_of_shell_variables(value, f"{key}.{name}" if key else str(name))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _warn_of_shell_variables(value, f"{key}.{index}")
    elif isinstance(data, str) and _SHELL_VARIABLE.search(data):
        structlog.get_logger().warning(
            "config value looks like a shell variable, which is not expanded", key=key, fix=_HOW_ENV_WORKS
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigFileError(
            str(path), "no such file", "pass the path of an existing YAML file (--config or MESHCONNECT_CONFIG)"
        ) from exc
    except OSError as exc:
        raise ConfigFileError(str(path), f"cannot be read ({exc.strerror})", "pass the path of a readable YAML file") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}", "fix the YAML syntax at the position shown") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), f"the file holds a {type(data).__name__}, not a mapping", "write `name:`, `connector:`... keys"
        )
    return data


def apply_env_overrides(
    data: Mapping[str, Any], environ: Mapping[str, str], *, origins: dict[str, str] | None = None
) -> dict[str, Any]:
    """A copy of ``data`` with every ``MESHCONNECT__A__B=value`` set at ``a.b`` (value parsed as a YAML scalar).

    Names are matched to existing keys ignoring case (environment variables are upper case by
    habit); a key not in the file is written in lower case. ``origins``, when given, gets each
    dotted key that was set and the variable that set it.
    """
    result = copy.deepcopy(dict(data))
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        parts = [part for part in variable[len(ENV_PREFIX) :].split("__") if part]
        if not parts:
            continue
        try:
            value = yaml.safe_load(environ[variable])
        except yaml.YAMLError:
            value = environ[variable]
        node: dict[str, Any] = result
        path: list[str] = []
        for depth, part in enumerate(parts):
            key = next((existing for existing in node if str(existing).lower() == part.lower()), part.lower())
            path.append(str(key))
            if depth == len(parts) - 1:
                node[key] = value
                if origins is not None:
                    origins[".".join(path)] = variable
                break
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
    return result


def _from_java_layout(data: Mapping[str, Any], connector: str | None) -> dict[str, Any]:
    """Map a config file of the Java connectors to our layout, warning about keys that mean nothing here."""
    log = structlog.get_logger()
    result: dict[str, Any] = {key: value for key, value in data.items() if key in WorkerConfig.model_fields}
    connector = connector or result.get("connector")
    if not connector:
        raise ConfigError(
            "connector",
            "this file is in the Java connector layout, which does not name the connector type",
            "add `connector: <type>` to the file (see `meshconnect list`) or pass the type on the command line",
        )
    result["connector"] = connector
    side = "sink" if str(connector).endswith("-sink") else "source"

    def put(section: str, key: str, value: Any) -> None:
        result.setdefault(section, {}).setdefault(key, value)

    def ignore(key: str, why: str) -> None:
        log.warning("config key has no meaning here and is ignored", key=key, why=why)

    pubsub = data.get("pubSubConfig") or {}
    for key, value in pubsub.items():
        if key in _JAVA_PUBSUB:
            put(*_JAVA_PUBSUB[key], str(value) if key == "appId" else value)
        elif key == "subject":
            if side == "source":
                put("source", "topic", value)
            else:
                put("sink", "topics", [value])
        else:
            ignore(f"pubSubConfig.{key}", "not a pubSubConfig key")
    blocks = [key for key in ("connectorConfig", "sourceConnectorConfig", "sinkConnectorConfig") if key in data]
    block: dict[str, Any] = {}
    for key in blocks:
        block.update(data[key] or {})
    if "connectorName" in block:
        result.setdefault("name", block.pop("connectorName"))
    if block:
        result.setdefault("config", block)
    for key, value in (data.get("pollConfig") or {}).items():
        if key in _JAVA_POLL[side]:
            put(*_JAVA_POLL[side][key], value)
        else:
            ignore(f"pollConfig.{key}", f"a {side} does not use it")
    if "offsetStorageConfig" in data:
        ignore("offsetStorageConfig", "offsets are kept by the registry: set `registry:` (kind redis or file)")
    for key in data:
        if key not in _JAVA_KEYS and key not in WorkerConfig.model_fields:
            ignore(key, "not a key of the Java layout nor of ours")
    result.setdefault("name", pubsub.get("group") or connector)
    return result
