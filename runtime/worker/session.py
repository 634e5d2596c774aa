"""The worker's mesh sessions: the client built from the config, opened with retries, watched for /readyz."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from runtime.client import MeshClient
from runtime.config import WorkerConfig
from runtime.errors import RetriableError
from runtime.observability import StatusBoard
from runtime.worker.retry import Backoff, retry_retriable

__all__ = ["build_client", "mesh_session"]


def build_client(config: WorkerConfig, purpose: Literal["pub", "sub"]) -> MeshClient:
    """A :class:`MeshClient` for ``config.mesh``, in the group ``mesh.group`` or else the instance name; a
    subscriber asks the sink's push window (see ``SinkSettings.effective_push_window``)."""
    push_window = config.sink.effective_push_window if purpose == "sub" else None
    return MeshClient.from_settings(config.mesh, group=config.name, purpose=purpose, push_window=push_window)


@contextlib.asynccontextmanager
async def mesh_session(
    config: WorkerConfig, purpose: Literal["pub", "sub"], board: StatusBoard, stop: asyncio.Event, *, watch: bool = True
) -> AsyncIterator[MeshClient]:
    """An open client (retrying the first connect with backoff); ``watch`` keeps ``board.mesh_connected`` current."""
    backoff = Backoff(0.2, 5.0)

    def failed(exc: RetriableError) -> None:
        if watch:
            board.set_mesh(False)

    async def connect() -> MeshClient:
        client = build_client(config, purpose)
        await client.start()
        return client

    client = await retry_retriable(connect, what=f"mesh {config.mesh.address}", backoff=backoff, stop=stop, on_failure=failed)

    def track(_state: object) -> None:
        board.set_mesh(client.connected)

    if watch:
        track(client.state)
        client.add_state_listener(track)
    try:
        yield client
    finally:
        if watch:
            client.remove_state_listener(track)
            board.set_mesh(False)
        await client.aclose()
