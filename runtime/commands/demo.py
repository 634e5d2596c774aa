"""``meshconnect demo``: a whole pipeline on one machine, no Docker, no external service.

Four processes, as in production: the embedded mesh (``meshconnect mesh``), an ``http-source``
receiving events on ``--http-port`` and a ``file-sink`` writing them as CloudEvents JSON lines under
``--out``, both run with ``meshconnect run`` from configs written to a state directory (with a
file registry there). The demo prints the commands to send events, where they land and where each
process's admin endpoint listens; Ctrl-C stops the source, then the sink, then the mesh, each
draining cleanly. A state directory the demo made itself (no ``--state-dir``) is removed after a
clean stop and kept, with a message saying where, when something failed: its logs say what. ``--mesh HOST:PORT`` runs
the two connectors against a mesh that is already running (a real EventMesh runtime) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

__all__ = ["register"]

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 20.0
_TOPIC = "demo"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run http-source -> embedded mesh -> file-sink on this machine")
    parser.add_argument("--http-port", type=int, default=8080, help="port the http-source listens on (default 8080)")
    parser.add_argument("--out", default="./demo-out", help="directory the file-sink writes to (default ./demo-out)")
    parser.add_argument("--state-dir", default=None, help="where configs, registry and logs go (default: a temp dir)")
    parser.add_argument(
        "--mesh",
        default=None,
        metavar="HOST:PORT",
        help="use this running EventMesh (a real runtime) instead of starting the embedded mesh",
    )
    parser.set_defaults(func=run_demo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_config(name: str, connector: str, mesh: str, admin_port: int, state: Path, **sections: Any) -> dict[str, Any]:
    return {
        "name": name,
        "connector": connector,
        "mesh": {"address": mesh},
        "registry": {"kind": "file", "path": str(state / "registry"), "lease_ttl": 5},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "log": {"format": "json"},
        **sections,
    }


class _Demo:
    def __init__(self, http_port: int, out: Path, state: Path, mesh: str | None) -> None:
        self.http_port = http_port
        self.mesh = mesh
        self.out = out
        self.state = state
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.admin_ports: dict[str, int] = {}
        self.mesh_address = mesh or ""
        self.stopping = False

    def spawn(self, label: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.state / f"{label}.log", "ab")  # noqa: SIM115 - handed to the child for its lifetime
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.children.append((label, process))
        return process

    def wait_ready(self, label: str, process: subprocess.Popen[bytes], probe: Any) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{label} exited with {process.returncode}; see {self.state / (label + '.log')}")
            if probe():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{label} did not become ready within {_START_TIMEOUT}s; see {self.state / (label + '.log')}")

    def start(self) -> None:
        mesh = self.mesh or self.start_embedded_mesh()
        sink_admin, source_admin = _free_port(), _free_port()
        sink_config = _worker_config(
            "demo-files",
            "file-sink",
            mesh,
            sink_admin,
            self.state,
            sink={"topics": [_TOPIC], "batch_size": 100, "linger_ms": 20},
            config={"directory": str(self.out), "prefix": "events"},
        )
        source_config = _worker_config(
            "demo-http",
            "http-source",
            mesh,
            source_admin,
            self.state,
            source={"topic": _TOPIC, "event_source": "/demo", "checkpoint_interval": 0.5},
            config={"host": "127.0.0.1", "port": self.http_port, "path": "/events"},
        )
        for label, admin_port, connector, config in (
            ("file-sink", sink_admin, "file-sink", sink_config),
            ("http-source", source_admin, "http-source", source_config),
        ):
            path = self.state / f"{label}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            process = self.spawn(label, [sys.executable, "-m", "runtime.cli", "run", connector, "--config", str(path)])
            self.admin_ports[label] = admin_port
            self.wait_ready(label, process, lambda port=admin_port: _ready(port))

    def start_embedded_mesh(self) -> str:
        port = _free_port()
        process = self.spawn("mesh", [sys.executable, "-m", "runtime.commands.mesh", "--host", "127.0.0.1", "--port", str(port)])
        self.wait_ready("mesh", process, lambda: _port_open("127.0.0.1", port))
        self.mesh_address = f"127.0.0.1:{port}"
        return self.mesh_address

    def stop(self) -> int:
        """SIGTERM the children newest first (source, sink, mesh), each drained before the next."""
        code = 0
        for label, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                print(f"{label} did not stop within {_STOP_TIMEOUT}s: killed", file=sys.stderr)
                code = 1
        return code


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _admin_endpoints(demo: _Demo) -> str:
    width = max(len(label) for label in ("mesh", *demo.admin_ports))
    lines = [f"  {label:<{width}}  http://127.0.0.1:{port}" for label, port in demo.admin_ports.items()]
    if demo.mesh is None:
        lines.append(f"  {'mesh':<{width}}  TCP {demo.mesh_address} (no admin endpoint; its log: {demo.state / 'mesh.log'})")
    return "\n".join(lines)


def _instructions(demo: _Demo) -> str:
    http_port, out, state, mesh = demo.http_port, demo.out, demo.state, demo.mesh
    url = f"http://127.0.0.1:{http_port}/events"
    through = f"the mesh at {mesh}" if mesh else f"embedded mesh at {demo.mesh_address}"
    return f"""
