"""The Redis family: a single server (plain, replica, TLS or persistent), a Sentinel set-up and a Redis Cluster."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from tests.servers.process import ServerProcess, free_port, make_tls_files, require_binary

__all__ = ["RedisClusterNode", "RedisClusterSetup", "RedisSentinel", "RedisSentinelSetup", "RedisServer"]


def _redis_tls_options(tls: tuple[Path, Path, Path]) -> list[str]:
    """redis-server options to serve TLS only, on the server's port, and use it towards other servers."""
    ca, cert, key = tls
    return [
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)),
        *("--tls-auth-clients", "no", "--tls-replication", "yes"),
    ]


class RedisServer(ServerProcess):
    name = "redis"

    def __init__(
        self,
        password: str | None = None,
        replica_of: int | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        *,
        persistent: bool = False,
    ) -> None:
        """``persistent``: an append-only file fsynced on every write, as a production registry must run."""
        self.binary = require_binary("redis-server")
        self.password = password
        self.replica_of = replica_of
        self.tls = tls
        self.persistent = persistent
        super().__init__()

    def command(self) -> Sequence[str]:
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        cmd = [
            self.binary,
            *ports,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]),
            "--dir",
            str(self.dir),
        ]
        if self.password:
            cmd += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            cmd += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.tls is not None:
            cmd += _redis_tls_options(self.tls)
        return cmd

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


class RedisSentinel(ServerProcess):
    """One ``redis-server --sentinel`` watching ``service`` on ``primary_port``, quick to fail over."""

    name = "redis-sentinel"

    def __init__(
        self,
        service: str,
        primary_port: int,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.binary = require_binary("redis-server")
        self.service = service
        self.primary_port = primary_port
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls = tls
        super().__init__()

    def prepare(self) -> None:
        # Sentinel rewrites its config file as it learns the topology, so it lives in the temp dir.
        (self.dir / "sentinel.conf").write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
            + (f"sentinel auth-pass {self.service} {self.password}\n" if self.password else "")
            # Sentinels reach each other with their own requirepass.
            + (f"requirepass {self.sentinel_password}\n" if self.sentinel_password else "")
        )

    def command(self) -> Sequence[str]:
        cmd = [self.binary, str(self.dir / "sentinel.conf"), "--sentinel"]
        if self.tls is not None:
            cmd += ["--port", "0", "--tls-port", str(self.port), *_redis_tls_options(self.tls)]
        return cmd


class RedisSentinelSetup:
    """A primary, one replica and three Sentinels (quorum 2) on loopback: failover in seconds.

    ``password`` protects primary and replica, ``sentinel_password`` the Sentinels; with ``tls``
    every server speaks only TLS (certificates from :func:`make_tls_files` in a temp dir).
    """

    service = "registry"

    def __init__(
        self,
        password: str | None = None,
        sentinel_password: str | None = None,
        *,
        tls: bool = False,
        persistent: bool = False,
        port: Callable[[], int] = free_port,
    ) -> None:
        """``persistent`` servers keep an append-only file (a server restarted empty voids every acknowledgement
        it gave); ``port`` hands out each server's port (a caller restarting servers picks ports no client socket takes)."""
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls_dir = Path(tempfile.mkdtemp(prefix="meshconnect-redis-tls-"))
        self.tls = make_tls_files(self.tls_dir) if tls else None
        self.primary = RedisServer(password=password, tls=self.tls, persistent=persistent)
        self.primary.port = port()
        self.primary.start()
        self.replica = RedisServer(password=password, replica_of=self.primary.port, tls=self.tls, persistent=persistent)
        self.replica.port = port()
        self.replica.start()
        self.sentinels = [RedisSentinel(self.service, self.primary.port, password, sentinel_password, self.tls) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.port = port()
            sentinel.prepare()
            sentinel.start()
        self.wait_until_watched()

    def _client(self, port: int, password: str | None) -> redis.Redis:
        tls: dict[str, Any] = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls[0])}
        return redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5, decode_responses=True, **tls)

    def _ask(self, sentinel: RedisSentinel, *command: str) -> Any:
        client = self._client(sentinel.port, self.sentinel_password)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def primary_port(self) -> int:
        """The primary's port as the first Sentinel that answers sees it."""
        for sentinel in self.sentinels:
            try:
                _, port = self._ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return int(port)
            except (OSError, redis.exceptions.RedisError):
                continue
        raise RuntimeError("no Sentinel answered")

    def current_primary(self) -> RedisServer:
        """The server the Sentinels name as primary now (the first ``primary`` until a failover)."""
        port = self.primary_port()
        return self.primary if port == self.primary.port else self.replica

    def wait_until_watched(self, timeout: float = 60.0) -> None:
        """Until the replica is in sync and every Sentinel knows it and its two peers: only then
        can replicas acknowledge writes and Sentinels fail over."""
        deadline = time.monotonic() + timeout
        replica = self._client(self.replica.port, self.password)
        while time.monotonic() < deadline:
            if replica.info("replication").get("master_link_status") == "up" and all(
                self._ask(sentinel, "SENTINEL", "REPLICAS", self.service)
                and len(self._ask(sentinel, "SENTINEL", "SENTINELS", self.service)) >= 2
                for sentinel in self.sentinels
            ):
                replica.close()
                return
            time.sleep(0.2)
        replica.close()
        raise TimeoutError(f"the Sentinels did not all see the replica and each other within {timeout}s")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        options = [f"sentinel_password={self.sentinel_password}"] if self.sentinel_password else []
        if self.tls is not None:
            options += ["ssl_cert_reqs=required", f"ssl_ca_certs={self.tls[0]}"]
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{auth}{hosts}/{self.service}/0" + (f"?{'&'.join(options)}" if options else "")

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()
        shutil.rmtree(self.tls_dir, ignore_errors=True)


