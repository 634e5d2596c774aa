"""Every command deploy/README.md shows, run as far as this machine can without a Docker engine.

`docker run` gets its config file and environment checked with `meshconnect check` in a clean
process (and its published port compared with the admin port they give), `docker compose` commands
are checked against the rendered compose file, `kubectl apply -k` renders its overlay, and promtool
runs as written. A command of a kind no test knows fails, so a new example cannot go unchecked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.layout import DEPLOY, ROOT, registered_connectors, require_tool, resolve_config, run

README = DEPLOY / "README.md"
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
CONFIG_MOUNT = "/etc/meshconnect/config.yaml"
# what a variable passed through from the user's shell (`-e NAME`) holds in the check
SHELL_VALUE = "from-the-shell"


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's code blocks, continuations joined, comments dropped."""
    commands = []
    for block in FENCE.findall(README.read_text()):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in {"docker", "kubectl", "promtool", "curl"}:
                commands.append(words)
    return commands


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    rendered: dict[str, Any] = yaml.safe_load(run([require_tool("docker-compose"), "--file", "docker-compose.yml", "config"]))
    return rendered


def image_connector(image: str) -> str:
    match = re.fullmatch(r"meshconnect/([a-z-]+):[\w.]+", image)
    assert match, f"{image} is not a meshconnect/<connector>:<version> image"
    assert match.group(1) in {connector.name for connector in registered_connectors()}
    return match.group(1)


def check_docker_build(args: list[str], _compose: dict[str, Any]) -> None:
    build_args = dict(args[index + 1].split("=", 1) for index, arg in enumerate(args) if arg == "--build-arg")
    tag = args[args.index("-t") + 1]
    assert image_connector(tag) == build_args["CONNECTOR"]
    assert args[-1] == ".", "the build context is the repository"


def check_docker_run(args: list[str], _compose: dict[str, Any]) -> None:
    environment: dict[str, str] = {}
    published: list[int] = []
    config: Path | None = None
    options = iter(args[1:-1])
    for option in options:
        value = next(options) if option in {"-e", "-p", "-v"} else None
        if option == "-e" and value is not None:
            name, separator, given = value.partition("=")
            environment[name] = given if separator else SHELL_VALUE
        elif option == "-p" and value is not None:
            published.append(int(value.rsplit(":", 1)[1]))
        elif option == "-v" and value is not None:
            source, target, *_mode = value.split(":")
            if target == CONFIG_MOUNT:
                config = Path(source.replace("$PWD", str(ROOT)))
    connector = image_connector(args[-1])
    assert config is not None and config.is_file(), f"the example mounts no config file at {CONFIG_MOUNT}"
    clean = {"PATH": os.environ.get("PATH", ""), **environment}
    meshconnect = str(Path(sys.executable).parent / "meshconnect")
    result = subprocess.run(
        [meshconnect, "check", connector, "--config", str(config)], env=clean, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"the config and environment of `docker run` fail the check:\n{result.stderr}"
    admin_port = resolve_config(config, environment)["worker"]["admin"]["port"]
    assert published == [admin_port], f"publishes {published}, the connector's admin port is {admin_port}"


def check_docker_compose(args: list[str], compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiles = {profile for service in services.values() for profile in service.get("profiles", [])}
    words = args[2:]
    while words[0] == "--profile":
        assert words[1] in profiles, f"no service is in the profile {words[1]}"
        words = words[2:]
    verb, *rest = words
    if verb == "up":
        for name in rest:
            assert name in services, f"no service {name}"
    elif verb == "exec":
        assert rest[0] in services, f"no service {rest[0]}"
    elif verb == "port":
        name, port = rest
        assert int(port) in {int(entry["target"]) for entry in services[name].get("ports", [])}, f"{name} does not publish {port}"
    else:
        pytest.fail(f"no check for `docker compose {verb}`")


def check_curl(args: list[str], compose: dict[str, Any]) -> None:
    (url,) = [arg for arg in args if "localhost:" in arg]
    port = int(url.split("localhost:", 1)[1].split("/", 1)[0])
    published = {
        int(entry["published"])
        for service in compose["services"].values()
        for entry in service.get("ports", [])
        if entry.get("published")
    }
    assert port in published, f"{url}: compose publishes nothing on {port}"


def check_kubectl(args: list[str], _compose: dict[str, Any]) -> None:
    assert args[1:3] == ["apply", "-k"], args
    run([require_tool("kubectl"), "kustomize", args[3]])


def check_promtool(args: list[str], _compose: dict[str, Any]) -> None:
    run([require_tool("promtool"), *args[1:]])


CHECKS: dict[tuple[str, ...], Callable[[list[str], dict[str, Any]], None]] = {
    ("docker", "build"): check_docker_build,
    ("docker", "run"): check_docker_run,
    ("docker", "compose"): check_docker_compose,
    ("curl",): check_curl,
    ("kubectl",): check_kubectl,
    ("promtool",): check_promtool,
}


def test_the_readme_shows_commands() -> None:
    kinds = {tuple(command[:2]) for command in readme_commands()}
    assert {("docker", "run"), ("docker", "compose"), ("kubectl", "apply")} <= kinds


@pytest.mark.parametrize("command", readme_commands(), ids=shlex.join)
def test_readme_command(command: list[str], compose: dict[str, Any]) -> None:
    check = CHECKS.get(tuple(command[:2])) or CHECKS.get(tuple(command[:1]))
    assert check is not None, f"no test knows how to check `{shlex.join(command)}`"
    check(command, compose)


MAIN_README = ROOT / "README.md"


def main_readme_lines(program: str) -> list[str]:
    """Lines of the main README's code blocks that start with ``program``, comments dropped."""
    return [
        line.split("#", 1)[0].strip()
        for block in FENCE.findall(MAIN_README.read_text())
        for line in block.splitlines()
        if line.startswith(f"{program} ")
    ]


def test_main_readme_meshconnect_commands_exist() -> None:
    """The synopses (`meshconnect offsets show|set ...`) name commands and subcommands the CLI has."""
    from runtime.cli import build_parser

    lines = main_readme_lines("meshconnect")
    assert lines
    for line in lines:
        words = line.split()
        for command in words[1].split("|"):
            argv = [command, *([words[2].split("|")[0]] if command in {"offsets", "leases", "registry"} else []), "--help"]
            with pytest.raises(SystemExit) as exit_info:
                build_parser().parse_args(argv)
            assert exit_info.value.code == 0, f"`meshconnect {' '.join(argv)}` from the README is not a command"


def test_main_readme_make_targets_exist() -> None:
    for line in main_readme_lines("make"):
        target = line.split()[1]
        plan = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False)
        assert plan.returncode == 0, f"`{line}` from the README: {plan.stderr}"