meshconnect demo is running: http-source -> {through} (topic '{_TOPIC}') -> file-sink

Send a CloudEvent (binary mode):
  curl -i -X POST {url} -H 'ce-specversion: 1.0' -H 'ce-id: demo-1' -H 'ce-source: /curl' \\
       -H 'ce-type: demo.greeting' -H 'content-type: application/json' -d '{{"hello": "mesh"}}'
Or a plain JSON webhook:
  curl -i -X POST {url} -H 'content-type: application/json' -d '{{"order": 42}}'

Events land as CloudEvents JSON lines in: {out}/events-*.jsonl
  tail -f {out}/events-*.jsonl
Admin endpoints (/healthz /readyz /metrics /status):
{_admin_endpoints(demo)}
  curl -s http://127.0.0.1:{demo.admin_ports["file-sink"]}/status
Configs, registry and logs: {state}
Press Ctrl-C to stop everything cleanly.
"""


def _leave_state(state: Path, created: bool, code: int) -> None:
    """Remove a state directory the demo made once it stopped cleanly; otherwise say where it is and why."""
    if not created:
        print(f"state left in {state} (the --state-dir you gave)", flush=True)
    elif code == 0:
        shutil.rmtree(state, ignore_errors=True)
    else:
        print(f"state kept in {state} for its logs (something failed); remove it when done", file=sys.stderr, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if _port_open("127.0.0.1", args.http_port):
        print(f"port {args.http_port} is taken: pass --http-port with a free port", file=sys.stderr)
        return 2
    if args.mesh is not None:
        host, _, port = args.mesh.rpartition(":")
        if not host or not port.isdigit() or not _port_open(host, int(port)):
            print(f"--mesh {args.mesh}: no EventMesh answers there; give the HOST:PORT of a running one", file=sys.stderr)
            return 2
    created = args.state_dir is None
    state = Path(tempfile.mkdtemp(prefix="meshconnect-demo-")) if created else Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    code = 1
    try:
        code = _run_pipeline(_Demo(args.http_port, out, state, args.mesh))
    finally:
        _leave_state(state, created, code)
    return code


def _run_pipeline(demo: _Demo) -> int:
    """Start the processes, wait for Ctrl-C (or one of them dying), stop them: the exit code."""
    stop_requested = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting {'' if demo.mesh else 'the embedded mesh, '}file-sink and http-source...", flush=True)
        try:
            demo.start()
        except RuntimeError as exc:
            print(f"demo failed to start: {exc}", file=sys.stderr)
            demo.stop()
            return 1
        print(_instructions(demo), flush=True)
        while not stop_requested:
            dead = [(label, process.returncode) for label, process in demo.children if process.poll() is not None]
            if dead:
                print(f"{dead[0][0]} exited with {dead[0][1]}; see {demo.state / (dead[0][0] + '.log')}", file=sys.stderr)
                demo.stop()
                return 1
            time.sleep(0.2)
        print(f"\nstopping: http-source, file-sink{'' if demo.mesh else ', mesh'}...", flush=True)
        code = demo.stop()
        print("stopped." if code == 0 else "stopped, not cleanly.", flush=True)
        return code
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
