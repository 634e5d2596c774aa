"""Shared fixtures: throwaway servers (one per test session, restartable) and the embedded mesh."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import KafkaServer, MariaDBServer, MosquittoServer, NatsServer, PostgresServer, RedisClusterSetup, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer.running()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterSetup]:
    """Three primaries with a replica each; tests that fail a node over start a cluster of their own."""
    cluster = RedisClusterSetup()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    server = MariaDBServer.running()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[MosquittoServer]:
    server = MosquittoServer.running()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer.running()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.running()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    server = KafkaServer.running()
    yield server  # type: ignore[misc]
    server.stop()
