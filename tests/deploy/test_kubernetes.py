"""deploy/: every overlay renders with kustomize, validates against the Kubernetes schemas, and runs its sample."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    (deployment,) = kinds["Deployment"]
    spec = deployment["spec"]
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
    assert "emptyDir" in volumes[mounted["/var/lib/meshconnect"]]
    config_map_name = volumes[mounted["/etc/meshconnect"]]["configMap"]["name"]
    assert config_map_name in {config_map["metadata"]["name"] for config_map in kinds["ConfigMap"]}


def test_overlay_has_disruption_budget_and_scraped_metrics(rendered: tuple[Connector, str]) -> None:
    connector, manifests = rendered
    kinds = by_kind(manifests)
    (deployment,) = kinds["Deployment"]
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
    (deployment,) = kinds["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
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
    (config_text,) = [
        config_map["data"]["config.yaml"] for config_map in config_maps.values() if "config.yaml" in config_map.get("data", {})
    ]
    assert config_text == connector.sample.read_text()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_text)
    resolved = resolve_config(config_file, environment)
    assert resolved["connector"] == connector.name
    assert resolved["local_address_keys"] == [], f"point these at cluster services in the overlay: {resolved}"
    assert resolved["worker"]["registry"]["kind"] == "redis"
    admin_port = resolved["worker"]["admin"]["port"]
    assert admin_port in {port["containerPort"] for port in container["ports"] if port["name"] == "admin"}
