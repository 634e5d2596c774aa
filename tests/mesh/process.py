"""``python -m runtime.commands.mesh`` as a child process on a fixed port: killable (-9) and restartable."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tests.servers import free_port, wait_for_port


class MeshProcess:
    """The embedded mesh in its own process; ``data_dir`` (optional) is kept across restarts."""

    def __init__(self, log_dir: Path, data_dir: Path | None = None, extra_args: Sequence[str] = ()) -> None:
        self.log_path = log_dir / "mesh.log"
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "runtime.commands.mesh", "--port", str(self.port), *self.extra_args]
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir)]
        return command

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=30, proc=self.proc)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final commit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        """SIGTERM: the graceful stop; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def rss_bytes(self) -> int:
        """The process's resident memory now (``VmRSS`` of ``/proc/<pid>/status``)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for pid {self.proc.pid}: is the mesh still running?")

    def log_entries(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of ``event`` the process wrote so far."""
        entries = []
        for line in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    entries.append(entry)
        return entries

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
