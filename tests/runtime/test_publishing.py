"""Which topics a source's input may name, and the refusal of a source config that leaves events without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from cloudevents.core.v1.event import CloudEvent

from runtime.mesh import EmbeddedMesh
from runtime.protocol.events import body_to_event
from runtime.publishing import PublishRules
from runtime.record import ConnectorRecord
from runtime.testing import WorkerProcess
from runtime.worker.deadletter import record_dead_letter_event
from services.file_source.connector import FileSource
from tests.runtime.test_worker import eventually
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("subject", "permitted"),
    [
        ("webhooks", True),  # the configured topic
        ("orders", True),  # an exact name
        ("audit.eu", True),  # a glob
        ("audit.eu.created", True),  # '*' crosses dots
        ("cdc.shop.orders", False),
        ("orders.v2", False),  # an exact name is not a prefix
        ("Orders", False),  # case-sensitive
        ("audit", False),
        ("", False),
    ],
)
def test_input_may_name_the_configured_topic_and_the_allowed_ones_only(subject: str, permitted: bool) -> None:
    rules = PublishRules(topic="webhooks", allowed_topics=("orders", "audit.*"))
    assert rules.permits(subject) is permitted
    assert (rules.refusal(subject) is None) is permitted


def test_without_allowed_topics_only_the_configured_topic_may_be_named() -> None:
    rules = PublishRules(topic="webhooks")
    assert rules.refusal(None) is None and rules.refusal("webhooks") is None
    assert "not allowed" in (rules.refusal("orders") or "")


def test_a_dead_letter_for_a_record_without_a_topic_can_be_built() -> None:
    """The worker crashed here: the dead letter of a record that named no topic got an empty subject."""
    event = record_dead_letter_event(
        ConnectorRecord(data={"a": 1}, partition={"p": 1}, offset={"n": 1}),
        event_id="e-1",
        topic="x-dlq",
        reason="no topic",
        connector="http-source",
        default_source="/s",
        original_topic="",
    )
    assert event.get_subject() == "x-dlq" and event.get_extension("dlqtopic") == ""


def _meshconnect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def _write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_check_and_run_refuse_a_source_whose_events_could_have_no_topic(tmp_path: Path) -> None:
    admin = {"host": "127.0.0.1", "port": free_port()}
    config = {"name": "hooks", "connector": "http-source", "admin": admin, "config": {"port": free_port()}}
    for command in ("check", "run"):
        result = _meshconnect(command, "http-source", "--config", _write(tmp_path, config))
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "source.topic" in result.stderr and "fix" in result.stderr
    result = _meshconnect("check", "http-source", "--config", _write(tmp_path, {**config, "source": {"topic": "hooks"}}))
    assert result.returncode == 0, result.stderr
    # mysql-source names every event's topic from its own config (topic_template): no source.topic needed.
    cdc = {"name": "cdc", "connector": "mysql-source", "config": {"server_name": "shop"}}
    result = _meshconnect("check", "mysql-source", "--config", _write(tmp_path, cdc))
    assert result.returncode == 0, result.stderr


def _structured(n: int, subject: str | None) -> bytes:
    event: dict[str, Any] = {"specversion": "1.0", "id": f"line-{n}", "source": "/lines", "type": "t", "data": {"n": n}}
    if subject is not None:
        event["subject"] = subject
    return orjson.dumps(event)


async def test_a_queue_source_dead_letters_an_event_naming_a_topic_not_allowed(tmp_path: Path) -> None:
    """file-source reads structured CloudEvents; the subject a line names is input, checked like a ce-subject."""
    lines = tmp_path / "in.jsonl"
    subjects = [None, "audit.eu", "cdc.shop.orders", "lines"]
    lines.write_bytes(b"".join(_structured(n, subject) + b"\n" for n, subject in enumerate(subjects)))
    mesh = EmbeddedMesh(port=0)
    await mesh.start()
    config = {
        "name": "tail",
        "connector": "file-source",
        "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
        "source": {"topic": "lines", "allowed_topics": ["audit.*"], "checkpoint_interval": 0.2},
        "registry": {"kind": "file", "path": str(tmp_path / "registry")},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "config": {"paths": [str(lines)], "format": "cloudevents"},
    }
    worker = WorkerProcess(FileSource, config, tmp_path)
    try:
        await worker.start(30)
        await eventually(lambda: mesh.topic_depth("tail-dlq") + mesh.topic_depth("lines") + mesh.topic_depth("audit.eu") >= 4)
        assert mesh.topic_depth("cdc.shop.orders") == 0
        assert (mesh.topic_depth("lines"), mesh.topic_depth("audit.eu"), mesh.topic_depth("tail-dlq")) == (2, 1, 1)
        [body] = mesh.broker.topics["tail-dlq"].events.values()
        dead: CloudEvent = body_to_event(body)
        reason = str(dead.get_extension("dlqreason"))
        assert "'cdc.shop.orders'" in reason and "not allowed" in reason
        assert dead.get_extension("dlqtopic") == "lines"  # a replay goes to the configured topic, never the one asked for
        assert await worker.terminate(30) == 0
    finally:
        await worker.kill()
        await mesh.stop()
