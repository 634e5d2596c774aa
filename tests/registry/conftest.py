"""Fixtures: every store under test, each in a fresh namespace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.registry import Registry
from runtime.registry.file import FileRegistry
from runtime.registry.redis import RedisRegistry
from tests.servers import RedisClusterSetup, RedisServer


@pytest.fixture(params=["file", "redis", "redis-cluster"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    store: Registry
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisRegistry(server.url, prefix=f"test-{uuid.uuid4().hex[:8]}")
    elif request.param == "redis-cluster":
        cluster: RedisClusterSetup = request.getfixturevalue("redis_cluster")
        store = RedisRegistry(cluster.url, prefix=f"test-{uuid.uuid4().hex[:8]}")
    else:
        store = FileRegistry(tmp_path / "state")
    yield store
    await store.close()


@pytest.fixture
def connector() -> str:
    return f"orders-{uuid.uuid4().hex[:8]}"
