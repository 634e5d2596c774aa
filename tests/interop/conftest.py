from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.mesh import EmbeddedMesh
from tests.interop.sdk import build_peer


@pytest.fixture(scope="session")
def java_classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Java SDK peer, resolved and compiled once per session."""
    return build_peer(tmp_path_factory.mktemp("java-peer"))


@pytest.fixture
async def mesh() -> AsyncIterator[EmbeddedMesh]:
    server = EmbeddedMesh(port=0, redelivery_timeout=5.0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path
