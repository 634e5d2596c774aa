"""The base of every throwaway server: a restartable process on a free loopback port, and the helpers
that find binaries, ports and certificates.

Under ``CI=true`` a missing binary fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["ServerProcess", "free_port", "make_tls_files", "require_binary", "unavailable", "wait_for_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(*candidates: str) -> str:
    """The first of ``candidates`` found on PATH (or as an absolute path); skip or fail if none."""
    for name in candidates:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if found:
            return found
    unavailable(f"none of {', '.join(candidates)} is installed")


def unavailable(message: str) -> NoReturn:
    """A service a test needs is missing: a failure under ``CI=true`` (CI must provide it), else a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI must install and start it: see .ci/deps)")
    pytest.skip(message)


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


class ServerProcess:
    """One server process bound to a fixed port and data dir, restartable."""

    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"meshconnect-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the server

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time set-up of the data dir before the first start."""

    def ready(self) -> None:
        wait_for_port(self.port, proc=self.proc)

    def as_user(self) -> Callable[[], None] | None:
        """What the child runs before the server starts (a server that may not run as root drops to its user)."""
        return None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            list(self.command()),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
            preexec_fn=self.as_user(),  # noqa: PLW1509
        )
        self.ready()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM and wait, as an orderly shutdown would (servers save their state)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, graceful: bool = False) -> None:
        """Stop (SIGKILL, or SIGTERM when ``graceful``) and start again on the same port and data."""
        if graceful:
            self.terminate()
        else:
            self.kill()
        self.start()

    def stop(self) -> None:
        self.terminate()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")

    @classmethod
    def running(cls, *args: object, **kwargs: object) -> ServerProcess:
        server = cls(*args, **kwargs)  # type: ignore[arg-type]
        server.prepare()
        server.start()
        return server


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    openssl = require_binary("openssl")
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, request = directory / "server.pem", directory / "server.key", directory / "server.csr"
    san = directory / "san.ext"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    ca_args = ["-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test-ca"]
    request_args = ["-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"]
    sign_args = ["-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2"]
    for command in (["req", *ca_args], ["req", *request_args], ["x509", *sign_args, "-extfile", san]):
        subprocess.run([openssl, *map(str, command)], check=True, capture_output=True)
    return ca, cert, key
