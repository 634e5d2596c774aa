"""The config loader: our layout, environment overrides, error messages, the Java layout, secrets."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
import structlog
from pydantic import Field

from runtime.config import ConfigFileError, ConnectorConfig, LogSettings, Secret, connector_config, load_config
from runtime.errors import ConfigError
from runtime.observability import configure_logging


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(text)
    return path


class TableConfig(ConnectorConfig):
    table: str = Field(description="Target table name.")
    mode: str = Field("events", pattern="^(events|mapped)$", description="events or mapped.")
    password: Secret | None = Field(None, description="Database password.")


def test_our_layout_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "name: orders\nconnector: mysql-sink\nsink: {topics: [orders], batch_size: 10}\n"))
    assert config.name == "orders"
    assert config.sink.topics == ["orders"]
    assert config.sink.batch_size == 10
    assert config.sink.linger_ms == 50


def test_environment_overrides_nested_keys_as_yaml_scalars(tmp_path: Path) -> None:
    path = write(tmp_path, "name: orders\nconnector: mysql-sink\nconfig: {table: t, dsn: x}\n")
    environ = {
        "MESHCONNECT__SINK__BATCH_SIZE": "1000",
        "MESHCONNECT__MESH__TLS": "true",
        "MESHCONNECT__CONFIG__TABLE": "orders_v2",
        "MESHCONNECT__SINK__TOPICS": "[a, b]",
        "UNRELATED": "1",
    }
    config = load_config(path, environ=environ)
    assert config.sink.batch_size == 1000
    assert config.mesh.tls is True
    assert config.sink.topics == ["a", "b"]
    assert config.config == {"table": "orders_v2", "dsn": "x"}


def test_unknown_key_names_the_key_and_suggests_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "name: a\nconnector: mysql-sink\nsink: {batch_sise: 3}\n"))
    assert caught.value.key == "sink.batch_sise"
    assert "did you mean 'batch_size'" in caught.value.fix


def test_bad_value_names_problem_and_fix_from_the_description(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "name: a\nconnector: mysql-sink\nsink: {linger_ms: -5}\n"))
    assert caught.value.key == "sink.linger_ms"
    assert "greater than or equal to 0" in caught.value.problem
    assert "Wait this long for a batch to fill" in caught.value.fix


def test_literal_lists_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "name: a\nconnector: x-sink\nregistry: {kind: etcd}\n"))
    assert caught.value.key == "registry.kind"
    assert "'redis'" in caught.value.fix and "'file'" in caught.value.fix


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "connector: x-sink\n"))
    assert caught.value.key == "name"
    assert "Instance name" in caught.value.fix


def test_connector_block_is_validated_by_its_model(tmp_path: Path) -> None:
    worker = load_config(write(tmp_path, "name: a\nconnector: x-sink\nconfig: {mode: other}\n"))
    with pytest.raises(ConfigError) as caught:
        connector_config(TableConfig, worker)
    assert caught.value.key == "config.table"
    assert "Target table name" in caught.value.fix
    assert "config.mode" in str(caught.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file") as caught:
        load_config(tmp_path / "absent.yaml")
    assert str(caught.value).startswith(f"config file {tmp_path / 'absent.yaml'}: no such file")
    with pytest.raises(ConfigFileError, match="cannot be read"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"))


def test_connector_argument_must_agree_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nconnector: mysql-sink\n")
    assert load_config(path, connector="mysql-sink").connector == "mysql-sink"
    with pytest.raises(ConfigError) as caught:
        load_config(path, connector="http-sink")
    assert caught.value.key == "connector"


JAVA_SOURCE = """
pubSubConfig:
  meshAddress: 127.0.0.1:10000
  subject: TopicTest
  idc: FT
  env: PRD
  group: rocketmqSource
  appId: 5032
  userName: rocketmqSourceUser
  passWord: rocketmqPassWord
connectorConfig:
  connectorName: rocketmqSource
  table: orders
offsetStorageConfig:
  offsetStorageType: nacos
  offsetStorageAddr: 127.0.0.1:8848
