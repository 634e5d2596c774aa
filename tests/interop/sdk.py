"""Apache EventMesh's own Java SDK as a test peer: resolved from Maven Central, driven over stdio.

``java/pom.xml`` declares ``eventmesh-sdk-java``; Maven resolves it into the user's repository
cache (outside the work tree) and javac compiles ``SdkPeer.java`` into a temp dir once per test
session. Each :class:`JavaPeer` is one JVM running one role of that program (publish, broadcast,
request, subscribe, respond); every line it prints is a JSON object with a ``kind``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.servers import require_binary

JAVA_DIR = Path(__file__).parent / "java"
PEER_SOURCE = JAVA_DIR / "src/main/java/meshconnect/interop/SdkPeer.java"
#: The SDK version the pom names: the newest on Maven Central.
SDK_VERSION = "1.10.0-release"


def build_peer(work_dir: Path) -> str:
    """Resolve the SDK's classpath with Maven and compile the peer; the classpath to run it with."""
    mvn = require_binary("mvn")
    javac = require_binary("javac")
    require_binary("java")
    classpath_file = work_dir / "classpath.txt"
    classes = work_dir / "classes"
    _run([mvn, "-q", "-B", "-f", str(JAVA_DIR / "pom.xml"), "dependency:build-classpath", f"-Dmdep.outputFile={classpath_file}"])
    dependencies = classpath_file.read_text().strip()
    _run([javac, "-d", str(classes), "-cp", dependencies, str(PEER_SOURCE)])
    return f"{classes}{os.pathsep}{dependencies}"


def _run(command: list[str]) -> None:
    """Run a build step quietly; its output goes into the error when it fails."""
    done = subprocess.run(command, capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(command[:2])} ... failed with {done.returncode}:\n{output}")


class JavaPeer:
    """One role of the Java peer against ``port``: ``async with JavaPeer(...) as peer``."""

    def __init__(self, classpath: str, role: str, port: int, log_dir: Path, **options: str | int) -> None:
        self.classpath = classpath
        self.role = role
        self.port = port
        self.options = {key.replace("_", "-"): str(value) for key, value in options.items()}
        self.stderr_path = log_dir / f"java-{role}-{id(self)}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - closed when the peer is left

    async def __aenter__(self) -> JavaPeer:
        arguments = [part for key, value in self.options.items() for part in (f"--{key}", value)]
        self.proc = await asyncio.create_subprocess_exec(
            "java",
            "-Xss512k",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            self.classpath,
            "meshconnect.interop.SdkPeer",
            self.role,
            "--port",
            str(self.port),
            *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            limit=64 * 1024 * 1024,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        self._stderr.close()

    async def line(self, timeout: float = 60.0) -> dict[str, Any]:  # noqa: ASYNC109 - one bound per line
        """The next line the peer printed; fails with the tail of its log if it exited or went quiet."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"the Java {self.role} peer printed nothing for {timeout}s{self._log_tail()}") from None
        if not raw:
            await self.proc.wait()
            raise AssertionError(f"the Java {self.role} peer exited ({self.proc.returncode}){self._log_tail()}")
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    async def expect(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:  # noqa: ASYNC109 - one bound per line
        line = await self.line(timeout)
        assert line["kind"] == kind, f"expected {kind!r} from the Java {self.role} peer, got {line}"
        return line

    async def send(self, events: Iterable[dict[str, Any]]) -> None:
        """Write structured CloudEvents to the peer's stdin, then close it (the peer ends after them)."""
        assert self.proc is not None and self.proc.stdin is not None
        for event in events:
            self.proc.stdin.write(json.dumps(event, ensure_ascii=False).encode() + b"\n")
        await self.proc.stdin.drain()
        self.proc.stdin.close()

    async def until_done(self, timeout: float = 120.0) -> list[dict[str, Any]]:  # noqa: ASYNC109 - a bound per line
        """Every line up to the peer's ``done``."""
        lines: list[dict[str, Any]] = []
        while (line := await self.line(timeout))["kind"] != "done":
            lines.append(line)
        return lines

    def _log_tail(self) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        interesting = [row for row in text.splitlines() if " DEBUG " not in row]
        return "; its log ends:\n" + "\n".join(interesting[-30:])


def events_of(lines: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CloudEvents a subscribing peer printed, in order."""
    return [line["event"] for line in lines if line["kind"] == "event"]
