"""deploy/: every overlay renders with kustomize, validates against the Kubernetes schemas, and runs its sample."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from runtime.plugins import load_connector
from tests.deploy.layout import (
    DEPLOY,
    OVERLAYS,
    PLANNED,
    Connector,
    connector_ids,
    registered_connectors,
    require_tool,
    resolve_config,
    run,
)

CONNECTORS = registered_connectors()


def kustomize(directory: Path) -> str:
    """Render a kustomization as ``kubectl apply -k`` does: default load restrictions (files under its root only)."""
    kubectl = require_tool("kubectl")
    return run([kubectl, "kustomize", str(directory)])


def validate(manifests: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(manifests)
    run([require_tool("kubernetes-validate"), "--strict", "--quiet", str(rendered)])


def by_kind(manifests: str) -> dict[str, list[dict[str, Any]]]:
    result: dict[str, list[dict[str, Any]]] = {}
    for document in yaml.safe_load_all(manifests):
        result.setdefault(document["kind"], []).append(document)
    return result


def workload(kinds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The overlay's one Deployment or StatefulSet."""
    (found,) = [*kinds.get("Deployment", []), *kinds.get("StatefulSet", [])]
    return found


def mounted_config_text(kinds: dict[str, list[dict[str, Any]]]) -> str:
    (config_text,) = [
        config_map["data"]["config.yaml"] for config_map in kinds["ConfigMap"] if "config.yaml" in config_map.get("data", {})
    ]
    return str(config_text)


def resolve_pod_config(kinds: dict[str, list[dict[str, Any]]], tmp_path: Path) -> dict[str, Any]:
    """The config file of the overlay's ConfigMap with the container's environment, as the pod loads it."""
    (container,) = workload(kinds)["spec"]["template"]["spec"]["containers"]
    config_maps = {config_map["metadata"]["name"]: config_map for config_map in kinds["ConfigMap"]}
    secrets = {secret["metadata"]["name"]: secret for secret in kinds.get("Secret", [])}
    environment: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            environment.update(config_maps[source["configMapRef"]["name"]]["data"])
        else:
            data = secrets[source["secretRef"]["name"]].get("data", {})
            environment.update({key: base64.b64decode(value).decode() for key, value in data.items()})
    environment.update({variable["name"]: variable["value"] for variable in container.get("env", []) if "value" in variable})
    config_file = tmp_path / "config.yaml"
    config_file.write_text(mounted_config_text(kinds))
    return resolve_config(config_file, environment)


@pytest.fixture(scope="module", params=CONNECTORS, ids=connector_ids(CONNECTORS))
def rendered(request: pytest.FixtureRequest) -> tuple[Connector, str]:
    connector: Connector = request.param
    overlay = OVERLAYS / connector.name
    assert (overlay / "kustomization.yaml").is_file(), f"deploy/overlays/{connector.name} is missing"
    assert connector.sample.is_file(), f"{connector.sample} is missing: the overlay's ConfigMap is made from it"
    return connector, kustomize(overlay)


def test_overlays_are_for_known_connectors() -> None:
    overlays = {path.name for path in OVERLAYS.iterdir() if path.is_dir()}
    assert overlays <= PLANNED | {connector.name for connector in CONNECTORS}


