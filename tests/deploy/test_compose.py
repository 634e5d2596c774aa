"""docker-compose.yml: valid against the compose specification, one service per connector, each runnable."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.layout import (
    PLANNED,
    ROOT,
    Connector,
    connector_ids,
    registered_connectors,
    require_tool,
    resolve_config,
    run,
)

CONNECTORS = registered_connectors()
INFRASTRUCTURE = {
    "eventmesh", "redis", "mysql", "postgres", "rabbitmq", "mosquitto", "nats", "kafka", "pulsar", "prometheus", "minio",
}  # fmt: skip
CONFIG_MOUNT = "/etc/meshconnect/config.yaml"


def target_down_job_pattern() -> str:
    """The job regex of the MeshconnectTargetDown alert (`up{job=~"..."} == 0`)."""
    rules = yaml.safe_load((ROOT / "deploy" / "monitoring" / "alerts.yaml").read_text())
    (expr,) = [rule["expr"] for group in rules["groups"] for rule in group["rules"] if rule["alert"] == "MeshconnectTargetDown"]
    match = re.search(r'up\{job=~"([^"]+)"\}', expr)
    assert match, expr
    return match.group(1)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose understands it: anchors merged, variables at their defaults."""
    docker_compose = require_tool("docker-compose")
    rendered: dict[str, Any] = yaml.safe_load(run([docker_compose, "--file", "docker-compose.yml", "config"]))
    return rendered


def connector_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if name not in INFRASTRUCTURE}


def built_connector(service: dict[str, Any]) -> str:
    return str(service["build"]["args"]["CONNECTOR"])


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of the service's volumes, in the short form compose 1.29 prints or the long form of v2."""
    result = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *_mode = volume.split(":")
        else:
            source, target = volume["source"], volume["target"]
        result[target] = source
    return result


def mounted_config(service: dict[str, Any]) -> Path:
    return Path(mounts(service)[CONFIG_MOUNT])


