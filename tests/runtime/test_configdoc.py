"""Every connector's README documents its config with exactly the table made from its model."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.configdoc import config_table
from runtime.plugins import catalogue, load_connector

CONNECTORS = [entry.name for entry in catalogue()]


def test_every_planned_connector_is_installed() -> None:
    assert len(CONNECTORS) >= 22, CONNECTORS


@pytest.mark.parametrize("name", CONNECTORS)
def test_readme_carries_the_config_table_of_the_model(name: str) -> None:
    cls = load_connector(name)
    package = Path(importlib.import_module(cls.__module__).__file__ or "").parent
    readme = (package / "README.md").read_text()
    assert f"## {name}" in readme
    assert config_table(cls.config_model) in readme, f"regenerate with: meshconnect docs {name}"


def test_docs_command_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "docs", "mysql-sink"], capture_output=True, text=True, check=True
    )
    assert '| `mode` | `events` \\| `mapped` \\| `cdc` | `"events"` |' in result.stdout


def test_docs_command_names_an_unknown_connector() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "docs", "nope-sink"], check=False, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "nope-sink" in result.stderr