def test_base_validates(tmp_path: Path) -> None:
    validate(kustomize(DEPLOY / "base"), tmp_path)


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The schema check can fail: a misspelt field is refused."""
    manifests = kustomize(DEPLOY / "base").replace("terminationGracePeriodSeconds", "terminationGracePeriod")
    rendered = tmp_path / "broken.yaml"
    rendered.write_text(manifests)
    result = subprocess.run(
        [require_tool("kubernetes-validate"), "--strict", "--quiet", str(rendered)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "terminationGracePeriod" in result.stdout + result.stderr


def test_overlay_validates(rendered: tuple[Connector, str], tmp_path: Path) -> None:
    _connector, manifests = rendered
    validate(manifests, tmp_path)


def test_overlay_deployment_is_production_shaped(rendered: tuple[Connector, str]) -> None:
    connector, manifests = rendered
    kinds = by_kind(manifests)
    spec = workload(kinds)["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] >= 2
    assert container["image"].startswith(f"meshconnect/{connector.name}:")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounted = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounted["/tmp"]]
    assert "/var/lib/meshconnect" in mounted, "the state directory (the image's WORKDIR) needs a writable volume"
    config_map_name = volumes[mounted["/etc/meshconnect"]]["configMap"]["name"]
    assert config_map_name in {config_map["metadata"]["name"] for config_map in kinds["ConfigMap"]}


def test_overlay_has_disruption_budget_and_scraped_metrics(rendered: tuple[Connector, str]) -> None:
    connector, manifests = rendered
    kinds = by_kind(manifests)
    deployment = workload(kinds)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (budget,) = kinds["PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert pod_labels["app.kubernetes.io/instance"] == connector.name, "overlays must not select each other's pods"
    (metrics,) = [service for service in kinds["Service"] if "prometheus.io/scrape" in service["metadata"].get("annotations", {})]
    annotations = metrics["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    assert {port["port"] for port in metrics["spec"]["ports"]} == {int(annotations["prometheus.io/port"])}


def test_overlay_runs_its_sample(rendered: tuple[Connector, str], tmp_path: Path) -> None:
    """The ConfigMap is the connector's sample; with the pod's environment it is valid and reaches no localhost."""
    connector, manifests = rendered
    kinds = by_kind(manifests)
    (container,) = workload(kinds)["spec"]["template"]["spec"]["containers"]
    config_text = mounted_config_text(kinds)
    assert config_text == connector.sample.read_text()
    resolved = resolve_pod_config(kinds, tmp_path)
    assert resolved["connector"] == connector.name
    assert resolved["local_address_keys"] == [], f"point these at cluster services in the overlay: {resolved}"
    assert resolved["worker"]["registry"]["kind"] == "redis"
    admin_port = resolved["worker"]["admin"]["port"]
    assert admin_port in {port["containerPort"] for port in container["ports"] if port["name"] == "admin"}


# Config keys naming files a connector keeps data in, and whether it writes them (its output, which
# must outlive the pod) or reads them (input both replicas must see, so the standby resumes at the
# same offsets). Any other config field named like a path must be listed in NOT_FILES.
DATA_PATHS: dict[str, dict[str, str]] = {
    "file-sink": {"directory": "write"},
    "file-source": {"paths": "read"},
}
NOT_FILES = {
    ("http-source", "path"),  # the URL path it accepts POSTs on
    ("chatgpt-source", "path"),
    ("mcp-source", "path"),
    ("http-sink", "ca_file"),  # configuration, mounted read-only like the config file
    ("knative-sink", "ca_file"),
    ("kafka-sink", "key_path"),  # a path into the event data
    ("kafka-source", "ssl_cafile"),  # TLS files: configuration, mounted read-only like the config file
    ("kafka-source", "ssl_certfile"),
    ("kafka-source", "ssl_keyfile"),
    ("kafka-sink", "ssl_cafile"),
    ("kafka-sink", "ssl_certfile"),
    ("kafka-sink", "ssl_keyfile"),
    ("pulsar-source", "ca_file"),
    ("pulsar-sink", "ca_file"),
}
PATH_LIKE_FIELD = re.compile(r"(^|_)(path|paths|dir|directory|file|files)$")
WORKDIR = PurePosixPath("/var/lib/meshconnect")  # the image's working directory: relative paths land there


def test_every_path_setting_is_reviewed_for_persistence() -> None:
    for connector in CONNECTORS:
        model = load_connector(connector.name).config_model
        for field in model.model_fields:
            if PATH_LIKE_FIELD.search(field) and (connector.name, field) not in NOT_FILES:
                reviewed = DATA_PATHS.get(connector.name, {})
                assert field in reviewed, f"{connector.name} config.{field}: which storage does it need?"


def volume_of(pod: dict[str, Any], path: PurePosixPath) -> tuple[str, dict[str, Any]]:
    """The volume holding ``path`` in the pod's container: its name and its mount."""
    (container,) = pod["containers"]
    mounts = [mount for mount in container["volumeMounts"] if path.is_relative_to(mount["mountPath"])]
    assert mounts, f"{path} is on no volume: the root filesystem is read-only (and ephemeral)"
    mount = max(mounts, key=lambda found: len(found["mountPath"]))
    return mount["name"], mount


def test_overlay_keeps_data_on_storage_that_outlives_the_pod(rendered: tuple[Connector, str], tmp_path: Path) -> None:
    """No state on an emptyDir: offsets and leases in Redis, a file sink's output on a claim per replica,
    a file source's input on a claim the replicas share."""
    connector, manifests = rendered
    kinds = by_kind(manifests)
    resolved = resolve_pod_config(kinds, tmp_path)
    assert resolved["worker"]["registry"]["kind"] == "redis", "offsets and leases would vanish with the pod"
    owner = workload(kinds)
    pod = owner["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    claim_templates = {claim["metadata"]["name"]: claim for claim in owner["spec"].get("volumeClaimTemplates", [])}
    claims = {claim["metadata"]["name"]: claim for claim in kinds.get("PersistentVolumeClaim", [])}
    for key, use in DATA_PATHS.get(connector.name, {}).items():
        values = resolved["config"][key]
        for value in values if isinstance(values, list) else [values]:
            path = WORKDIR / PurePosixPath(value).parent if "*" in value else WORKDIR / value
            name, mount = volume_of(pod, path)
            where = f"{connector.name} config.{key} {value!r} is on volume {name!r}"
            if use == "write":
                assert owner["kind"] == "StatefulSet" and name in claim_templates, f"{where}: not a claim per replica"
                assert "ReadWriteOnce" in claim_templates[name]["spec"]["accessModes"]
            else:
                claim_name = volumes[name].get("persistentVolumeClaim", {}).get("claimName")
                assert claim_name in claims, f"{where}: not a PersistentVolumeClaim the replicas share"
                assert {"ReadWriteMany", "ReadOnlyMany"} & set(claims[claim_name]["spec"]["accessModes"]), where
                assert mount.get("readOnly") is True, f"{where}: a source only reads its files"


def test_persistent_state_component_runs_the_base_pod() -> None:
    """The StatefulSet of deploy/components/persistent-state is the base Deployment's pod, its state volume a claim."""
    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    stateful = yaml.safe_load((DEPLOY / "components" / "persistent-state" / "statefulset.yaml").read_text())
    base_pod = deployment["spec"]["template"]["spec"]
    pod = stateful["spec"]["template"]["spec"]
    assert {key: value for key, value in pod.items() if key != "volumes"} == {
        key: value for key, value in base_pod.items() if key != "volumes"
    }
    assert pod["volumes"] == [volume for volume in base_pod["volumes"] if volume["name"] != "state"]
    assert [claim["metadata"]["name"] for claim in stateful["spec"]["volumeClaimTemplates"]] == ["state"]
    assert stateful["spec"]["replicas"] == deployment["spec"]["replicas"]
