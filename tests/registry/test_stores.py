"""What is particular to each store: Redis auth, outage and key layout; file store shared by processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from runtime.config import RegistrySettings
from runtime.errors import ConfigError, RegistryUnavailableError
from runtime.registry.file import FileRegistry
from runtime.registry.redis import RedisRegistry
from tests.servers import RedisServer, free_port, require_binary


async def test_keys_live_under_the_prefix_with_the_connector_as_hash_tag(redis_server: RedisServer) -> None:
    registry = RedisRegistry(redis_server.url, prefix="layout")
    try:
        lease = await registry.try_acquire("orders", "g0", "a", 30)
        assert lease is not None
        await registry.commit_offsets("orders", {"p": {"n": 1}}, lease)
        await registry.heartbeat_member("orders", "a", 30, {"pid": 1})
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        keys = sorted(await client.keys("layout:*"))
        await client.aclose()
        assert keys == [
            "layout:connectors",
            "layout:{orders}:lease:g0",
            "layout:{orders}:member-info",
            "layout:{orders}:members",
            "layout:{orders}:offsets",
            "layout:{orders}:tokens",
            "layout:{orders}:versions",
        ]
        assert await registry.delete_connector("orders") == 6
    finally:
        await registry.close()


async def test_a_password_protected_redis_and_no_password_in_errors() -> None:
    server = RedisServer.running(password="s3cret-pw")
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        for registry in (
            RedisRegistry.from_settings(RegistrySettings(kind="redis", url=server.url, prefix="auth")),
            RedisRegistry(url, prefix="auth", password="s3cret-pw"),
        ):
            assert await registry.load_offsets("orders") == {}
            assert "s3cret" not in repr(registry)
            await registry.close()
        wrong = RedisRegistry(f"redis://:wrong-pw@127.0.0.1:{server.port}/0", prefix="auth")
        with pytest.raises(RegistryUnavailableError) as refused:
            await wrong.load_offsets("orders")
        assert "wrong-pw" not in str(refused.value)
        await wrong.close()
    finally:
        server.stop()


class TlsRedisServer(RedisServer):
    """Redis listening with TLS only, on a self-signed certificate for 127.0.0.1."""

    def prepare(self) -> None:
        subprocess.run(
            [
                *(require_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem")),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )

    def command(self) -> Sequence[str]:
        command = list(super().command())
        command[command.index("--port") + 1] = "0"
        tls = ["--tls-port", str(self.port), "--tls-auth-clients", "no"]
        files = ["--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem", "--tls-ca-cert-file", "cert.pem"]
        return [*command, *tls, *files]


async def test_rediss_with_a_ca_from_the_url() -> None:
    server = TlsRedisServer.running()
    try:
        ca = server.dir / "cert.pem"
        registry = RedisRegistry(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca}", prefix="tls")
        lease = await registry.try_acquire("orders", "g0", "a", 30)
        assert lease is not None
        await registry.commit_offsets("orders", {"p": {"n": 1}}, lease)
        assert await registry.load_offsets("orders") == {"p": {"n": 1}}
        await registry.close()
        untrusting = RedisRegistry(f"rediss://127.0.0.1:{server.port}/0", prefix="tls", timeout=1)
        with pytest.raises(RegistryUnavailableError):  # the self-signed certificate is not trusted by default
            await untrusting.load_offsets("orders")
        await untrusting.close()
    finally:
        server.stop()


async def test_an_unreachable_redis_fails_fast_with_a_retriable_error() -> None:
    registry = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        await registry.try_acquire("orders", "g0", "a", 1)
    assert time.monotonic() - started < 5
    await registry.close()


def test_bad_names_and_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"registry\.url"):
        RedisRegistry("http://localhost:6379")
    with pytest.raises(ConfigError, match=r"registry\.url"):
        RedisRegistry.from_settings(RegistrySettings(kind="redis"))
    with pytest.raises(ConfigError, match=r"registry\.prefix"):
        RedisRegistry("redis://localhost:6379", prefix="a b")


CONTENDER = """
import asyncio, os, sys, time
from runtime.errors import FencedError
from runtime.registry.file import FileRegistry

async def main():
    registry = FileRegistry(sys.argv[1])
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):  # all contenders start together, however slow their start-up
        await asyncio.sleep(0.005)
    tokens, give_up = set(), time.monotonic() + 20
    while len(tokens) < 8 and time.monotonic() < give_up:
        lease = await registry.try_acquire("orders", "g0", sys.argv[2], 0.02)
        if lease is None:
            continue
        tokens.add(lease.token)
        try:
            await registry.commit_offsets("orders", {"p": {"token": lease.token}}, lease)
            print("committed", lease.token, sys.argv[2], flush=True)
        except FencedError:  # the 20 ms lease expired before the commit: refused, as it must be
            print("fenced", lease.token, sys.argv[2], flush=True)
        await asyncio.sleep(0.03)  # let the lease lapse, so the next one is a new lease for someone

asyncio.run(main())
"""


def test_processes_sharing_a_state_directory_never_get_the_same_token(tmp_path: Path) -> None:
    state, start = tmp_path / "state", tmp_path / "go"
    contenders = [
        subprocess.Popen([sys.executable, "-c", CONTENDER, str(state), f"p{i}", str(start)], stdout=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    for proc in contenders:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    start.touch()
    outcomes = [line.split() for proc in contenders for line in proc.communicate(timeout=60)[0].splitlines()]
    assert all(proc.returncode == 0 for proc in contenders)
    holders = {(int(token), holder) for _, token, holder in outcomes}
    tokens = sorted(token for token, _ in holders)
    assert len(tokens) > 20
    # A holder that still holds its lease gets the same token back; no two holders ever share one.
    assert tokens == list(range(1, len(tokens) + 1)), "every token issued to one holder, none skipped"
    committed = [int(token) for outcome, token, _ in outcomes if outcome == "committed"]
    stored = asyncio.run(FileRegistry(state).load_offsets("orders"))
    assert stored == {"p": {"token": max(committed)}}, "the newest lease's commit is the one that stays"


async def test_a_connector_name_cannot_escape_its_namespace(tmp_path: Path, redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError):
        await FileRegistry(tmp_path / "state").delete_connector("..")
    assert await FileRegistry(tmp_path / "state").load_offsets("a/../b") == {}
    assert not (tmp_path / "state").exists(), "a read creates nothing"
    registry = RedisRegistry(redis_server.url, prefix="names")
    with pytest.raises(ConfigError):
        await registry.load_offsets("x}:{y")
    await registry.close()