class RedisClusterNode(RedisServer):
    """One ``redis-server --cluster-enabled yes``, quick to declare a silent peer failed."""

    name = "redis-cluster"

    def __init__(self, password: str | None = None, tls: tuple[Path, Path, Path] | None = None) -> None:
        super().__init__(password=password, tls=tls)
        # The bus port would be port + 10000, past 65535 for many free ports: it gets its own.
        self.bus_port = free_port()

    def command(self) -> Sequence[str]:
        cmd = [*super().command(), "--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf")]
        cmd += ["--cluster-port", str(self.bus_port), "--cluster-node-timeout", "1000"]
        if self.tls is not None:
            cmd += ["--tls-cluster", "yes"]
        return cmd


class RedisClusterSetup:
    """A Redis Cluster on loopback: ``primaries`` primaries with one replica each, made by ``redis-cli --cluster create``.

    ``password`` protects every node (clients and the replication links); with ``tls`` every node
    speaks only TLS, on the cluster bus too. A primary killed here is failed over by its replica
    within seconds (``cluster-node-timeout`` 1 s).
    """

    def __init__(self, primaries: int = 3, password: str | None = None, *, tls: bool = False) -> None:
        self.password = password
        self.cli = require_binary("redis-cli")
        self.tls_dir = Path(tempfile.mkdtemp(prefix="meshconnect-redis-tls-"))
        self.tls = make_tls_files(self.tls_dir) if tls else None
        self.nodes = [RedisClusterNode(password=password, tls=self.tls) for _ in range(primaries * 2)]
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [self.cli, *self._cli_options(), "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def _cli_options(self) -> list[str]:
        options = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.tls is not None:
            options += ["--tls", "--cacert", str(self.tls[0])]
        return options

    def client(self, node: RedisClusterNode) -> redis.Redis:
        tls: dict[str, Any] = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls[0])}
        options: dict[str, Any] = {"password": self.password, "socket_timeout": 5, "decode_responses": True, **tls}
        # One connection: READONLY then a read must reach the node on the same one.
        return redis.Redis(host="127.0.0.1", port=node.port, single_connection_client=True, **options)

    def read(self, node: RedisClusterNode, *command: str | int) -> Any:
        """``command`` on ``node`` itself, a replica included (READONLY first), not redirected."""
        client = self.client(node)
        try:
            client.execute_command("READONLY")
            return client.execute_command(*command)
        finally:
            client.close()

    def _ask(self, node: RedisClusterNode, *command: str | int) -> Any:
        client = self.client(node)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def _running(self) -> list[RedisClusterNode]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def primary_of(self, key: str) -> RedisClusterNode:
        """The running node serving ``key``'s slot as a primary, as the first node that answers sees it."""
        by_port = {node.port: node for node in self._running()}
        for node in by_port.values():
            with contextlib.suppress(OSError, redis.exceptions.RedisError):
                slot = int(self._ask(node, "CLUSTER", "KEYSLOT", key))
                for start, end, owner, *_ in self._ask(node, "CLUSTER", "SLOTS"):
                    primary = by_port.get(int(owner[1]))
                    if start <= slot <= end and primary is not None and self._ask(primary, "ROLE")[0] == "master":
                        return primary
        raise RuntimeError(f"no running primary serves the slot of {key!r}")

    def replicas_of(self, primary: RedisClusterNode) -> list[RedisClusterNode]:
        """The running nodes that replicate ``primary``, their link up."""
        replicas = []
        for node in self._running():
            if node is primary:
                continue
            with contextlib.suppress(OSError, redis.exceptions.RedisError):
                info = self._ask(node, "INFO", "replication")
                if info.get("master_port") == primary.port and info.get("master_link_status") == "up":
                    replicas.append(node)
        return replicas

    def wait_until_healthy(self, timeout: float = 60.0) -> None:
        """Until every running node says the cluster is ok and every primary has a replica in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, redis.exceptions.RedisError):
                running = self._running()
                states = [self._ask(node, "CLUSTER", "INFO") for node in running]
                primaries = [node for node in running if self._ask(node, "ROLE")[0] == "master"]
                if all("cluster_state:ok" in state for state in states) and all(
                    self.replicas_of(primary) for primary in primaries
                ):
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the cluster was not healthy within {timeout}s")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:3])
        if self.tls is not None:
            return f"rediss+cluster://{auth}{hosts}?ssl_cert_reqs=required&ssl_ca_certs={self.tls[0]}"
        return f"redis+cluster://{auth}{hosts}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.tls_dir, ignore_errors=True)
