"""Throwaway server processes for tests: each in its own temp dir, on a free loopback port.

Every server can be killed (SIGKILL) and restarted on the same port and data dir, for fault tests.
Under ``CI=true`` a missing binary fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis

__all__ = [
    "KafkaServer",
    "MariaDBServer",
    "MosquittoServer",
    "MotoS3Server",
    "NatsServer",
    "PostgresServer",
    "PulsarServer",
    "RedisClusterSetup",
    "RedisServer",
    "RedisSentinelSetup",
    "ServerProcess",
    "free_port",
    "make_tls_files",
    "require_binary",
    "unavailable",
    "wait_for_port",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(*candidates: str) -> str:
    """The first of ``candidates`` found on PATH (or as an absolute path); skip or fail if none."""
    for name in candidates:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if found:
            return found
    unavailable(f"none of {', '.join(candidates)} is installed")


def unavailable(message: str) -> NoReturn:
    """A service a test needs is missing: a failure under ``CI=true`` (CI must provide it), else a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI must install and start it: see .ci/deps)")
    pytest.skip(message)


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


class ServerProcess:
    """One server process bound to a fixed port and data dir, restartable."""

    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"meshconnect-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the server

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time set-up of the data dir before the first start."""

    def ready(self) -> None:
        wait_for_port(self.port, proc=self.proc)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            list(self.command()),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
        )
        self.ready()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM and wait, as an orderly shutdown would (servers save their state)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, graceful: bool = False) -> None:
        """Stop (SIGKILL, or SIGTERM when ``graceful``) and start again on the same port and data."""
        if graceful:
            self.terminate()
        else:
            self.kill()
        self.start()

    def stop(self) -> None:
        self.terminate()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")

    @classmethod
    def running(cls, *args: object, **kwargs: object) -> ServerProcess:
        server = cls(*args, **kwargs)  # type: ignore[arg-type]
        server.prepare()
        server.start()
        return server


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    openssl = require_binary("openssl")
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, request = directory / "server.pem", directory / "server.key", directory / "server.csr"
    san = directory / "san.ext"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    ca_args = ["-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test-ca"]
    request_args = ["-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"]
    sign_args = ["-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2"]
    for command in (["req", *ca_args], ["req", *request_args], ["x509", *sign_args, "-extfile", san]):
        subprocess.run([openssl, *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


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


class MariaDBServer(ServerProcess):
    """MariaDB with the binlog on in ROW format (for CDC) and root without password over TCP."""

    name = "mariadb"

    def __init__(self, server_id: int = 1) -> None:
        self.binary = require_binary("mariadbd", "/usr/sbin/mariadbd", "mysqld")
        self.install_db = require_binary("mariadb-install-db", "mysql_install_db")
        self.server_id = server_id
        super().__init__()
        self.socket = str(self.dir / "mysqld.sock")

    def prepare(self) -> None:
        subprocess.run(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.dir / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
            check=True,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def command(self) -> Sequence[str]:
        return [
            self.binary,
            "--no-defaults",
            f"--datadir={self.dir / 'data'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mysqld.pid'}",
            "--user=root",
            "--log-bin=mysql-bin",
            "--binlog-format=ROW",
            f"--server-id={self.server_id}",
            "--binlog-row-image=FULL",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=48M",
            "--max-connections=500",
            "--local-infile=1",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
        ]

    def ready(self) -> None:
        wait_for_port(self.port, timeout=60, proc=self.proc)

    def sql(self, statement: str, database: str | None = None) -> str:
        """Run ``statement`` with the mariadb client; returns tab-separated output."""
        client = require_binary("mariadb", "mysql")
        cmd = [client, "-uroot", "-h127.0.0.1", f"-P{self.port}", "-N", "-B", "-e", statement]
        if database:
            cmd.insert(1, f"-D{database}")
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class MosquittoServer(ServerProcess):
    name = "mosquitto"

    def __init__(self) -> None:
        self.binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
        super().__init__()

    def prepare(self) -> None:
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nmax_queued_messages 100000\n"
            # Run as whoever owns the data dir: as root, mosquitto would otherwise drop to its own
            # user and could not save its sessions there.
            f"user {getpass.getuser()}\n"
        )

    def command(self) -> Sequence[str]:
        return [self.binary, "-c", str(self.dir / "mosquitto.conf")]


class NatsServer(ServerProcess):
    name = "nats"

    def __init__(self) -> None:
        self.binary = require_binary("nats-server", "/usr/sbin/nats-server")
        super().__init__()

    def command(self) -> Sequence[str]:
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir / "js")]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


_PULSAR_POM = Path(__file__).parent / "services" / "pulsar" / "pom.xml"
_pulsar_classpath: str | None = None


def pulsar_classpath() -> str:
    """The Pulsar broker's classpath, resolved by Maven once per test session (cached in ~/.m2)."""
    global _pulsar_classpath  # noqa: PLW0603 - one resolution per session
    if _pulsar_classpath is None:
        mvn = require_binary("mvn")
        with tempfile.TemporaryDirectory(prefix="meshconnect-pulsar-cp-") as scratch:
            out = Path(scratch) / "classpath.txt"
            command = [mvn, "-q", "-B", "-f", str(_PULSAR_POM), "dependency:build-classpath", f"-Dmdep.outputFile={out}"]
            done = subprocess.run(command, capture_output=True, timeout=900, check=False)
            if done.returncode != 0:
                output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
                unavailable(f"Maven could not resolve the Pulsar broker: {output}")
            _pulsar_classpath = out.read_text().strip()
    return _pulsar_classpath


