"""The chaos run: the whole topology in separate processes, load and faults and bad input at once, then the verdict.

Topology (every connector a ``python -m runtime.cli run <connector> --config <generated yaml>``
process, restarted by :class:`~tests.chaos.supervisor.Supervisor` whenever it dies)::

    load generator --HTTP--> http-source x2 ---+                   +--> mysql-sink "http" x3 (mapped) --> sink MariaDB
    load generator --SQL---> source MariaDB    +--> chaos proxy -->|    mysql-sink "cdc"  x3 (cdc)    --> sink MariaDB
                             mysql-source x2 --+    --> mesh       +--> mysql-sink "dlq"  x1 (events) --> sink MariaDB
                                    (leases and offsets in Redis, appendonly)

One mysql-sink config has one ``mode``, so the sink side is two deployments (mapped for the HTTP
events, cdc for the source database's changes) plus a third, small one that writes every
dead-letter topic into a table, where the checker finds the dead letters and their reasons.

Faults while the load runs: kill -9 of a random connector every few seconds; SIGSTOP of the
active mysql-source replica for longer than its lease TTL, then SIGCONT (a zombie); Redis killed
and restarted; the sink-side MariaDB killed and restarted; the mesh killed and restarted; and all
the while the proxy between every connector and the mesh splits, delays and cuts connections.

With ``sentinel`` the registry is a Redis primary, a replica and three Sentinels (every
connector on ``redis+sentinel://`` with ``min_replicas: 1``), and the Redis fault is a failover
instead of a restart: the primary is killed (-9) or paused (SIGSTOP), in turn, until the
Sentinels promote the replica, then started again (or resumed) to become the new primary's replica.
Bad input arrives all the while as well (:mod:`tests.chaos.badinput`). Then the load stops, the
system drains, and :mod:`tests.chaos.checker` gives the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
import yaml

from tests.chaos.badinput import BadConfig, BadInput
from tests.chaos.checker import Verdict, judge, observe, percentile
from tests.chaos.faults import Faults, sleep_or_stop
from tests.chaos.loadgen import SOURCE_TABLES, HttpLoad, SqlLoad
from tests.chaos.proxy import ChaosProxy
from tests.chaos.supervisor import Managed, Supervisor, peak_rss_kb
from tests.servers import MariaDBServer, RedisSentinelSetup, RedisServer, wait_for_port

__all__ = ["FAULT_KINDS", "ONE_REDIS_FAULTS", "SENTINEL_FAULTS", "ChaosReport", "ChaosSettings", "run_chaos"]

log = structlog.get_logger("chaos")

FAULT_KINDS = (
    "connector_kill",
    "zombie_source",
    "redis_restart",
    "redis_failover",
    "sink_db_restart",
    "mesh_restart",
    "proxy_cut",
)
ONE_REDIS_FAULTS = tuple(kind for kind in FAULT_KINDS if kind != "redis_failover")
"""The faults of a run on one Redis (the default)."""
SENTINEL_FAULTS = tuple(kind for kind in FAULT_KINDS if kind != "redis_restart")
"""The faults of a run on a Sentinel-watched primary and replica."""
SOURCE_DB = "shop"
REPLICA_DB = "replica"
HTTP_DB = "sink_http"
DEAD_LETTER_DB = "chaos_dlq"
HTTP_TOPIC = "chaos.http"
HEARTBEAT_TOPIC = "chaos.heartbeat"
MAX_BODY_BYTES = 64 * 1024
# http-source refuses (413) an event larger than this, below the body limit: both answers are exercised.
MAX_EVENT_BYTES = 32 * 1024
# The mesh closes a connection that said no HELLO within this long (the bad-input phase stalls some).
HELLO_TIMEOUT = 2.0

SINK_TABLES = f"""
CREATE DATABASE {REPLICA_DB};
CREATE TABLE {REPLICA_DB}.items (id INT PRIMARY KEY, version INT NOT NULL, note VARCHAR(64) NOT NULL, updated_us BIGINT NOT NULL);
CREATE TABLE {REPLICA_DB}.journal (change_id BIGINT PRIMARY KEY, item_id INT NOT NULL, op CHAR(1) NOT NULL, at_us BIGINT NOT NULL,
  landed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6));
