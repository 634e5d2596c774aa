"""prometheus-source: evaluate a PromQL query over time through the Prometheus HTTP API and publish every sample.

The source walks time forward on the evaluation grid of ``step``: each scrape is one
``GET <url>/api/v1/query_range?query=...&start=...&end=...&step=...`` over the evaluation timestamps
after the last one handed over, up to ``now - delay`` (so samples that arrive late in Prometheus are
in before their time is read) and at most ``max_points`` steps per call (Prometheus refuses more than
11,000 points per series). When caught up it scrapes once ``interval`` seconds of new steps are due.

Prometheus answers ``{"status": "success", "data": {"resultType": "matrix", "result": [{"metric":
{<labels>}, "values": [[<unix seconds>, "<value>"], ...]}, ...]}}``. One record per (series, sample):
data ``{"metric": {labels}, "timestamp": <unix seconds>, "value": <number>}`` (a non-finite value
stays Prometheus' string: ``"NaN"``, ``"+Inf"``, ``"-Inf"``), the event time is the sample's time.
Records of a scrape are ordered by (timestamp, series labels); the offset of a record is that
position, ``{"t": <milliseconds>, "series": <labels as canonical JSON>}``, in the partition
``{"query": <query>}``. A restart queries again from the committed timestamp and skips every
(timestamp, series) up to the committed one, so it resumes with no gap and no duplicate, and the
event ids (derived from the offsets) are the same on every run. A different query is a new partition.

Errors: a failed connection, a timeout, 429, 422 (an execution error) or 5xx is retried by the
worker with backoff; 400 (a bad query or step), 401/403 (credentials) and 404 (wrong URL) are
configuration errors and stop the worker with the reason. The Java connector's keys map as
``address`` + ``api`` -> ``url``, ``initTime`` -> ``start``, ``query``, ``interval``, ``step``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from pydantic import Field, field_validator

from runtime import (
    ConfigError,
    ConnectorConfig,
    ConnectorRecord,
    HttpEndpoint,
    RetriableError,
    Secret,
    Source,
    SourceContext,
    partition_key,
)

__all__ = ["PrometheusSource", "PrometheusSourceConfig"]

log = structlog.get_logger()

_IDLE_WAIT = 1.0  # seconds: poll() returns within about a second when nothing is due
_RETRIABLE_STATUS = frozenset({408, 422, 425, 429})


class PrometheusSourceConfig(ConnectorConfig):
    url: HttpEndpoint = Field(description="Prometheus base URL, e.g. http://prometheus:9090 (the API path is added).")
    query: str = Field(min_length=1, description="PromQL expression evaluated over time, e.g. 'rate(http_requests_total[5m])'.")
    step: float = Field(15.0, ge=0.001, description="Seconds between two evaluation timestamps (query_range step).")
    interval: float = Field(60.0, gt=0, description="Seconds of new steps to wait for between two scrapes when caught up.")
    delay: float = Field(30.0, ge=0, description="Stay this many seconds behind now, so late samples are in when read.")
    start: datetime | None = Field(
        None, description="First evaluation time when nothing was committed yet (RFC 3339 or unix seconds); default now."
    )
    max_points: int = Field(1000, ge=1, le=11_000, description="Evaluation steps per query at most (catching up).")
    timeout: float = Field(30.0, gt=0, description="Seconds for a whole query (connect, evaluate, answer).")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    token: Secret | None = Field(None, description="Sent as 'Authorization: Bearer <token>'.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (no secrets: use token).")

    @field_validator("url")
    @classmethod
    def _without_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("start")
    @classmethod
    def _aware(cls, start: datetime | None) -> datetime | None:
        return start if start is None or start.tzinfo is not None else start.replace(tzinfo=UTC)


class PrometheusSource(Source[PrometheusSourceConfig]):
    name = "prometheus-source"
    description = "Evaluates a PromQL query over time (query_range) and publishes one event per sample."
    config_model = PrometheusSourceConfig

    def __init__(self, config: PrometheusSourceConfig) -> None:
        super().__init__(config)
        self._step_ms = max(1, round(config.step * 1000))
        self._partition = {"query": config.query}
        self._next_ms = 0
        """The first evaluation timestamp not handed over yet."""
        self._resume: tuple[int, str] | None = None
        """The committed (timestamp, series) of a restart: what to skip at that timestamp."""
        self._session: aiohttp.ClientSession | None = None

    async def start(self, context: SourceContext) -> None:
        committed = context.offset(self._partition)
        if committed is not None:
            self._next_ms = int(committed["t"])
            self._resume = (self._next_ms, str(committed["series"]))
        else:
            first = self.config.start.timestamp() if self.config.start is not None else time.time() - self.config.delay
            self._next_ms = math.ceil(first * 1000 / self._step_ms) * self._step_ms
        headers = dict(self.config.headers)
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=self.config.timeout, sock_connect=self.config.connect_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, headers=headers)
        context.log.info(
            "prometheus source starts", query=self.config.query, first=self._next_ms / 1000, resuming=committed is not None
        )

    async def poll(self) -> Sequence[ConnectorRecord]:
        now_ms = int((time.time() - self.config.delay) * 1000)
        last_due = now_ms - now_ms % self._step_ms
        wait_ms = self._next_ms + max(0, round(self.config.interval * 1000) - self._step_ms) - last_due
        if wait_ms > 0:
            await asyncio.sleep(min(_IDLE_WAIT, wait_ms / 1000))
            return []
        end_ms = min(last_due, self._next_ms + (self.config.max_points - 1) * self._step_ms)
        result = await self._query_range(self._next_ms, end_ms)
        try:
            samples = _samples(result)
        except (AttributeError, TypeError, ValueError) as exc:
            raise RetriableError(f"Prometheus answered a malformed matrix ({exc.__class__.__name__}: {exc})") from exc
        if self._resume is not None:
            samples = [sample for sample in samples if (sample[0], sample[1]) > self._resume]
            self._resume = None
        self._next_ms = end_ms + self._step_ms
        records = []
        moment_ms, moment = None, datetime.now(UTC)
        for t_ms, series, metric, value in samples:  # in time order: one datetime per evaluation timestamp
            if t_ms != moment_ms:
                moment_ms, moment = t_ms, datetime.fromtimestamp(t_ms / 1000, UTC)
            records.append(self._record(t_ms, moment, series, metric, value))
        return records

    def _record(self, t_ms: int, moment: datetime, series: str, metric: Mapping[str, str], value: float | str) -> ConnectorRecord:
        # The samples of a series share its labels dict: decoded for this answer alone, and records are read-only.
        return ConnectorRecord(
            data={"metric": metric, "timestamp": t_ms / 1000, "value": value},
            partition=self._partition,
            offset={"t": t_ms, "series": series},
            timestamp=moment,
            datacontenttype="application/json",
        )

    async def _query_range(self, start_ms: int, end_ms: int) -> Any:
        """One query_range call; the one seam where aiohttp's errors and Prometheus' answers become ours."""
        assert self._session is not None, "start() first"
        params = {
            "query": self.config.query,
            "start": _seconds(start_ms),
            "end": _seconds(end_ms),
            "step": _seconds(self._step_ms),
        }
        url = f"{self.config.url}/api/v1/query_range"
        try:
            async with self._session.get(url, params=params) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            parts = urlsplit(url)
            shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # no user:password@ in the logs
            raise RetriableError(f"Prometheus query_range at {shown} failed: {exc.__class__.__name__} {exc}") from exc
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        excerpt = answer.get("error") or raw[:200].decode("utf-8", "replace")
        reason = f"Prometheus answered {status}: {answer.get('errorType', '')} {excerpt}"
        if status in _RETRIABLE_STATUS or status >= 500:
            raise RetriableError(reason)
        if status in (401, 403):
            raise ConfigError("config.token", reason, "give a token (or headers) Prometheus accepts")
        if status == 400:
            raise ConfigError("config.query", reason, "fix the PromQL query, or lower step/max_points")
        if status >= 300:
            raise ConfigError("config.url", reason, "give the base URL of the Prometheus server, e.g. http://prometheus:9090")
        data = answer.get("data")
        if answer.get("status") != "success" or not isinstance(data, dict) or data.get("resultType") != "matrix":
            raise RetriableError(f"Prometheus answered {status} without a matrix result: {raw[:200].decode('utf-8', 'replace')}")
        if answer.get("warnings"):
            log.warning("prometheus query warnings", query=self.config.query, warnings=answer["warnings"])
        return data.get("result") or []

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}"


def _samples(result: Any) -> list[tuple[int, str, Mapping[str, str], float | str]]:
    """(timestamp ms, series key, labels, value) of every sample of a matrix, in (timestamp, series) order."""
    samples = []
    for series in result:
        metric = series.get("metric") or {}
        key = partition_key(metric)
        for timestamp, text in series.get("values") or []:
            value = float(text)
            samples.append((round(float(timestamp) * 1000), key, metric, value if math.isfinite(value) else str(text)))
    samples.sort(key=itemgetter(0, 1))
    return samples