pollConfig: {capacity: 1024, maxBatchSize: 10, maxWaitTime: 5000}
"""


def test_java_source_layout_is_mapped_with_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, JAVA_SOURCE)
    with structlog.testing.capture_logs() as logs:
        config = load_config(path, connector="rocketmq-source")
    assert config.name == "rocketmqSource"
    assert config.mesh.address == "127.0.0.1:10000"
    assert config.mesh.group == "rocketmqSource"
    assert config.mesh.subsystem == "5032"
    assert config.mesh.username == "rocketmqSourceUser"
    assert config.mesh.password is not None and config.mesh.password.get_secret_value() == "rocketmqPassWord"
    assert (config.mesh.idc, config.mesh.env) == ("FT", "PRD")
    assert config.source.topic == "TopicTest"
    assert config.source.poll_queue == 1024
    assert config.config == {"table": "orders"}
    warned = {entry["key"] for entry in logs if entry["log_level"] == "warning"}
    assert warned == {"offsetStorageConfig", "pollConfig.maxBatchSize", "pollConfig.maxWaitTime"}


def test_java_sink_layout_maps_subject_to_topics(tmp_path: Path) -> None:
    text = "pubSubConfig: {meshAddress: 'h:1', subject: T, group: g}\nsinkConnectorConfig: {table: x}\n"
    text += "pollConfig: {maxBatchSize: 10, maxWaitTime: 20}\nsinkEnable: true\n"
    with structlog.testing.capture_logs() as logs:
        config = load_config(write(tmp_path, text), connector="mysql-sink")
    assert config.sink.topics == ["T"]
    assert (config.sink.batch_size, config.sink.linger_ms) == (10, 20)
    assert config.name == "g"
    assert config.config == {"table": "x"}
    assert any(entry.get("key") == "sinkEnable" for entry in logs)


def test_java_layout_without_connector_type_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, JAVA_SOURCE))
    assert caught.value.key == "connector"
    assert "connector:" in caught.value.fix


def test_secrets_from_env_and_file_are_never_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("file-secret-42\n")
    text = f"name: a\nconnector: x-sink\nmesh: {{password: {{env: MC_TEST_PW}}, token: {{file: {secret_file}}}}}\n"
    text += (
        "registry: {kind: redis, url: 'redis://user:url-secret-7@127.0.0.1:6379/0'}\nconfig: {table: t, password: cfg-secret-9}\n"
    )
    monkeypatch.setenv("MC_TEST_PW", "env-secret-13")
    config = load_config(write(tmp_path, text))
    assert config.mesh.password is not None and config.mesh.password.get_secret_value() == "env-secret-13"
    assert config.mesh.token is not None and config.mesh.token.get_secret_value() == "file-secret-42"
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)
    try:
        log = structlog.get_logger()
        log.info("config", config=config.model_dump(), raw=config.config, dsn="postgres://u:dsn-secret-1@h/db")
        log.info("connecting", password="plain-secret-2", api_key="key-secret-3")
    finally:
        structlog.reset_defaults()
    text_out = out.getvalue()
    for secret in (
        "env-secret-13",
        "file-secret-42",
        "url-secret-7",
        "cfg-secret-9",
        "dsn-secret-1",
        "plain-secret-2",
        "key-secret-3",
    ):
        assert secret not in text_out
    first = orjson.loads(text_out.splitlines()[0])
    assert first["config"]["name"] == "a"
    assert first["config"]["registry"]["url"] == "**********"
    assert first["dsn"] == "postgres://u:**********@h/db"


def test_missing_secret_env_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "name: a\nconnector: x-sink\nmesh: {password: {env: MC_SURELY_UNSET_VAR}}\n"))
    assert caught.value.key == "mesh.password"
    assert "MC_SURELY_UNSET_VAR is not set" in caught.value.problem


def test_a_shell_variable_in_a_value_is_warned_about_with_how_env_works_here(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nconnector: mysql-sink\nmesh: {address: '${MESH}:10000'}\nconfig: {hosts: [db, '${DB}']}\n")
    with structlog.testing.capture_logs() as logs:
        load_config(path, environ={})
    warned = {entry["key"]: entry for entry in logs if entry["log_level"] == "warning"}
    assert set(warned) == {"mesh.address", "config.hosts.1"}
    fix = warned["mesh.address"]["fix"]
    assert "{env: NAME}" in fix and "{file: PATH}" in fix and "MESHCONNECT__SECTION__KEY" in fix


def test_an_error_in_a_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\nconnector: mysql-sink\nsink: {batch_size: 5}\nconfig: {table: t}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"MESHCONNECT__SINK__BATCH_SIZE": "0"})
    assert caught.value.key == "sink.batch_size"
    assert "came from the environment variable MESHCONNECT__SINK__BATCH_SIZE" in str(caught.value)
    config = load_config(path, environ={"MESHCONNECT__CONFIG__MODE": "sideways"})
    with pytest.raises(ConfigError) as caught:
        connector_config(TableConfig, config)
    assert caught.value.key == "config.mode"
    assert "MESHCONNECT__CONFIG__MODE" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        connector_config(
            TableConfig, load_config(write(tmp_path, "name: a\nconnector: mysql-sink\nconfig: {table: t, mode: x}\n"), environ={})
        )
    assert "environment" not in str(caught.value)
