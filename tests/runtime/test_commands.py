"""The commands as users run them: list, docs, check (with --connect), run, publish, tail, dlq show/replay, completion."""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
import yaml
from cloudevents.core.v1.event import CloudEvent

from runtime import cli
from runtime.client import MeshClient, user_agent_for
from runtime.plugins import load_connector
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.worker.deadletter import dead_letter_event
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def meshconnect(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
        input=stdin,
    )


class Running:
    """A ``meshconnect`` process in the background, its stderr read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stderr: queue.Queue[str] = queue.Queue()
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr.put(line)

    def wait_for_stderr(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._stderr.get(timeout=left)
            except queue.Empty:
                break
            seen.append(line)
            if needle in line:
                return
        raise AssertionError(f"{needle!r} not on stderr within {timeout}s; saw {seen}")

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        stdout, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, stdout


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


def test_a_command_module_that_cannot_be_imported_fails_the_command_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    # A command missing from ``meshconnect --help`` without a word would look like a feature that does not exist.
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "runtime.commands.not_there"))
    with pytest.raises(ModuleNotFoundError, match=r"runtime\.commands\.not_there"):
        cli.build_parser()


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


def test_check_warns_about_a_push_window_that_cannot_keep_a_batch_filling(tmp_path: Path) -> None:
    config = {"name": "files", "connector": "file-sink", "sink": {"topics": ["t"], "batch_size": 800}}
    config["config"] = {"directory": str(tmp_path)}
    result = meshconnect("check", "file-sink", "--config", str(write_config(tmp_path, config)))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr  # the window follows the batch
    config["sink"] = {**config["sink"], "push_window": 1000}
    result = meshconnect("check", "file-sink", "--config", str(write_config(tmp_path, config)))
    assert result.returncode == 0
    assert "warning: sink.push_window 1000 is below twice sink.batch_size 800" in result.stderr
    assert "raise push_window to 1600" in result.stderr


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


def test_an_unusable_spool_directory_is_a_config_error_for_run_and_check(tmp_path: Path) -> None:
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    for spool in (occupied, occupied / "spool"):
        config = {
            "name": "files",
            "connector": "file-sink",
            "mesh": {"address": f"127.0.0.1:{free_port()}"},
            "sink": {"topics": ["t"], "spool": {"path": str(spool)}},
            "config": {"directory": str(tmp_path)},
        }
        path = write_config(tmp_path, config)
        result = meshconnect("check", "file-sink", "--config", str(path))
        assert result.returncode == 2, (spool, result.stdout, result.stderr)
        assert "sink.spool.path" in result.stderr and "writable directory" in result.stderr
        result = meshconnect("run", "file-sink", "--config", str(path))
        assert result.returncode == 2, (spool, result.stdout, result.stderr)
        assert "sink.spool.path" in result.stdout + result.stderr
    good = write_config(tmp_path, {**config, "sink": {"topics": ["t"], "spool": {"path": str(tmp_path / "new" / "spool")}}})
    result = meshconnect("check", "file-sink", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_version_comes_from_the_package_metadata() -> None:
    result = meshconnect("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"meshconnect {version('meshconnect')}"


def test_list_as_json_names_the_extra_a_connector_lacks(tmp_path: Path) -> None:
    # nats-py made uninstallable for the child process: a module of its name that fails to import.
    (tmp_path / "nats").mkdir()
    (tmp_path / "nats" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'nats'\", name='nats')\n")
    hidden = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = meshconnect("list", "--output", "json", env=hidden)
    assert result.returncode == 0, result.stderr
    entries = {entry["name"]: entry for entry in orjson.loads(result.stdout)}
    assert entries["http-source"]["side"] == "source"
    assert entries["file-sink"]["usable"] is True and entries["file-sink"]["problem"] is None
    assert entries["file-sink"]["description"]
    assert entries["nats-sink"]["usable"] is False
    assert "pip install 'meshconnect[nats-sink]'" in entries["nats-sink"]["problem"]
    result = meshconnect("run", "nats-sink", "--config", str(tmp_path / "any.yaml"), env=hidden)
    assert result.returncode == 2
    assert "pip install 'meshconnect[nats-sink]'" in result.stderr


def test_docs_shows_secret_defaults_as_secret_and_prints_the_sample() -> None:
    result = meshconnect("docs", "redis-sink")
    assert result.returncode == 0, result.stderr
    url_row = next(line for line in result.stdout.splitlines() if line.startswith("| `url` |"))
    assert "(secret)" in url_row and "SecretStr" not in result.stdout
    result = meshconnect("docs", "redis-sink", "--sample")
    assert result.returncode == 0, result.stderr
    sample = Path(inspect.getfile(load_connector("redis-sink"))).with_name("config.example.yaml")
    assert result.stdout == sample.read_text()
    assert yaml.safe_load(result.stdout)["connector"] == "redis-sink"


def test_run_and_check_take_the_config_from_meshconnect_config(tmp_path: Path) -> None:
    good = {"name": "files", "connector": "file-sink", "sink": {"topics": ["t"]}, "config": {"directory": str(tmp_path)}}
    result = meshconnect("check", "file-sink", env={"MESHCONNECT_CONFIG": str(write_config(tmp_path, good))})
    assert result.returncode == 0, result.stderr
    assert "valid file-sink config" in result.stdout
    bad = write_config(tmp_path, {**good, "sink": {"batch_size": 0}})
    result = meshconnect("run", "file-sink", env={"MESHCONNECT_CONFIG": str(bad)})
    assert result.returncode == 2
    assert "sink.batch_size" in result.stderr
    result = meshconnect("check", "file-sink", env={"MESHCONNECT_CONFIG": ""})
    assert result.returncode == 2
    assert "--config" in result.stderr


def test_a_missing_config_file_is_reported_as_missing(tmp_path: Path) -> None:
    absent = tmp_path / "nowhere.yaml"
    for command in (("check", "file-sink"), ("run", "file-sink"), ("dlq", "show")):
        result = meshconnect(*command, "--config", str(absent))
        assert result.returncode == 2, command
        assert f"config file {absent}: no such file" in result.stderr, command
        assert "invalid" not in result.stderr and "YAML" not in result.stderr.split("fix:")[0], command


def test_check_warns_of_a_shell_variable_and_names_an_environment_override(tmp_path: Path) -> None:
    config = {"name": "files", "connector": "file-sink", "sink": {"topics": ["t"]}, "config": {"directory": "${OUT_DIR}"}}
    path = write_config(tmp_path, config)
    result = meshconnect("check", "file-sink", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:") and len(result.stdout.splitlines()) == 1  # the warning is not on stdout
    assert "config.directory" in result.stderr and "{env: NAME}" in result.stderr
    assert "MESHCONNECT__SECTION__KEY" in result.stderr
    result = meshconnect("check", "file-sink", "--config", str(path), env={"MESHCONNECT__SINK__BATCH_SIZE": "0"})
    assert result.returncode == 2
    assert "sink.batch_size" in result.stderr
    assert "the environment variable MESHCONNECT__SINK__BATCH_SIZE" in result.stderr


async def _read_clustering(port: int, topic: str, count: int) -> list[str]:
    """The ids of ``count`` events read by the CLUSTERING group "orders" (none: just make the group exist)."""
    async with MeshClient(f"127.0.0.1:{port}", user_agent_for("orders", "sub")) as reader:
        await reader.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        ids: list[str] = []
        if not count:
            return ids
        await reader.listen()
        async with asyncio.timeout(30):
            async for pushed in reader.pushed():
                ids.append(pushed.event.get_id())
                await pushed.ack()
                if len(ids) == count:
                    return ids
    return ids


def test_publish_and_tail_leave_the_connectors_groups_every_event(mesh_port: int) -> None:
    mesh = f"127.0.0.1:{mesh_port}"
    asyncio.run(_read_clustering(mesh_port, "orders", 0))  # a connector's group, away while the events come
    tail = Running("tail", "--mesh", mesh, "--topic", "orders", "--count", "3")
    tail.wait_for_stderr("tailing orders")
    lines = '{"id": "e1", "type": "order.created", "data": {"n": 1}}\nnot json\n{"id": "e2", "data": "two"}\n'
    result = meshconnect("publish", "--mesh", mesh, "--topic", "orders", stdin=lines)
    assert result.returncode == 1  # the line that is no event
    assert result.stdout.splitlines() == ["acked id=e1 topic=orders", "acked id=e2 topic=orders"]
    assert "line 2: not published" in result.stderr
    result = meshconnect("publish", "--mesh", mesh, "--topic", "orders", "--data", "plain words", "--id", "e3", "--type", "note")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "acked id=e3 topic=orders"
    code, stdout = tail.finish()
    assert code == 0
    events = [orjson.loads(line) for line in stdout.splitlines()]
    assert [event["id"] for event in events] == ["e1", "e2", "e3"]
    assert events[0]["type"] == "order.created" and events[0]["data"] == {"n": 1} and events[0]["subject"] == "orders"
    assert events[1]["source"] == "/meshconnect/cli" and events[1]["data"] == "two"
    assert events[2] | {"time": None} == {
        "specversion": "1.0",
        "id": "e3",
        "source": "/meshconnect/cli",
        "type": "note",
        "subject": "orders",
        "datacontenttype": "text/plain",
        "time": None,
        "data": "plain words",
    }
    # The tail's BROADCASTING group took nothing from a CLUSTERING group of the same topic.
    assert sorted(asyncio.run(_read_clustering(mesh_port, "orders", 3))) == ["e1", "e2", "e3"]


def test_tail_stops_on_ctrl_c(mesh_port: int) -> None:
    tail = Running("tail", "--mesh", f"127.0.0.1:{mesh_port}", "--topic", "quiet")
    tail.wait_for_stderr("tailing quiet")
    tail.process.send_signal(signal.SIGINT)
    code, stdout = tail.finish()
    assert code == 0 and stdout == ""


def test_dlq_show_prints_the_reasons_and_leaves_every_dead_letter_for_replay(tmp_path: Path, mesh_port: int) -> None:
    config = {"name": "files", "connector": "file-sink", "mesh": {"address": f"127.0.0.1:{mesh_port}"}}
    path = write_config(tmp_path, config)
    shows: list[subprocess.CompletedProcess[str]] = []

    def show_then_replay() -> subprocess.CompletedProcess[str]:
        shows.append(meshconnect("dlq", "show", "--config", str(path), "--idle", "1.5"))
        shows.append(meshconnect("dlq", "show", "--config", str(path), "--idle", "1.5", "--limit", "1", "--output", "json"))
        return meshconnect("dlq", "replay", "--config", str(path), "--idle", "1.5")

    events = asyncio.run(_dead_letters_then_read_back(mesh_port, show_then_replay))
    assert sorted(event.get_id() for event in events) == ["o0", "o1", "o2"]  # show acknowledged none of them
    text, as_json = shows
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert "topic=orders" in line and "connector=file-sink" in line and "attempts=3" in line
        assert line.endswith("reason=bad")
    assert "shown 3 dead letter(s) from files-dlq" in text.stderr
    assert as_json.returncode == 0, as_json.stderr
    (letter,) = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert letter["dlqreason"] == "bad" and letter["dlqtopic"] == "orders" and letter["subject"] == "files-dlq"


def test_completion_scripts_come_from_the_parser() -> None:
    result = meshconnect("completion", "bash")
    assert result.returncode == 0, result.stderr
    script = (
        f"{result.stdout}\n"
        'COMP_WORDS=(meshconnect dlq s); COMP_CWORD=2; _shtab_meshconnect; echo "${COMPREPLY[@]}"\n'
        'COMP_WORDS=(meshconnect tai); COMP_CWORD=1; _shtab_meshconnect; echo "${COMPREPLY[@]}"\n'
        'COMP_WORDS=(meshconnect run file-s); COMP_CWORD=2; _shtab_meshconnect; echo "${COMPREPLY[@]}"\n'
        'COMP_WORDS=(meshconnect check --config x.yaml redis-si); COMP_CWORD=4; _shtab_meshconnect; echo "${COMPREPLY[@]}"\n'
    )
    completed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert completed.stdout.splitlines() == ["show", "tail", "file-sink file-source", "redis-sink"], completed.stderr
    result = meshconnect("completion", "zsh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#compdef meshconnect")
    assert "publish" in result.stdout and "dlq" in result.stdout
    assert "file-sink file-source" in result.stdout  # the connector names a CONNECTOR argument completes


def test_publish_and_tail_tell_a_bad_address_from_an_absent_mesh() -> None:
    for command in ("publish", "tail"):
        extra = ["--data", "x"] if command == "publish" else []
        result = meshconnect(command, "--mesh", "nowhere", "--topic", "t", *extra)
        assert result.returncode == 2, (command, result.stderr)
        assert "mesh.address" in result.stderr and "host:port" in result.stderr
        port = free_port()
        result = meshconnect(command, "--mesh", f"127.0.0.1:{port}", "--topic", "t", *extra)
        assert result.returncode == 1, (command, result.stderr)
        assert f"cannot connect to the mesh at 127.0.0.1:{port}" in result.stderr


def test_tail_into_head_ends_quietly(mesh_port: int) -> None:
    mesh = f"127.0.0.1:{mesh_port}"
    pipeline = subprocess.Popen(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m runtime.cli tail --mesh {mesh} --topic piped | head -1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    async def publish_until_the_pipeline_ends() -> None:
        async with MeshClient(mesh, user_agent_for("producer", "pub")) as producer, asyncio.timeout(30):
            n = 0
            while pipeline.poll() is None:
                n += 1
                attributes = {"specversion": "1.0", "id": f"p{n}", "source": "/s", "type": "t", "subject": "piped"}
                await producer.publish(CloudEvent(attributes))
                await asyncio.sleep(0.1)

    asyncio.run(publish_until_the_pipeline_ends())
    stdout, stderr = pipeline.communicate(timeout=10)
    assert pipeline.returncode == 0, stderr
    assert orjson.loads(stdout)["id"] == "p1"
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
