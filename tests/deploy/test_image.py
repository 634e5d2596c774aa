"""The Dockerfile: hadolint-clean, slim, non-root, and its install step and entrypoint really work.

There is no Docker engine here, so the image's build stage is replayed on this machine: the files the
Dockerfile copies go to a fresh directory, the same install script builds a fresh virtual environment
with one connector's extra, and the entrypoint it creates runs against the embedded mesh.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.deploy.layout import ROOT, Connector, connector_ids, registered_connectors, require_tool, run

DOCKERFILE = ROOT / "Dockerfile"
IMAGE_CONNECTOR = "http-source"  # no external system needed besides the mesh


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (fails for the shell form)."""
        text = self.arguments.split("CMD", 1)[1] if self.keyword == "HEALTHCHECK" else self.arguments
        value = json.loads(text.strip())
        assert isinstance(value, list), f"{self.keyword} is not in exec form"
        return [str(item) for item in value]


def stages() -> list[list[Instruction]]:
    """The Dockerfile's stages, each a list of instructions (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    result: list[list[Instruction]] = []
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def only(stage: list[Instruction], keyword: str) -> Instruction:
    (found,) = [instruction for instruction in stage if instruction.keyword == keyword]
    return found


def test_hadolint_passes() -> None:
    run([require_tool("hadolint"), str(DOCKERFILE)])


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint can fail: an unpinned base and `cd` in a RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install requests\n")
    result = subprocess.run([require_tool("hadolint"), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3006" in result.stdout


def test_final_stage_is_slim_non_root_and_observable() -> None:
    *build, final = stages()
    assert build, "a multi-stage build: the install happens in a build stage"
    assert "slim" in DOCKERFILE.read_text().split("PYTHON_IMAGE=", 1)[1].split()[0]
    user = only(final, "USER").arguments.split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root user (Kubernetes runAsNonRoot can check it)"
    run_steps = " ".join(instruction.arguments for instruction in final if instruction.keyword == "RUN")
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in run_steps, f"the final stage installs {tool}"
    assert any("--from=build" in instruction.arguments for instruction in final if instruction.keyword == "COPY")
    assert only(final, "ENTRYPOINT").exec_form(), "exec form, so SIGTERM reaches main()"
    assert only(final, "HEALTHCHECK").exec_form()[1:] == ["probe"], "the probe that reads the config's admin.port"
    assert "8090" in only(final, "EXPOSE").arguments.split()
    labels = " ".join(instruction.arguments for instruction in final if instruction.keyword == "LABEL")
    for annotation in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{annotation}=" in labels


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*", "start from nothing, then let in what the build copies"
    let_in = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    (build, *_rest) = stages()
    for instruction in build:
        if instruction.keyword == "COPY":
            *sources, _target = instruction.arguments.split()
            for source in sources:
                assert source in let_in, f"COPY {source} but .dockerignore keeps it out"


@pytest.mark.parametrize("connector", registered_connectors(), ids=connector_ids(registered_connectors()))
def test_every_connector_has_the_extra_its_image_installs(connector: Connector) -> None:
    """`--build-arg CONNECTOR=<name>` installs `meshconnect[<name>]`; pip would only warn about a missing extra."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert connector.name in extras, f"pyproject.toml has no extra {connector.name!r} for its image"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def replay_build_stage(connector: str, workdir: Path) -> Path:
    """Copy what the build stage copies, run its install script: the virtual environment it makes."""
    (build, *_rest) = stages()
    context = workdir / "src"
    context.mkdir()
    copy_build_context(context)
    (install,) = [
        instruction.arguments for instruction in build if instruction.keyword == "RUN" and "install.sh" in instruction.arguments
    ]
    assert 'sh deploy/image/install.sh "${CONNECTOR}" /opt/venv /src' in install
    venv = workdir / "venv"
    run(["sh", "deploy/image/install.sh", connector, str(venv), str(context)], cwd=context, timeout=240)
    return venv


