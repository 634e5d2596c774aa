"""``meshconnect mesh``: options, users file, graceful SIGTERM, refusal of bad settings."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.protocol.frames import Command, Header, Package
from tests.mesh.process import MeshProcess
from tests.mesh.wire import Peer, user_agent


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text("alice: s3cret\nbob: 1234\n", encoding="utf-8")
    return path


@pytest.fixture
def mesh_with_users(tmp_path: Path, users_file: Path) -> Iterator[MeshProcess]:
    process = MeshProcess(tmp_path, extra_args=["--users", str(users_file), "--session-timeout", "30"])
    process.start()
    yield process
    process.ensure_stopped()


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "mesh", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_says_it_is_a_development_stand_in() -> None:
    result = run_command("--help")
    assert result.returncode == 0
    assert "development and test stand-in" in result.stdout
    assert "Apache EventMesh runtime" in result.stdout


async def test_users_file_is_enforced_and_sigterm_says_goodbye(mesh_with_users: MeshProcess) -> None:
    peer = await Peer.connect(mesh_with_users.port)
    refused = await peer.request(
        Package.with_json(
            Header(Command.HELLO_REQUEST, seq=peer.seq()), user_agent(username="bob", password="s3cret").json_fields()
        )
    )
    assert refused.header.code == 1
    await peer.closed_within()
    peer = await Peer.hello(mesh_with_users.port, username="bob", password="1234")
    assert mesh_with_users.terminate() == 0
    goodbye = await peer.closed_within()
    assert [(p.header.command, p.header.code) for p in goodbye] == [(Command.SERVER_GOODBYE_REQUEST, 0)]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--redelivery-timeout", "0"], "redelivery_timeout"),
        (["--max-topic-events", "0"], "max_topic_events"),
        (["--group-expiry", "-1"], "group_expiry"),
        (["--max-topics", "0"], "max_topics"),
        (["--hello-timeout", "0"], "hello_timeout"),
        (["--max-bytes-before-hello", "100"], "max_bytes_before_hello"),
        (["--max-retained-bytes", "0"], "max_retained_bytes"),
        (["--max-incomplete-frame-bytes", "1024"], "max_incomplete_frame_bytes"),
        (["--users", "/nonexistent/users.yaml"], "--users"),
    ],
)
def test_bad_settings_exit_2_naming_the_key(args: list[str], key: str) -> None:
    result = run_command("--port", "0", *args)
    assert result.returncode == 2
    assert key in result.stderr + result.stdout
