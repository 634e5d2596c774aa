"""What a running connector tells its operators: logs, Prometheus metrics and the admin HTTP endpoint.

* Logs are structlog key/value events: JSON lines when stderr is not a terminal, a readable console
  format on one. :func:`mask_secrets` runs on every event, so a ``SecretStr``, a value under a key
  that smells of a secret (password, token, secret...) and the password inside a URL never reach
  a log line, whoever logged them.
* Metrics are defined once, here, with the labels ``connector`` (the type, e.g. ``mysql-sink``) and
  ``name`` (the instance); :class:`ConnectorMetrics` binds those labels for one worker. The few a
  connector keeps itself (with the same two labels and its own) are defined here too, and reached by
  their names through the connector's context (``context.counter(...)``, ``context.gauge(...)``).
* :class:`AdminServer` serves ``/healthz`` (the process lives), ``/readyz`` (mesh session up, lease
  held or standing by, dependency healthy, input not held back, no stall), ``/metrics`` and ``/status`` (JSON) from a
  :class:`StatusBoard` that the worker keeps current. With ``admin.token`` set, ``/metrics`` and
  ``/status`` answer 401 unless the request carries ``Authorization: Bearer <token>``; the probes
  stay open. A stall is work pending with nothing
  committed for ``admin.stall_timeout`` seconds: a pipeline wedged behind one record, whatever
  holds it, must not look ready.
"""

from __future__ import annotations

import hmac
import logging
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TextIO, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import SecretStr

from runtime.config import AdminSettings, LogSettings
from runtime.errors import ConfigError

__all__ = [
    "BUILD_INFO",
    "AdminServer",
    "ConnectorMetrics",
    "StatusBoard",
    "configure_logging",
    "connector_counter",
    "connector_gauge",
    "mask_secrets",
    "package_version",
    "seconds_behind",
]

MASK = "**********"
_SECRET_KEY = re.compile(r"pass(word|wd)?|token|secret|credential|api[_-]?key|authorization|private[_-]?key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")