CREATE DATABASE {HTTP_DB};
CREATE TABLE {HTTP_DB}.http_events (uid VARCHAR(64) PRIMARY KEY, n BIGINT NOT NULL, sent_us BIGINT NOT NULL,
  payload VARCHAR(100) NOT NULL, landed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6));
CREATE DATABASE {DEAD_LETTER_DB};
"""


@dataclass(frozen=True)
class ChaosSettings:
    duration: float = 60.0
    http_rate: float = 40.0
    sql_rate: float = 15.0
    http_replicas: int = 2
    source_replicas: int = 2
    sink_replicas: int = 3
    kill_every: tuple[float, float] = (3.0, 6.0)
    major_fault_every: float = 10.0
    lease_ttl: float = 2.0
    redelivery_timeout: float = 3.0
    sentinel: bool = False
    """The registry on a primary, a replica and three Sentinels, replica-acknowledged (``min_replicas: 1``)."""
    faults: tuple[str, ...] = ONE_REDIS_FAULTS
    """The fault kinds injected (with ``sentinel``, pass :data:`SENTINEL_FAULTS` for all of them)."""
    bad_fit_share: float = 0.02
    drain_timeout: float = 90.0
    ready_timeout: float = 60.0
    seed: int = 1


_PORT_RANGE = (20000, 32000)  # below the kernel's ephemeral range, where outgoing connections take their ports
_handed_out: set[int] = set()


def stable_port() -> int:
    """A free port for a process that is restarted on it: outside the ephemeral range, so no client socket takes it meanwhile."""
    chooser = random.SystemRandom()
    for _ in range(500):
        port = chooser.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


class ChaosMariaDB(MariaDBServer):
    def __init__(self, server_id: int) -> None:
        super().__init__(server_id)
        self.port = stable_port()


class AppendOnlyRedis(RedisServer):
    """Redis with the append-only file on (fsync always): a kill -9 and restart keeps offsets and leases."""

    def __init__(self) -> None:
        super().__init__(persistent=True)
        self.port = stable_port()


@dataclass
class ChaosReport:
    settings: ChaosSettings
    verdict: Verdict
    faults: Counter[str]
    takeovers: list[float]
    bad_input_sent: Counter[str]
    bad_input_handled: Counter[str]
    bad_input_mishandled: list[str]
    bad_input_reasons: dict[str, str]
    bad_configs: list[BadConfig]
    http: HttpLoad
    sql: SqlLoad
    proxy_stats: dict[str, int]
    peak_rss_kb: dict[str, int]
    restarts: dict[str, int]
    exit_codes: dict[str, int | None]
    drained_in: float
    load_seconds: float
    rejections_logged: Counter[str]
    """Log lines that record a refused input: ``http <status>`` of the http-source, ``mesh <event>`` of the mesh."""
    timeline: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        v = self.verdict
        latency = sorted(v.latencies)
        rows: list[tuple[str, Any]] = [
            ("load seconds", f"{self.load_seconds:.1f}"),
            (
                "events accepted",
                f"{v.accepted} (http {v.accepted_http}, does-not-fit {v.accepted_bad_fit}, row changes {v.accepted_changes})",
            ),
            ("landed", f"{v.landed} (http {v.landed_http}, row changes {v.landed_changes})"),
            (
                "dead-lettered",
                f"{v.dead_lettered} (of {v.accepted_bad_fit} does-not-fit; unexpected {len(v.unexpected_dead_letters)})",
            ),
            ("lost (must be 0)", v.lost),
            ("duplicate rows (must be 0)", v.duplicates),
            ("dead letters without a reason", v.dead_letters_without_reason),
            ("replica mismatches", f"{v.mismatches} (missing {v.items_missing}, stale {v.items_stale}, extra {v.items_extra})"),
            ("landed without a 2xx", v.landed_without_2xx),
            ("http sends / retries / gave up", f"{self.http.sent} / {self.http.retries} / {len(self.http.gave_up)}"),
            ("http answers", " ".join(f"{k}:{n}" for k, n in sorted(self.http.statuses.items()))),
            ("source transactions ok / failed", f"{self.sql.committed} / {self.sql.failed}"),
        ]
        rows += [(f"fault {kind}", self.faults.get(kind, 0)) for kind in self.settings.faults]
        rows.append(("proxy", " ".join(f"{k}={n}" for k, n in self.proxy_stats.items())))
        rows.append(
            ("max takeover time", f"{max(self.takeovers):.2f} s ({len(self.takeovers)} takeovers)" if self.takeovers else "n/a")
        )
        rows.append(
            ("latency p50 / p99", f"{percentile(latency, 0.5) * 1000:.0f} ms / {percentile(latency, 0.99) * 1000:.0f} ms")
        )
        rows.append(("drained in", f"{self.drained_in:.1f} s"))
        rows.append(("rejections logged", " ".join(f"{k}:{n}" for k, n in sorted(self.rejections_logged.items())) or "none"))
        for label in sorted(self.bad_input_sent):
            handled = self.bad_input_handled.get(label, 0)
            reason = self.bad_input_reasons.get(label, "")
            rows.append((f"bad input {label}", f"{handled}/{self.bad_input_sent[label]} handled: {reason}"))
        for problem in self.bad_input_mishandled[:10]:
            rows.append(("MISHANDLED", problem))
        for name in sorted(self.peak_rss_kb):
            detail = f" (starts {self.restarts[name]}, last exit {self.exit_codes.get(name)})" if name in self.restarts else ""
            rows.append((f"peak RSS {name}", f"{self.peak_rss_kb[name] / 1024:.0f} MiB{detail}"))
        width = max(len(label) for label, _ in rows)
        out = [f"{label:<{width}}  {value}" for label, value in rows]
        if v.lost:
            out.append(f"lost http: {v.lost_http[:10]} does-not-fit: {v.lost_bad_fit[:10]} changes: {v.lost_changes[:10]}")
        for kind, reason in sorted(v.dead_letter_reasons.items()):
            out.append(f"dead-letter reason {kind}: {reason[:150]}")
        if v.mismatch_examples:
            out.append(f"replica mismatches: {v.mismatch_examples}")
        if v.unexpected_dead_letters:
            out.append(f"unexpected dead letters: {dict(list(v.unexpected_dead_letters.items())[:5])}")
        out.append(v.line())
        return out


class Topology:
    """The servers, the mesh, the proxy and the connector processes of one run."""

    def __init__(self, settings: ChaosSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.supervisor = Supervisor(workdir)
        self.redis: AppendOnlyRedis | None = None
        self.sentinel: RedisSentinelSetup | None = None
        self.source_db: ChaosMariaDB | None = None
        self.sink_db: ChaosMariaDB | None = None
        self.mesh_port = stable_port()
        self.proxy = ChaosProxy(self.mesh_port, seed=settings.seed)
        self.http_ports = [stable_port() for _ in range(settings.http_replicas)]
        self._stopped: dict[str, int | None] | None = None

    @property
    def http_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}/events" for port in self.http_ports]

    async def start(self) -> None:
        if self.settings.sentinel:
            self.sentinel = await asyncio.to_thread(RedisSentinelSetup, persistent=True, port=stable_port)
        else:
            self.redis = AppendOnlyRedis()
        self.source_db = ChaosMariaDB(server_id=1)
        self.sink_db = ChaosMariaDB(server_id=2)
        servers = (*([self.redis] if self.redis is not None else []), self.source_db, self.sink_db)
        for server in servers:  # one at a time: two mariadb-install-db runs at once can fail
            await asyncio.to_thread(server.prepare)
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        await asyncio.to_thread(
            self.source_db.sql,
            f"SET GLOBAL binlog_row_metadata = 'FULL'; CREATE DATABASE {SOURCE_DB}; USE {SOURCE_DB};" + SOURCE_TABLES,
        )
        await asyncio.to_thread(self.sink_db.sql, SINK_TABLES)
        await self.proxy.start()
        python = sys.executable
        self.supervisor.add(
            Managed(
                "mesh",
                "mesh",
                [
                    python,
                    "-m",
                    "runtime.cli",
                    "mesh",
                    "--port",
                    str(self.mesh_port),
                    "--data-dir",
                    str(self.workdir / "mesh"),
                    "--redelivery-timeout",
                    str(self.settings.redelivery_timeout),
                    "--hello-timeout",
                    str(HELLO_TIMEOUT),
                    "--log-level",
                    "warning",
                ],
                self.workdir / "mesh.log",
                env={"PYTHONUNBUFFERED": "1"},
            )
        )
        for managed in self._connectors():
            self.supervisor.add(managed)
        self.supervisor.start()
        await asyncio.to_thread(wait_for_port, self.mesh_port, 30.0)
        await self.wait_ready(self.settings.ready_timeout)

    def _registry(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"kind": "redis", "prefix": "chaos", "lease_ttl": self.settings.lease_ttl}
        if self.sentinel is not None:
            # Below lease_ttl/3, as the config requires.
            return {**settings, "url": self.sentinel.url, "min_replicas": 1, "replica_timeout": self.settings.lease_ttl / 4}
        assert self.redis is not None
        return {**settings, "url": self.redis.url}

    def _worker(self, name: str, connector: str, admin_port: int, **sections: Any) -> dict[str, Any]:
        return {
            "name": name,
            "connector": connector,
            "mesh": {
                "address": f"127.0.0.1:{self.proxy.port}",
                "connect_timeout": 3,
                "request_timeout": 5,
                "heartbeat_interval": 5,
            },
            "registry": self._registry(),
            "admin": {"host": "127.0.0.1", "port": admin_port},
            "log": {"format": "json", "level": "info"},
            **sections,
        }

    def _managed(self, replica: str, kind: str, config: dict[str, Any]) -> Managed:
        path = self.workdir / f"{replica}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return Managed(
            replica,
            kind,
            [sys.executable, "-m", "runtime.cli", "run", config["connector"], "--config", str(path), "--shutdown-timeout", "10"],
            self.workdir / f"{replica}.log",
            env={"PYTHONUNBUFFERED": "1"},
            admin_port=int(config["admin"]["port"]),
        )

    def _connectors(self) -> list[Managed]:
        assert self.source_db is not None and self.sink_db is not None
        settings = self.settings
        out: list[Managed] = []
        for index, port in enumerate(self.http_ports):
            config = self._worker(
                "chaos-http",
                "http-source",
                stable_port(),
                source={"topic": HTTP_TOPIC, "event_source": "/chaos/http"},
                config={
                    "host": "127.0.0.1",
                    "port": port,
                    "path": "/events",
                    "max_body_bytes": MAX_BODY_BYTES,
                    "max_event_bytes": MAX_EVENT_BYTES,
                    "queue_size": 2000,
                    "response_timeout": 10,
                },
            )
            out.append(self._managed(f"http-source-{index + 1}", "http-source", config))
        for index in range(settings.source_replicas):
            config = self._worker(
                "chaos-cdc",
                "mysql-source",
                stable_port(),
                source={"checkpoint_every": 200, "checkpoint_interval": 0.5},
                config={
                    "host": "127.0.0.1",
                    "port": self.source_db.port,
                    "user": "root",
                    "server_name": "shop",
                    "replica_id": 62001 + index,
                    "include_databases": [SOURCE_DB],
                    "heartbeat_interval": 1,
                    "heartbeat_topic": HEARTBEAT_TOPIC,
                },
            )
            out.append(self._managed(f"mysql-source-{index + 1}", "mysql-source", config))
        sink = {"batch_size": 200, "linger_ms": 20, "retry_initial": 0.1, "retry_max": 2.0, "max_attempts": 3}
        database = {"host": "127.0.0.1", "port": self.sink_db.port, "user": "root", "pool_size": 2, "connect_timeout": 3}
        for index in range(settings.sink_replicas):
            config = self._worker(
                "chaos-http-sink",
                "mysql-sink",
                stable_port(),
                sink={**sink, "topics": [HTTP_TOPIC]},
                config={**database, "database": HTTP_DB, "mode": "mapped", "table": "http_events"},
            )
            out.append(self._managed(f"http-sink-{index + 1}", "http-sink", config))
        for index in range(settings.sink_replicas):
            config = self._worker(
                "chaos-cdc-sink",
                "mysql-sink",
                stable_port(),
                sink={**sink, "topics": [f"{SOURCE_DB}.items", f"{SOURCE_DB}.journal", HEARTBEAT_TOPIC]},
                config={**database, "database": REPLICA_DB, "mode": "cdc", "apply_ddl": False},
            )
            out.append(self._managed(f"cdc-sink-{index + 1}", "cdc-sink", config))
        dead_letter_topics = ["chaos-http-sink-dlq", "chaos-cdc-sink-dlq", "chaos-http-dlq", "chaos-cdc-dlq"]
        config = self._worker(
            "chaos-dlq",
            "mysql-sink",
            stable_port(),
            sink={**sink, "topics": dead_letter_topics},
            config={**database, "database": DEAD_LETTER_DB, "mode": "events", "table": "dead_letters"},
        )
        out.append(self._managed("dlq-sink", "dlq-sink", config))
        return out

    def bad_configs(self) -> list[BadConfig]:
        def worker(connector: str, **sections: Any) -> dict[str, Any]:
            return {"name": "chaos-bad", "connector": connector, "admin": {"host": "127.0.0.1", "port": 0}, **sections}

        return [
            BadConfig("unknown_key", "mysql-sink", worker("mysql-sink", config={"database": "x", "tabel": "y"}), "config.tabel"),
            BadConfig(
                "wrong_type",
                "http-source",
                worker("http-source", source={"checkpoint_every": "often"}),
                "source.checkpoint_every",
            ),
            BadConfig("missing_key", "mysql-sink", worker("mysql-sink", config={"mode": "events"}), "config.database"),
            BadConfig("bad_choice", "mysql-source", worker("mysql-source", config={"mode": "magic"}), "config.mode"),
            BadConfig("redis_without_url", "mysql-source", worker("mysql-source", registry={"kind": "redis"}), "registry.url"),
        ]

    async def status(self, http: aiohttp.ClientSession, managed: Managed) -> dict[str, Any] | None:
        if managed.admin_port is None or managed.pid is None or managed.paused:
            return None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with http.get(f"http://127.0.0.1:{managed.admin_port}/status") as response:
                answer = await response.json()
                return answer if isinstance(answer, dict) else None
        return None

    async def wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        pending = [m for m in self.supervisor.processes.values() if m.admin_port is not None]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while pending:
                if time.monotonic() > deadline:
                    names = ", ".join(m.name for m in pending)
                    crashed = [m for m in self.supervisor.processes.values() if m.exits]
                    culprit = crashed[0] if crashed else pending[0]
                    raise AssertionError(
                        f"not ready within {within}s: {names}\n{culprit.name} (exits {culprit.exits}):\n{culprit.log_tail()}"
                    )
                still = []
                for managed in pending:
                    ready = False
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(f"http://127.0.0.1:{managed.admin_port}/readyz") as response:
                            ready = response.status == 200
                    if not ready:
                        still.append(managed)
                pending = still
                await asyncio.sleep(0.2)

    async def stop(self) -> dict[str, int | None]:
        if self._stopped is not None:
            return self._stopped
        codes = self._stopped = await self.supervisor.stop()
        await self.proxy.stop()
        for server in (self.redis, self.sentinel, self.source_db, self.sink_db):
            if server is not None:
                await asyncio.to_thread(server.stop)
        return codes


async def run_chaos(settings: ChaosSettings, workdir: Path, *, progress: Callable[[str], None] | None = None) -> ChaosReport:
    """Build the topology, run load + faults + bad input for ``settings.duration`` seconds, drain, judge, tear down."""
    say = progress or (lambda _line: None)
    topology = Topology(settings, workdir)
    try:
        say("starting servers and connectors")
        await topology.start()
        assert topology.source_db is not None and topology.sink_db is not None
        http = HttpLoad(topology.http_urls, settings.http_rate, settings.bad_fit_share, seed=settings.seed)
        sql = SqlLoad("127.0.0.1", topology.source_db.port, SOURCE_DB, settings.sql_rate, seed=settings.seed + 1)
        bad = BadInput(topology.http_urls, topology.mesh_port, MAX_BODY_BYTES, MAX_EVENT_BYTES, workdir, topology.bad_configs())
        faults = Faults(topology, settings)
        stop_load, stop_faults = asyncio.Event(), asyncio.Event()
        say(f"load and faults for {settings.duration:.0f}s")
        started = time.monotonic()
        give_up_at = started + settings.duration + 30
        http_task = asyncio.create_task(http.run(stop_load, give_up_at))
        other = [
            asyncio.create_task(sql.run(stop_load)),
            asyncio.create_task(bad.run(stop_load)),
            asyncio.create_task(faults.major_loop(stop_faults)),
        ]
        if "connector_kill" in settings.faults:
            other.append(asyncio.create_task(faults.kill_loop(stop_faults)))
        topology.proxy.cutting = "proxy_cut" in settings.faults
        await sleep_or_stop(stop_load, settings.duration)
        stop_faults.set()
        stop_load.set()
        load_seconds = time.monotonic() - started
        await asyncio.gather(*other)
        for managed in topology.supervisor.processes.values():
            topology.supervisor.resume(managed.name)
        topology.proxy.cutting = False
        say("draining")
        drain_started = time.monotonic()
        await http_task
        await faults.close()
        verdict = await _drain(topology, http, settings.drain_timeout - (time.monotonic() - drain_started))
        drained_in = time.monotonic() - drain_started
        rss = {name: managed.peak_rss_kb for name, managed in topology.supervisor.processes.items()}
        codes = await topology.stop()
        rss = {name: max(kb, topology.supervisor.processes[name].peak_rss_kb) for name, kb in rss.items()}
        rss["harness"] = peak_rss_kb(os.getpid())
        stats = topology.proxy.stats
        faults.counts["proxy_cut"] = stats.cuts
        return ChaosReport(
            settings=settings,
            verdict=verdict,
            faults=faults.counts,
            takeovers=faults.takeovers,
            bad_input_sent=bad.sent,
            bad_input_handled=bad.handled,
            bad_input_mishandled=bad.mishandled,
            bad_input_reasons=bad.reasons,
            bad_configs=bad.bad_configs,
            http=http,
            sql=sql,
            proxy_stats={
                "connections": stats.connections,
                "cuts": stats.cuts,
                "fragments": stats.fragments,
                "delayed": stats.delayed_pieces,
            },
            peak_rss_kb=rss,
            restarts={name: managed.starts for name, managed in topology.supervisor.processes.items()},
            exit_codes=codes,
            drained_in=drained_in,
            load_seconds=load_seconds,
            rejections_logged=_rejections_logged(topology),
            timeline=faults.timeline,
        )
    finally:
        await topology.stop()


def _rejections_logged(topology: Topology) -> Counter[str]:
    """Count the log lines of refused input: the http-source's rejections by status, the mesh's closed sessions by kind."""
    logged: Counter[str] = Counter()
    for managed in topology.supervisor.processes.values():
        try:
            text = managed.log_path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if '"http request rejected"' in line:
                try:
                    logged[f"http {orjson.loads(line).get('status')}"] += 1
                except orjson.JSONDecodeError:
                    continue
            elif "mesh.session.undecodable" in line or "mesh.session.headerless_frame" in line:
                logged["mesh " + ("undecodable" if "undecodable" in line else "headerless")] += 1
            elif "mesh.refused" in line:
                logged["mesh refused"] += 1
    return logged


async def _drain(topology: Topology, http: HttpLoad, within: float) -> Verdict:
    """Judge every two seconds until nothing is missing or ``within`` seconds passed; the last verdict."""
    assert topology.source_db is not None and topology.sink_db is not None
    deadline = time.monotonic() + max(within, 5.0)
    verdict: Verdict | None = None
    while True:
        try:
            seen = await observe(
                source_port=topology.source_db.port,
                source_db=SOURCE_DB,
                sink_port=topology.sink_db.port,
                replica_db=REPLICA_DB,
                http_db=HTTP_DB,
                dead_letter_db=DEAD_LETTER_DB,
            )
            verdict = judge(http.accepted, http.bad_fit_accepted, seen)
        except Exception as exc:  # a database still restarting: look again
            log.warning("checker could not read the databases yet", error=repr(exc))
        if verdict is not None and (verdict.settled or time.monotonic() > deadline):
            return verdict
        if time.monotonic() > deadline + 30:
            raise AssertionError("the checker could not read the databases after the drain")
        await asyncio.sleep(2.0)
