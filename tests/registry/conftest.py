"""Fixtures: every store under test, each in a fresh namespace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.registry import Registry
from runtime.registry.file import FileRegistry


@pytest.fixture(params=["file"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    store: Registry = FileRegistry(tmp_path / "state")
    yield store
    await store.close()


@pytest.fixture
def connector() -> str:
    return f"orders-{uuid.uuid4().hex[:8]}"
