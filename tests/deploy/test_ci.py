"""`make test` gets what the tests need from the machine (.ci/deps), or fails naming the command that does."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.deploy.layout import ROOT

DEPS = ROOT / ".ci" / "deps"


def stub(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_make_test_runs_deps_before_the_tests() -> None:
    plan = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert ".ci/deps" in plan
    assert plan.index(".ci/deps") < plan.index("pytest"), "the tests would run (and skip) before the install"


def test_the_package_list_is_written_once() -> None:
    """.ci/run installs through make: one list, in .ci/deps."""
    assert (ROOT / ".ci" / "run").read_text().count("mariadb-server") == 0
    assert (ROOT / "Makefile").read_text().count("mariadb-server") == 0
    assert DEPS.read_text().count("mariadb-server") == 1


def test_without_root_deps_fails_with_the_install_command(tmp_path: Path) -> None:
    # nothing installed, not root: no apt-get may run
    stub(tmp_path, "dpkg-query", "exit 1")
    stub(tmp_path, "id", "echo 1000")
    stub(tmp_path, "apt-get", f"touch {tmp_path / 'apt-ran'}; exit 1")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run([str(DEPS)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert not (tmp_path / "apt-ran").exists()
    packages = re.search(r"^packages=\((.*)\)$", DEPS.read_text(), re.MULTILINE)
    assert packages
    command = f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {packages.group(1)}"
    assert command in result.stderr, result.stderr


def test_as_root_deps_installs_what_is_missing(tmp_path: Path) -> None:
    """With apt and root it installs the missing packages itself (apt-get stubbed: it records its arguments)."""
    stub(tmp_path, "dpkg-query", 'case "$3" in prometheus|kubectl) exit 1;; esac; echo "install ok installed"')
    stub(tmp_path, "id", "echo 0")
    stub(tmp_path, "apt-get", f'echo "$@" >> {tmp_path / "apt-args"}')
    stub(tmp_path, "rabbitmq-server", "exit 0")  # make test started the broker already; a test starts none
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run([str(DEPS)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
    calls = (tmp_path / "apt-args").read_text().splitlines()
    assert calls == ["update -qq", "install -y -qq prometheus kubectl"]  # in the list's order
