"""Where the deployment files are, which connectors exist, and the tools that check them offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = DEPLOY / "overlays"
VENV_BIN = Path(sys.executable).parent

PLANNED = frozenset(
    {
        "mysql-sink", "mysql-source", "http-source", "http-sink", "file-source", "file-sink", "redis-source",
        "redis-sink", "rabbitmq-source", "rabbitmq-sink", "mqtt-source", "mqtt-sink", "nats-source", "nats-sink",
        "kafka-source", "kafka-sink",
        "pulsar-source", "pulsar-sink",
        "postgres-source", "postgres-sink", "prometheus-source", "knative-sink", "slack-sink", "dingtalk-sink",
        "wecom-sink", "lark-sink", "wechat-sink", "s3-source", "s3-sink", "chatgpt-source", "mcp-source", "mcp-sink",
    }
)  # fmt: skip
"""Connectors the deployment files are written for; a registered connector missing here fails the tests."""

LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Connector:
    name: str
    target: str  # "services.<pkg>.connector:Class"

    @property
    def package_dir(self) -> Path:
        return ROOT.joinpath(*self.target.split(":")[0].split(".")[:-1])

    @property
    def sample(self) -> Path:
        return self.package_dir / "config.example.yaml"


def registered_connectors() -> list[Connector]:
    """The connectors pyproject.toml registers (the file itself, so a fresh entry counts before any reinstall)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points = pyproject["project"]["entry-points"]["meshconnect.connectors"]
    return [Connector(name, target) for name, target in sorted(entry_points.items())]


def connector_ids(connectors: list[Connector]) -> list[str]:
    return [connector.name for connector in connectors]


def require_tool(name: str) -> str:
    """The path of an offline checker; missing is a failure in CI (.ci/run installs it), a skip elsewhere."""
    found = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if found is None:
        unavailable(f"{name} is not installed")
    return found


def run(argv: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run a checker; its output is the assertion message when it fails."""
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def resolve_config(config_file: Path, environment: dict[str, str]) -> dict[str, Any]:
    """What a container sees: ``config_file`` with only ``environment`` set, loaded and validated in a clean process."""
    env = {"PATH": os.environ.get("PATH", ""), **environment}
    out = run([sys.executable, "-m", "tests.deploy.resolve", str(config_file)], env=env)
    resolved: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return resolved
