"""The Java servers, resolved from Maven Central by the pom beside their tests: Kafka and Pulsar."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

from tests.servers.process import ServerProcess, free_port, make_tls_files, require_binary, unavailable, wait_for_port

__all__ = ["KafkaServer", "PulsarServer", "kafka_classpath", "pulsar_classpath"]


KAFKA_POM = Path(__file__).parents[1] / "services/kafka/pom.xml"


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
        # Written as --cluster-id=...: an id that starts with "-" (one in 32 of them) would read as an option.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        subprocess.run(
            self._java(
                "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(self.dir / "server.properties")
            ),
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


_PULSAR_POM = Path(__file__).parents[1] / "services" / "pulsar" / "pom.xml"
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