def copy_build_context(context: Path) -> None:
    """The files the build stage copies, at the same places under ``context``."""
    (build, *_rest) = stages()
    for instruction in build:
        if instruction.keyword != "COPY":
            continue
        *sources, target = instruction.arguments.split()
        for source in sources:
            destination = context / (target.removeprefix("./") if target not in {"./", "."} else source)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, destination)


def test_the_package_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    """pyproject.toml as the build backend wants it: a license table warned on every install."""
    copy_build_context(tmp_path)
    # --dry-run still has the backend build the metadata; -v shows what it printed
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-v", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for warning in ("BuildBackendWarning", "DeprecationWarning", "is deprecated"):
        assert warning not in output, f"building the package warns:\n{output}"


@pytest.fixture
def image_venv(tmp_path: Path) -> Path:
    assert IMAGE_CONNECTOR in {connector.name for connector in registered_connectors()}
    return replay_build_stage(IMAGE_CONNECTOR, tmp_path)


@pytest.fixture
def mesh(image_venv: Path, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    with (tmp_path / "mesh.log").open("w") as log:
        process = subprocess.Popen([image_venv / "bin" / "meshconnect", "mesh", "--port", str(port)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, (tmp_path / "mesh.log").read_text()
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


def http_status(url: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def image_environment(final: list[Instruction], config: Path) -> dict[str, str]:
    """The final stage's ENV that names the config file, pointed at ``config``."""
    (env,) = [instruction.arguments for instruction in final if instruction.keyword == "ENV"]
    pairs = dict(item.split("=", 1) for item in shlex.split(env))
    assert pairs["MESHCONNECT_CONFIG"] == "/etc/meshconnect/config.yaml"
    return {"MESHCONNECT_CONFIG": str(config)}


@pytest.mark.slow
def test_image_install_and_entrypoint(image_venv: Path, mesh: int, tmp_path: Path) -> None:
    final = stages()[-1]
    # only the chosen connector's extra: another connector's driver is absent
    probe = subprocess.run([image_venv / "bin" / "python", "-c", "import aiomysql"], capture_output=True, check=False)
    assert probe.returncode != 0, "the image installs more than its connector's extra"

    config = tmp_path / "config.yaml"
    shutil.copy2(ROOT / "services" / "http" / "source" / "config.example.yaml", config)
    state = tmp_path / "state"  # the image's WORKDIR
    state.mkdir()
    # the admin port from the config file alone (as with `docker run` and no override): the
    # HEALTHCHECK must find it there, not assume 8090
    admin_port, http_port = free_port(), free_port()
    sample = yaml.safe_load(config.read_text())
    sample["admin"]["port"] = admin_port
    config.write_text(yaml.safe_dump(sample))
    environment = {
        "PATH": f"{image_venv / 'bin'}:{os.environ.get('PATH', '')}",
        "MESHCONNECT__MESH__ADDRESS": f"127.0.0.1:{mesh}",
        "MESHCONNECT__CONFIG__PORT": str(http_port),
    }
    environment.update(image_environment(final, config))
    entrypoint = [arg.replace("/opt/venv", str(image_venv)) for arg in only(final, "ENTRYPOINT").exec_form()]
    command = [arg.replace("/etc/meshconnect/config.yaml", str(config)) for arg in only(final, "CMD").exec_form()]
    log_path = tmp_path / "connector.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([*entrypoint, *command], cwd=state, env=environment, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while http_status(f"http://127.0.0.1:{admin_port}/readyz") != 200:
            assert process.poll() is None, f"{shlex.join(entrypoint)} exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"/readyz never answered 200:\n{log_path.read_text()}"
            time.sleep(0.2)

        healthcheck = [arg.replace("/opt/venv", str(image_venv)) for arg in only(final, "HEALTHCHECK").exec_form()]
        result = subprocess.run(healthcheck, cwd=state, env=environment, capture_output=True, text=True, timeout=10, check=False)
        assert result.returncode == 0, f"the image's HEALTHCHECK fails: {result.stderr}"

        event = json.dumps({"order": 1}).encode()
        assert 200 <= http_status(f"http://127.0.0.1:{http_port}/events", event) < 300, "the event did not reach the mesh"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0, f"SIGTERM did not drain to a clean exit:\n{log_path.read_text()}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