class PulsarServer(ServerProcess):
    """Pulsar's standalone mode from Maven Central: a broker (plain and TLS), one bookie and RocksDB metadata in one JVM."""

    name = "pulsar"

    def __init__(self) -> None:
        self.java = require_binary("java")
        self.classpath = pulsar_classpath()
        super().__init__()
        self.web_port = free_port()
        self.bookie_port = free_port()
        self.tls_port = free_port()
        self.ca_file = self.dir / "tls" / "ca.pem"
        self.token_key = os.urandom(32)

    def token(self, subject: str, key: bytes | None = None) -> str:
        """A JWT (HS256) for ``subject`` signed with the broker's key, or with ``key``."""

        def part(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        unsigned = part(b'{"alg":"HS256"}') + "." + part(json.dumps({"sub": subject}).encode())
        signature = hmac.new(key or self.token_key, unsigned.encode(), hashlib.sha256).digest()
        return unsigned + "." + part(signature)

    def prepare(self) -> None:
        """Plain TCP on ``port``, TLS on ``tls_port`` (a certificate for 127.0.0.1 signed by ``ca_file``), tokens."""
        self.ca_file.parent.mkdir()
        _, cert, key = make_tls_files(self.ca_file.parent)
        (self.dir / "standalone.conf").write_text(
            "clusterName=standalone\n"
            "bindAddress=127.0.0.1\nadvertisedAddress=127.0.0.1\n"
            f"brokerServicePort={self.port}\nwebServicePort={self.web_port}\n"
            f"brokerServicePortTls={self.tls_port}\ntlsCertificateFilePath={cert}\ntlsKeyFilePath={key}\n"
            f"tlsTrustCertsFilePath={self.ca_file}\n"
            "managedLedgerDefaultEnsembleSize=1\nmanagedLedgerDefaultWriteQuorum=1\nmanagedLedgerDefaultAckQuorum=1\n"
            "functionsWorkerEnabled=false\nbrokerDeleteInactiveTopicsEnabled=false\nbrokerShutdownTimeoutMs=3000\n"
            # Token authentication; a client without a token is let in as "anonymous", one with a bad token is not.
            "authenticationEnabled=true\nauthorizationEnabled=false\nanonymousUserRole=anonymous\n"
            "authenticationProviders=org.apache.pulsar.broker.authentication.AuthenticationProviderToken\n"
            f"tokenSecretKey=data:;base64,{base64.b64encode(self.token_key).decode()}\n"
        )

    def command(self) -> Sequence[str]:
        return [
            self.java,
            *("-Xmx512m", "-XX:MaxDirectMemorySize=256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"),
            *("-cp", self.classpath, "org.apache.pulsar.PulsarStandaloneStarter"),
            *("-c", str(self.dir / "standalone.conf"), "--no-functions-worker", "--no-stream-storage"),
            *("--bookkeeper-dir", str(self.dir / "bookkeeper"), "--metadata-dir", str(self.dir / "metadata")),
            *("--bookkeeper-port", str(self.bookie_port), "--stream-storage-port", str(free_port())),
        ]

    def ready(self) -> None:
        """Up once the default namespace answers: topics can then be created and looked up."""
        wait_for_port(self.port, timeout=120, proc=self.proc)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.admin_url}/admin/v2/namespaces/public/default", timeout=5):
                    return
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Pulsar answered no admin request within 60 s: {exc}") from exc
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"pulsar://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"pulsar+ssl://127.0.0.1:{self.tls_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"


