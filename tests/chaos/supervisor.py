"""A process supervisor for the chaos topology: starts processes, restarts them when they die, as Kubernetes would.

Each :class:`Managed` process runs in its own session (so a signal reaches it alone), logs to its
own file, and is restarted a short while after it exits for whatever reason, until the supervisor
stops. The supervisor samples every process's peak resident memory (``VmHWM`` of
``/proc/<pid>/status``) while it runs and keeps the largest figure over all its incarnations.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

__all__ = ["Managed", "Supervisor", "peak_rss_kb"]

log = structlog.get_logger("chaos.supervisor")

_WATCH_INTERVAL = 0.1
_RESTART_DELAY = 0.5
_MAX_RESTART_DELAY = 8.0
_STOP_TIMEOUT = 15.0


def peak_rss_kb(pid: int) -> int:
    """The peak resident set size of ``pid`` in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Managed:
    """One supervised process: what to run, where it logs, and what became of it."""

    name: str
    kind: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    admin_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    peak_rss_kb: int = 0
    paused: bool = False
    down_until: float = 0.0
    hold_until: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def sample_rss(self) -> None:
        pid = self.pid
        if pid is not None:
            self.peak_rss_kb = max(self.peak_rss_kb, peak_rss_kb(pid))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Supervisor:
    """Starts :class:`Managed` processes and keeps them running until :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[str, Managed] = {}
        self._task: asyncio.Task[None] | None = None
        self._running = False

    def add(self, managed: Managed) -> Managed:
        self.processes[managed.name] = managed
        return managed

    def of_kind(self, kind: str) -> list[Managed]:
        return [managed for managed in self.processes.values() if managed.kind == kind]

    def spawn(self, managed: Managed) -> None:
        with managed.log_path.open("ab") as log_file:
            managed.proc = subprocess.Popen(
                list(managed.argv),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **managed.env},
                cwd=self.workdir,
                start_new_session=True,
            )
        managed.starts += 1
        managed.paused = False

    def start(self) -> None:
        for managed in self.processes.values():
            if managed.proc is None:
                self.spawn(managed)
        self._running = True
        self._task = asyncio.create_task(self._watch(), name="supervisor")

    async def _watch(self) -> None:
        next_sample = 0.0
        while self._running:
            now = time.monotonic()
            sample = now >= next_sample
            if sample:
                next_sample = now + 0.5
            for managed in self.processes.values():
                proc = managed.proc
                if proc is None:
                    continue
                code = proc.poll()
                if code is None:
                    if sample:
                        managed.sample_rss()
                    continue
                if managed.down_until == 0.0:
                    managed.exits.append(code)
                    # Like a crash-looping pod: each failure in a row waits twice as long before the restart.
                    failures = len(list(itertools.takewhile(lambda c: c not in (0, -signal.SIGKILL), reversed(managed.exits))))
                    managed.down_until = now + min(_RESTART_DELAY * 2**failures, _MAX_RESTART_DELAY)
                    if code not in (0, -signal.SIGKILL):
                        log.warning("process exited", name=managed.name, code=code, last_line=managed.log_tail(1)[-300:])
                elif now >= max(managed.down_until, managed.hold_until):
                    managed.down_until = 0.0
                    self.spawn(managed)
            await asyncio.sleep(_WATCH_INTERVAL)

    def kill(self, name: str, *, hold: float = 0.0) -> int | None:
        """SIGKILL the process (restarted once ``hold`` seconds passed); its pid, or None when it was not running."""
        managed = self.processes[name]
        pid = managed.pid
        if pid is None:
            return None
        managed.sample_rss()
        managed.hold_until = time.monotonic() + hold
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return pid

    def pause(self, name: str) -> int | None:
        """SIGSTOP: the process keeps its sockets but does nothing (a zombie replica)."""
        managed = self.processes[name]
        pid = managed.pid
        if pid is None:
            return None
        managed.sample_rss()
        os.killpg(pid, signal.SIGSTOP)
        managed.paused = True
        return pid

    def resume(self, name: str) -> None:
        managed = self.processes[name]
        pid = managed.pid
        if pid is not None and managed.paused:
            os.killpg(pid, signal.SIGCONT)
        managed.paused = False

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM every process, wait (bounded), SIGKILL what is left; the exit codes of the last incarnations."""
        self._running = False
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        for managed in self.processes.values():
            managed.sample_rss()
            if managed.pid is not None:
                if managed.paused:
                    self.resume(managed.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(managed.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        codes: dict[str, int | None] = {}
        for managed in self.processes.values():
            proc = managed.proc
            if proc is None:
                codes[managed.name] = None
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 5)
            codes[managed.name] = proc.returncode
        return codes