def _masked(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if _SECRET_KEY.search(key) and value is not None and not isinstance(value, bool | int | float):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", value)
    if isinstance(value, Mapping):
        return {k: _masked(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(key, v) for v in value]
    return value


def mask_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace secrets anywhere in the event by a mask."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _masked(key, value)
    return event_dict


def configure_logging(settings: LogSettings, *, stream: TextIO | None = None) -> None:
    """Set up structlog for this process (call once, before the first log line)."""
    out = stream if stream is not None else sys.stderr
    as_json = settings.format == "json" or (settings.format == "auto" and not out.isatty())
    # A plain traceback: the rich one structlog picks when rich is installed shows each frame's local variables,
    # secrets among them (a password, a DSN, a token being compared).
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_secrets,
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[settings.level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


_LABELS = ("connector", "name")
_Metric = TypeVar("_Metric", Counter, Gauge)
RECORDS_IN = Counter("meshconnect_records_in_total", "Records read: polled by a source, pushed to a sink.", _LABELS)
RECORDS_OUT = Counter("meshconnect_records_out_total", "Records done: acked by the mesh (source), written (sink).", _LABELS)
BYTES_OUT = Counter(
    "meshconnect_bytes_out_total", "Bytes of event bodies (their wire form) published and acknowledged by the mesh.", _LABELS
)
ERRORS = Counter("meshconnect_errors_total", "Errors by kind (retriable, data, fenced, protocol, internal).", (*_LABELS, "kind"))
RETRIES = Counter("meshconnect_retries_total", "Retries of a failed batch or publish.", _LABELS)
DEAD_LETTERS = Counter("meshconnect_dead_letters_total", "Records sent to the dead-letter topic.", _LABELS)
DEAD_LETTERS_DROPPED = Counter(
    "meshconnect_dead_letters_dropped_total",
    "Dead letters the mesh refused even with their data cut away: logged with their attributes and skipped.",
    _LABELS,
)
REFUSED = Counter(
    "meshconnect_refused_total",
    "Input a source refused before it became a record (http-source: requests answered 4xx or 503), by reason.",
    (*_LABELS, "reason"),
)
BATCH_LATENCY = Histogram(
    "meshconnect_batch_latency_seconds",
    "Source: from the poll that returned a batch until the mesh acked all its records (or their dead letters). "
    "Sink: from a batch's first record until it was written.",
    _LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENT_AGE_AT_WRITE = Histogram(
    "meshconnect_event_age_at_write_seconds",
    "Sink: age of a batch's first event when the batch was written: now minus the event's time (when its source "
    "system stamped it or its source read it).",
    _LABELS,
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)
IN_FLIGHT = Gauge("meshconnect_in_flight", "Records taken but not yet done.", _LABELS)
OFFSET_LAG = Gauge("meshconnect_offset_lag", "Records acknowledged by the mesh but not yet checkpointed.", _LABELS)
LEASE_HELD = Gauge("meshconnect_lease_held", "1 while this replica holds the lease of the group.", (*_LABELS, "group"))
TAKEOVERS = Counter("meshconnect_takeovers_total", "Leases this replica took over.", _LABELS)
READY = Gauge("meshconnect_ready", "1 when /readyz says ready.", _LABELS)
SPOOL_BYTES = Gauge(
    "meshconnect_spool_bytes", "Bytes of events in a sink's spool (sink.spool): acked to the mesh, not yet written.", _LABELS
)
SPOOL_REPLAYED = Counter(
    "meshconnect_spool_replayed_total",
    "Events a sink found in its spool at start (acked by an earlier run, not known written) and wrote again.",
    _LABELS,
)
TRANSFORM_EVENTS = Counter(
    "meshconnect_transform_events_total", "Events that reached a transform step (transforms:).", (*_LABELS, "step")
)
TRANSFORM_DROPPED = Counter(
    "meshconnect_transform_dropped_total",
    "Events a transform step dropped (a filter was false): committed (source) or acknowledged (sink), never dead-lettered.",
    (*_LABELS, "step"),
)
TRANSFORM_FAILED = Counter(
    "meshconnect_transform_failed_total",
    "Events a transform step failed on (an expression error on that event): dead-lettered with the step and the reason.",
    (*_LABELS, "step"),
)
LAST_CHECKPOINT = Gauge("meshconnect_last_checkpoint_timestamp_seconds", "Unix time of the last offset checkpoint.", _LABELS)

# Kept by the connectors that can know them, with the labels above and labels of their own.
CDC_LATE_RESETS = Counter(
    "meshconnect_cdc_late_resets_total",
    "TRUNCATE/DROP applied after newer row changes of its table: those rows went with it (re-sync the table).",
    _LABELS,
)
CDC_DDL_SKIPPED = Counter(
    "meshconnect_cdc_ddl_skipped_total", "Schema-change events acknowledged without running them (apply_ddl: false).", _LABELS
)
TOMBSTONES_PURGED = Counter(
    "meshconnect_tombstones_purged_total", "Versions of deleted rows (tombstones) purged after tombstone_retention.", _LABELS
)
SNAPSHOT_ROWS_DONE = Gauge("meshconnect_snapshot_rows_done", "Rows of a table read by the running snapshot.", (*_LABELS, "table"))
SNAPSHOT_ROWS_TOTAL = Gauge(
    "meshconnect_snapshot_rows_total", "Estimated rows of a table the snapshot reads.", (*_LABELS, "table")
)
SOURCE_LAG = Gauge(
    "meshconnect_source_lag_seconds",
    "How far a source reads behind its system: now minus the system's time (commit, append) of the newest record "
    "read, set at each read; 0 once it found nothing newer. Only sources whose system stamps its records.",
    _LABELS,
)
SOURCE_BYTES_BEHIND = Gauge(
    "meshconnect_source_bytes_behind",
    "file-source: bytes of the tailed files after the position read, a line still being written included.",
    _LABELS,
)
_CONNECTOR_COUNTERS = {
    "meshconnect_cdc_late_resets_total": CDC_LATE_RESETS,
    "meshconnect_cdc_ddl_skipped_total": CDC_DDL_SKIPPED,
    "meshconnect_tombstones_purged_total": TOMBSTONES_PURGED,
}
_CONNECTOR_GAUGES = {
    "meshconnect_snapshot_rows_done": SNAPSHOT_ROWS_DONE,
    "meshconnect_snapshot_rows_total": SNAPSHOT_ROWS_TOTAL,
    "meshconnect_source_lag_seconds": SOURCE_LAG,
    "meshconnect_source_bytes_behind": SOURCE_BYTES_BEHIND,
}


def connector_counter(metric: str, connector: str, name: str, labels: Mapping[str, str]) -> Counter:
    """The connector counter ``metric`` of the instance ``name`` of ``connector``, with its own ``labels`` bound."""
    return _connector_metric(_CONNECTOR_COUNTERS, "counter", metric).labels(connector=connector, name=name, **labels)


def connector_gauge(metric: str, connector: str, name: str, labels: Mapping[str, str]) -> Gauge:
    """The connector gauge ``metric`` of the instance ``name`` of ``connector``, with its own ``labels`` bound."""
    return _connector_metric(_CONNECTOR_GAUGES, "gauge", metric).labels(connector=connector, name=name, **labels)


def seconds_behind(moment: datetime) -> float:
    """Seconds from ``moment`` (aware) to now, never below 0 (clocks of two hosts disagree a little)."""
    return max(0.0, time.time() - moment.timestamp())


def _connector_metric(defined: Mapping[str, _Metric], kind: str, metric: str) -> _Metric:
    found = defined.get(metric)
    if found is None:
        raise ConfigError(
            f"metric {metric}",
            f"no connector {kind} of that name (defined: {', '.join(sorted(defined))})",
            "define it in runtime/observability.py beside the others",
        )
    return found


def package_version() -> str:
    """meshconnect's version from the installed package's metadata (``meshconnect --version``, build info)."""
    try:
        return version("meshconnect")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


BUILD_INFO = Gauge("meshconnect_build_info", "Always 1; the labels say which meshconnect and Python run.", ("version", "python"))
BUILD_INFO.labels(version=package_version(), python=platform.python_version()).set(1)


class ConnectorMetrics:
    """The metrics of one worker, with its ``connector`` and ``name`` labels bound."""

    def __init__(self, connector: str, name: str) -> None:
        self.connector = connector
        self.name = name
        labels = {"connector": connector, "name": name}
        self.records_in = RECORDS_IN.labels(**labels)
        self.records_out = RECORDS_OUT.labels(**labels)
        self.bytes_out = BYTES_OUT.labels(**labels)
        self.retries = RETRIES.labels(**labels)
        self.dead_letters = DEAD_LETTERS.labels(**labels)
        self.dead_letters_dropped = DEAD_LETTERS_DROPPED.labels(**labels)
        self.batch_latency = BATCH_LATENCY.labels(**labels)
        self.event_age_at_write = EVENT_AGE_AT_WRITE.labels(**labels)
        self.in_flight = IN_FLIGHT.labels(**labels)
        self.offset_lag = OFFSET_LAG.labels(**labels)
        self.takeovers = TAKEOVERS.labels(**labels)
        self.ready = READY.labels(**labels)
        self.last_checkpoint = LAST_CHECKPOINT.labels(**labels)
        self.spool_bytes = SPOOL_BYTES.labels(**labels)
        self.spool_replayed = SPOOL_REPLAYED.labels(**labels)

    def error(self, kind: str) -> None:
        ERRORS.labels(connector=self.connector, name=self.name, kind=kind).inc()

    def refused(self, reason: str) -> None:
        REFUSED.labels(connector=self.connector, name=self.name, reason=reason).inc()

    def transform_step(self, step: str) -> tuple[Counter, Counter, Counter]:
        """The counters of the transform step labelled ``step``: events in, dropped, failed."""
        labels = {"connector": self.connector, "name": self.name, "step": step}
        return TRANSFORM_EVENTS.labels(**labels), TRANSFORM_DROPPED.labels(**labels), TRANSFORM_FAILED.labels(**labels)

    def lease_held(self, group: str, held: bool) -> None:
        LEASE_HELD.labels(connector=self.connector, name=self.name, group=group).set(1 if held else 0)


@dataclass
class StatusBoard:
    """The live state of one worker, kept current by the worker and read by the admin endpoint.

    ``state`` is one of starting, running, standby, retrying, draining, stopped. A running worker
    sets ``pending`` (does it hold work not yet committed?) and calls :meth:`progressed` whenever it
    commits work or has none; pending work without progress for ``stall_timeout`` seconds is a stall.
    """

    connector: str
    name: str
    side: str
    metrics: ConnectorMetrics
    state: str = "starting"
    mesh_connected: bool = False
    exclusive: bool = False
    groups: frozenset[str] = frozenset()
    owned: frozenset[str] = frozenset()
    dependency_error: str | None = None
    backpressure: str | None = None
    last_offsets: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    stall_timeout: float = 120.0
    pending: Callable[[], bool] | None = None
    progress_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # Read at each scrape: a stall begins with no event that could update the gauge.
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)

    def set_state(self, state: str) -> None:
        if state == "running" and self.state != "running":
            self.progress_at = time.monotonic()
        self.state = state

    def progressed(self) -> None:
        """The worker committed work, or had none waiting: a stall, if any, is over."""
        self.progress_at = time.monotonic()

    def set_mesh(self, connected: bool) -> None:
        self.mesh_connected = connected

    def set_dependency(self, error: str | None) -> None:
        self.dependency_error = error

    def set_backpressure(self, reason: str | None) -> None:
        """The worker holds its input back (``reason``), e.g. a full spool; None once it takes input again."""
        self.backpressure = reason

    def set_owned(self, owned: frozenset[str]) -> None:
        self.owned = owned
        for group in self.groups:
            self.metrics.lease_held(group, group in owned)

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready or not, and why not."""
        reasons = []
        if self.state not in ("running", "standby"):
            reasons.append(f"state is {self.state}")
        if not self.mesh_connected:
            reasons.append("mesh session is down")
        if self.dependency_error is not None:
            reasons.append(f"dependency unhealthy: {self.dependency_error}")
        if self.backpressure is not None:
            reasons.append(f"holding input back: {self.backpressure}")
        stalled = time.monotonic() - self.progress_at
        if self.state == "running" and stalled > self.stall_timeout and self.pending is not None and self.pending():
            reasons.append(
                f"work pending but nothing committed for {stalled:.0f} s (admin.stall_timeout is {self.stall_timeout:g} s)"
            )
        return not reasons, reasons

    def snapshot(self) -> dict[str, Any]:
        ready, reasons = self.readiness()
        lease: dict[str, Any] | None = None
        if self.exclusive:
            lease = {"groups": sorted(self.groups), "held": sorted(self.owned), "standby": not self.owned}
        return {
            "connector": self.connector,
            "name": self.name,
            "side": self.side,
            "state": self.state,
            "ready": ready,
            "not_ready_because": reasons,
            "mesh_connected": self.mesh_connected,
            "lease": lease,
            "dependency_error": self.dependency_error,
            "backpressure": self.backpressure,
            "last_offsets": self.last_offsets,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }


class AdminServer:
    """``/healthz``, ``/readyz``, ``/metrics`` and ``/status`` over aiohttp; ``port`` is the bound port."""

    def __init__(self, settings: AdminSettings, board: StatusBoard, *, registry: CollectorRegistry = REGISTRY) -> None:
        self.settings = settings
        self.board = board
        self.registry = registry
        self.port = settings.port
        self._token = None if settings.token is None else settings.token.get_secret_value().encode()
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        structlog.get_logger().info(
            "admin endpoint listening",
            host=self.settings.host,
            port=self.port,
            metrics_and_status="bearer token" if self._token is not None else "open",
        )

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"alive": True, "state": self.board.state})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, reasons = self.board.readiness()
        return web.json_response({"ready": ready, "not_ready_because": reasons}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _unauthorized()
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _unauthorized()
        return web.json_response(self.board.snapshot())

    def _authorized(self, request: web.Request) -> bool:
        """No token configured, or the request carries it (compared in constant time)."""
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Compared whatever the scheme says, so that the time taken tells nothing either.
        matches = hmac.compare_digest(given.strip().encode(), self._token)
        return matches and scheme.lower() == "bearer"


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "this path needs the admin token: send Authorization: Bearer <admin.token>"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="meshconnect admin"'},
    )