class PostgresServer(ServerProcess):
    """PostgreSQL with wal_level=logical, trust auth for the OS user running the tests."""

    name = "postgres"

    def __init__(self) -> None:
        self.initdb = require_binary("initdb", "/usr/lib/postgresql/15/bin/initdb")
        self.binary = require_binary("postgres", "/usr/lib/postgresql/15/bin/postgres")
        self.pg_isready = require_binary("pg_isready", "/usr/lib/postgresql/15/bin/pg_isready")
        super().__init__()
        self.user = "postgres"

    def _as_postgres(self) -> Callable[[], None] | None:
        if os.geteuid() != 0:
            return None
        import pwd

        entry = pwd.getpwnam("postgres")

        def demote() -> None:
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

        return demote

    def prepare(self) -> None:
        demote = self._as_postgres()
        if demote is not None:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir / "server.log", "postgres", "postgres")
        else:
            self.user = getpass.getuser()
        subprocess.run(
            [self.initdb, "-D", str(self.dir / "data"), "-A", "trust", "-U", self.user],
            check=True,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=demote,
        )

    def command(self) -> Sequence[str]:
        return [
            self.binary,
            "-D",
            str(self.dir / "data"),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.dir}",
            "-c",
            "wal_level=logical",
            "-c",
            "fsync=off",
            "-c",
            "max_replication_slots=10",
            "-c",
            "max_wal_senders=10",
        ]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            list(self.command()),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
            preexec_fn=self._as_postgres(),  # noqa: PLW1509
        )
        self.ready()

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"


class MotoS3Server(ServerProcess):
    """moto's S3 in server mode: a real HTTP S3 endpoint, its objects in memory (a restart empties it).

    ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT) make it an endpoint that stops answering and comes
    back with its objects: an outage that keeps the data, as a real store's would.
    """

    name = "moto"
    access_key = "testing-access-key"
    secret_key = "testing-secret-key"

    def __init__(self) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            unavailable("moto[s3] with flask is not installed (pip install -e '.[dev]')")
        super().__init__()

    def command(self) -> Sequence[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def pause(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a stopped process acts on SIGTERM only once continued
        super().terminate()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


KAFKA_POM = Path(__file__).parent / "services/kafka/pom.xml"


def kafka_classpath() -> str:
    """The classpath of the Kafka broker the pom names, resolved by Maven into the user's cache once.

    The jars stay in ``~/.m2``; the resolved list is kept beside them in ``~/.cache/meshconnect``
    under the pom's hash, so later sessions start the broker without running Maven again.
    """
    digest = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:16]
    cached = Path.home() / ".cache/meshconnect" / f"kafka-broker-{digest}.classpath"
    if cached.exists():
        classpath = cached.read_text().strip()
        if all(os.path.exists(jar) for jar in classpath.split(os.pathsep)):
            return classpath
    mvn = require_binary("mvn")
    cached.parent.mkdir(parents=True, exist_ok=True)
    resolving = cached.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:build-classpath", f"-Dmdep.outputFile={resolving}"],
        capture_output=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
        raise RuntimeError(f"mvn could not resolve the Kafka broker of {KAFKA_POM}:\n{output}")
    os.replace(resolving, cached)
    return cached.read_text().strip()


class KafkaServer(ServerProcess):
    """One Apache Kafka node in KRaft mode (broker and controller), PLAINTEXT on loopback.

    The broker comes from Maven Central (``tests/services/kafka/pom.xml``) and runs on Java 17; its
    storage is formatted once in ``prepare``, so a kill and restart keeps topics and messages.
    """

    name = "kafka"

    def __init__(self) -> None:
        self.java = require_binary("java")
        self.classpath = kafka_classpath()
        super().__init__()
        self.controller_port = free_port()

    def _java(self, main: str, *arguments: str) -> list[str]:
        # A small heap, the client compiler and serial GC: the broker is up in seconds on a busy machine.
        options = ["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
        return [self.java, *options, "-cp", self.classpath, main, *arguments]

    def prepare(self) -> None:
        (self.dir / "server.properties").write_text(
            "process.roles=broker,controller\nnode.id=1\n"
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}\n"
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}\n"
            "controller.listener.names=CONTROLLER\ninter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
            f"log.dirs={self.dir / 'data'}\nnum.partitions=1\n"
            "offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\nshare.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n"
        )
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.dir / "server.properties")),
            check=True,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )

    def command(self) -> Sequence[str]:
        return self._java("kafka.Kafka", str(self.dir / "server.properties"))

    def ready(self) -> None:
        wait_for_port(self.port, timeout=90, proc=self.proc)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"
