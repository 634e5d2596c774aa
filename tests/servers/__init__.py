"""Throwaway server processes for tests: each in its own temp dir, on a free loopback port.

Every server can be killed (SIGKILL) and restarted on the same port and data dir, for fault tests.
Under ``CI=true`` a missing binary fails the test; elsewhere it skips it.

    process.py        the restartable process base and the helpers (ports, binaries, certificates)
    redis_servers.py  Redis: a server, a Sentinel set-up, a Cluster
    sql.py            MariaDB and PostgreSQL
    brokers.py        Mosquitto and NATS
    s3.py             moto's S3 endpoint
    maven.py          the Java servers resolved with Maven: Kafka and Pulsar
"""

from tests.servers.brokers import MosquittoServer, NatsServer
from tests.servers.maven import KafkaServer, PulsarServer
from tests.servers.process import ServerProcess, free_port, make_tls_files, require_binary, unavailable, wait_for_port
from tests.servers.redis_servers import RedisClusterNode, RedisClusterSetup, RedisSentinelSetup, RedisServer
from tests.servers.s3 import MotoS3Server
from tests.servers.sql import MariaDBServer, PostgresServer

__all__ = [
    "KafkaServer",
    "MariaDBServer",
    "MosquittoServer",
    "MotoS3Server",
    "NatsServer",
    "PostgresServer",
    "PulsarServer",
    "RedisClusterNode",
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
