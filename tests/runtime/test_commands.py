"""The connector commands as users run them: list, check (with --connect), dlq replay, run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudevents.core.v1.event import CloudEvent

from runtime.client import MeshClient, user_agent_for
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.worker.deadletter import dead_letter_event
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def meshconnect(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def mesh_port() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.commands.mesh", "--port", str(port), "--log-level", "error"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc=process)
    yield port
    process.terminate()
    process.wait(15)


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_list_shows_the_registered_connectors() -> None:
    result = meshconnect("list")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "http-source" in lines and "file-sink" in lines
    assert "source" in lines["http-source"]


def test_check_accepts_a_valid_config_and_names_the_key_of_a_bad_one(tmp_path: Path) -> None:
    good = {"name": "files", "connector": "file-sink", "sink": {"topics": ["t"]}, "config": {"directory": str(tmp_path)}}
    result = meshconnect("check", "file-sink", "--config", str(write_config(tmp_path, good)))
    assert result.returncode == 0, result.stderr
    assert "valid file-sink config" in result.stdout
    bad = {**good, "config": {"directory": str(tmp_path), "max_bytes": 0}}
    result = meshconnect("check", "file-sink", "--config", str(write_config(tmp_path, bad)))
    assert result.returncode == 2
    assert "config.max_bytes" in result.stderr and "fix:" in result.stderr
    result = meshconnect("check", "no-such-sink", "--config", str(write_config(tmp_path, good)))
    assert result.returncode == 2
    assert "meshconnect list" in result.stderr


def test_check_connect_shows_the_first_records_of_a_source(tmp_path: Path, mesh_port: int) -> None:
    lines = tmp_path / "in.log"
    lines.write_text("first line\nsecond line\n")
    config = {
        "name": "tail",
        "connector": "file-source",
        "mesh": {"address": f"127.0.0.1:{mesh_port}"},
        "source": {"topic": "lines"},
        "registry": {"kind": "file", "path": str(tmp_path / "state")},
        "config": {"paths": [str(lines)]},
    }
    result = meshconnect("check", "file-source", "--config", str(write_config(tmp_path, config)), "--connect")
    assert result.returncode == 0, result.stderr
    assert f"mesh 127.0.0.1:{mesh_port} accepted the handshake" in result.stdout
    assert "record 1:" in result.stdout and "first line" in result.stdout
    assert "nothing published or committed" in result.stdout


def test_check_connect_fails_clearly_without_a_mesh(tmp_path: Path) -> None:
    config = {
        "name": "files",
        "connector": "file-sink",
        "mesh": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 1, "request_timeout": 1},
        "sink": {"topics": ["t"]},
        "config": {"directory": str(tmp_path)},
    }
    result = meshconnect("check", "file-sink", "--config", str(write_config(tmp_path, config)), "--connect")
    assert result.returncode == 1
    assert "connection check failed" in result.stderr


async def _dead_letters_then_read_back(port: int, run_replay: Any) -> list[CloudEvent]:
    address = f"127.0.0.1:{port}"
    async with MeshClient(address, user_agent_for("producer", "pub")) as producer:
        for n in range(3):
            original = CloudEvent(
                {"specversion": "1.0", "id": f"o{n}", "source": "/s", "type": "t", "subject": "orders", "colour": "red"},
                {"n": n},
            )
            await producer.publish(
                dead_letter_event(original, topic="files-dlq", reason="bad", connector="file-sink", attempts=3)
            )
    assert (await asyncio.to_thread(run_replay)).returncode == 0
    got: list[CloudEvent] = []
    async with MeshClient(address, user_agent_for("reader", "sub")) as reader:
        await reader.subscribe("orders", SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        await reader.listen()
        async with asyncio.timeout(20):
            async for pushed in reader.pushed():
                got.append(pushed.event)
                await pushed.ack()
                if len(got) == 3:
                    break
    return got


def test_dlq_replay_republishes_to_the_original_topic(tmp_path: Path, mesh_port: int) -> None:
    config = {
        "name": "files",
        "connector": "file-sink",
        "mesh": {"address": f"127.0.0.1:{mesh_port}"},
        "sink": {"topics": ["orders"]},
    }
    path = write_config(tmp_path, config)
    outputs: list[subprocess.CompletedProcess[str]] = []

    def run_replay() -> subprocess.CompletedProcess[str]:
        outputs.append(meshconnect("dlq", "replay", "--config", str(path), "--idle", "1.5"))
        return outputs[-1]

    events = asyncio.run(_dead_letters_then_read_back(mesh_port, run_replay))
    assert "replayed 3 event(s) from files-dlq" in outputs[0].stdout
    assert sorted(event.get_id() for event in events) == ["o0", "o1", "o2"]
    for event in events:
        assert event.get_subject() == "orders"
        assert event.get_extension("colour") == "red"
        assert not [name for name in event.get_attributes() if name.startswith("dlq")]


def test_run_refuses_a_bad_config_with_exit_code_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"name": "x", "connector": "file-sink", "sink": {"batch_size": 0}})
    result = meshconnect("run", "file-sink", "--config", str(path))
    assert result.returncode == 2
    assert "sink.batch_size" in result.stderr