def test_compose_file_is_valid() -> None:
    run([require_tool("docker-compose"), "--file", "docker-compose.yml", "config", "--quiet"])


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: a service with an unknown key is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  app:\n    image: redis\n    restart_policy: always\n")
    result = subprocess.run(
        [require_tool("docker-compose"), "--file", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "restart_policy" in result.stderr


def test_every_connector_service_builds_a_known_connector_from_its_sample(compose: dict[str, Any]) -> None:
    registered = {connector.name: connector for connector in CONNECTORS}
    for name, service in connector_services(compose).items():
        connector = built_connector(service)
        assert connector in PLANNED | registered.keys(), f"service {name} builds unknown connector {connector}"
        if connector not in registered:
            continue  # planned, not written yet: nothing to run
        config = mounted_config(service)
        assert config == registered[connector].sample, f"service {name} mounts {config}"
        assert config.is_file(), f"service {name}: {config} does not exist"
        assert yaml.safe_load(config.read_text())["connector"] == connector


@pytest.mark.parametrize("connector", CONNECTORS, ids=connector_ids(CONNECTORS))
def test_every_registered_connector_has_its_service_and_profile(compose: dict[str, Any], connector: Connector) -> None:
    service = compose["services"].get(connector.name)
    assert service is not None, f"docker-compose.yml has no service {connector.name}"
    assert built_connector(service) == connector.name
    assert connector.name in service["profiles"], "`docker compose --profile <name> up` must start it"
    assert service["image"].startswith(f"meshconnect/{connector.name}:")


@pytest.mark.parametrize("connector", CONNECTORS, ids=connector_ids(CONNECTORS))
def test_connector_waits_for_healthy_dependencies(compose: dict[str, Any], connector: Connector) -> None:
    service = compose["services"][connector.name]
    depends_on = service["depends_on"]
    assert {"eventmesh", "redis"} <= depends_on.keys()
    for dependency, condition in depends_on.items():
        assert condition == {"condition": "service_healthy"}, f"{connector.name} -> {dependency}"
        assert "healthcheck" in compose["services"][dependency], f"{dependency} has no healthcheck to wait for"


@pytest.mark.parametrize("connector", CONNECTORS, ids=connector_ids(CONNECTORS))
def test_sample_config_runs_in_compose(compose: dict[str, Any], connector: Connector) -> None:
    """The sample plus the service's environment is a valid config that reaches the compose services, not localhost."""
    service = compose["services"][connector.name]
    assert connector.sample.is_file(), f"{connector.sample} is missing: the compose service mounts it"
    environment = {key: str(value) for key, value in service["environment"].items()}
    resolved = resolve_config(mounted_config(service), environment)
    assert resolved["connector"] == connector.name
    assert resolved["local_address_keys"] == [], f"override these with MESHCONNECT__... in compose: {resolved}"
    assert resolved["worker"]["mesh"]["address"] == "eventmesh:10000"
    assert resolved["worker"]["registry"]["kind"] == "redis"
    assert resolved["worker"]["admin"]["port"] == 8090


def test_cdc_profile_chains_mysql_source_to_mysql_sink(compose: dict[str, Any]) -> None:
    in_profile = {name: service for name, service in compose["services"].items() if "cdc" in service.get("profiles", [])}
    by_connector = {built_connector(service): service for service in in_profile.values()}
    assert {"mysql-source", "mysql-sink"} <= by_connector.keys(), f"cdc profile has {sorted(in_profile)}"
    source = resolve_config(mounted_config(by_connector["mysql-source"]), dict(by_connector["mysql-source"]["environment"]))
    sink = resolve_config(mounted_config(by_connector["mysql-sink"]), dict(by_connector["mysql-sink"]["environment"]))
    assert sink["config"]["mode"] == "cdc"
    assert source["config"]["host"] == sink["config"]["host"] == "mysql"
    captured = source["config"]["include_databases"]
    assert sink["config"]["database"] not in captured, "the cdc sink would write into the tables the source reads"
    topics = sink["worker"]["sink"]["topics"]
    assert topics, "the cdc sink subscribes no topic"
    for topic in topics:
        database, _, table = topic.partition(".")
        assert database in captured and table, f"the sink's topic {topic} is not one the source publishes ({captured})"


def test_eventmesh_accepts_real_payloads(compose: dict[str, Any]) -> None:
    source = mounts(compose["services"]["eventmesh"])["/data/app/eventmesh/conf/eventmesh.properties"]
    lines = Path(source).read_text().splitlines()
    properties = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    assert int(properties["eventMesh.server.maxEventSize"]) >= 1024 * 1024
    assert properties["eventMesh.server.tcp.port"] == "10000"


def test_compose_paths_are_in_the_repository(compose: dict[str, Any]) -> None:
    registered = {connector.name for connector in CONNECTORS}
    for name, service in compose["services"].items():
        for source in map(Path, mounts(service).values()):
            if not source.is_absolute():
                continue  # a named volume
            assert source.is_relative_to(ROOT), f"{name} mounts {source} from outside the repository"
            if "build" not in service or built_connector(service) in registered:
                assert source.exists(), f"{name} mounts missing {source}"


def test_compose_prometheus_scrapes_every_connector_with_the_alert_rules(compose: dict[str, Any], tmp_path: Path) -> None:
    prometheus = compose["services"]["prometheus"]
    volumes = mounts(prometheus)
    config_text = Path(volumes["/etc/prometheus/prometheus.yml"]).read_text()
    assert Path(volumes["/etc/prometheus/alerts.yaml"]) == ROOT / "deploy" / "monitoring" / "alerts.yaml"
    config = yaml.safe_load(config_text)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    (job,) = config["scrape_configs"]
    assert re.fullmatch(target_down_job_pattern(), job["job_name"]), "MeshconnectTargetDown would not watch this job"
    assert "static_configs" not in job, "a static target whose profile is not up is always down (and alerts)"
    looked_up = {(name, group["port"]) for group in job["dns_sd_configs"] for name in group["names"]}
    assert {(name, 8090) for name in connector_services(compose)} <= looked_up
    # promtool checks the file as the container sees it: the rule file at its mounted path
    local = tmp_path / "prometheus.yml"
    local.write_text(config_text.replace("/etc/prometheus/alerts.yaml", volumes["/etc/prometheus/alerts.yaml"]))
    run([require_tool("promtool"), "check", "config", str(local)])


HOST_PORT_VARIABLE = re.compile(r"\$\{(MESHCONNECT_[A-Z_]+_PORT):-(\d+)\}")


def published_host_ports(rendered: dict[str, Any]) -> dict[tuple[str, int], int]:
    """(service, container port) -> the fixed host port it is published on (a free port is left out)."""
    return {
        (name, int(port["target"])): int(port["published"])
        for name, service in rendered["services"].items()
        for port in service.get("ports", [])
        if isinstance(port, dict) and port.get("published")
    }


def test_compose_publishes_only_documented_ports_each_overridable(compose: dict[str, Any]) -> None:
    """A fixed host port collides with what already runs there (a local MySQL, Redis): only what a user
    reaches from the host is published, each on a port an environment variable moves."""
    variables = dict(HOST_PORT_VARIABLE.findall((ROOT / "docker-compose.yml").read_text()))
    assert variables, "no MESHCONNECT_..._PORT variable in docker-compose.yml"
    defaults = published_host_ports(compose)
    assert sorted(defaults.values()) == sorted(int(port) for port in variables.values())
    for infrastructure in ("redis", "mysql", "postgres", "rabbitmq", "mosquitto", "nats", "kafka", "pulsar", "minio"):
        assert not [key for key in defaults if key[0] == infrastructure], f"{infrastructure} is published on the host"
    moved = {name: str(20000 + index) for index, name in enumerate(sorted(variables))}
    environment = {"PATH": os.environ.get("PATH", ""), **moved}
    rendered = yaml.safe_load(run([require_tool("docker-compose"), "--file", "docker-compose.yml", "config"], env=environment))
    assert sorted(published_host_ports(rendered).values()) == sorted(int(port) for port in moved.values())
    documented = (ROOT / "deploy" / "README.md").read_text()
    for name in variables:
        assert name in documented, f"deploy/README.md does not say {name} moves a published port"


def test_file_source_tails_files_mounted_into_its_container(compose: dict[str, Any]) -> None:
    """The sample's globs (/var/log/app/*.log) name a directory the container has, and it holds files."""
    service = compose["services"]["file-source"]
    resolved = resolve_config(mounted_config(service), {key: str(value) for key, value in service["environment"].items()})
    volumes = mounts(service)
    found = []
    for pattern in resolved["config"]["paths"]:
        directory = str(Path(pattern).parent)
        assert directory in volumes, f"{pattern}: {directory} is not mounted into file-source"
        found.extend(Path(volumes[directory]).glob(Path(pattern).name))
    assert found, f"the default directory has nothing for {resolved['config']['paths']} to read"
