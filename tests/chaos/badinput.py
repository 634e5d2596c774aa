"""Bad input thrown at the running system: malformed HTTP requests, garbage frames on the mesh port, bad configs.

Each kind has an expected clear outcome, and every attempt is recorded as *handled* (it got that
outcome) or *mishandled* (anything else, with what happened):

* malformed CloudEvents over HTTP, events over the size limit and events naming a topic the
  config does not allow -> a 4xx whose JSON body gives the reason;
* garbage and truncated frames on the mesh port -> the mesh closes the connection (or, for a
  truncated frame, waits for the rest until the peer goes away) and goes on serving everyone else;
  a connection that stalls before its HELLO, or sends more of a frame than a HELLO needs, is closed;
* a bad config at start-up -> the process exits 2 and names the key on stderr.

Does-not-fit data (valid events the sink's table refuses) is sent by :class:`~tests.chaos.loadgen.HttpLoad`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import struct
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from runtime.client import user_agent_for
from runtime.protocol.frames import PREFIX, Command, Header, Package, encode

__all__ = ["BOUNDED_BEFORE_HELLO", "BadConfig", "BadInput", "GARBAGE_FRAMES", "Limits", "MALFORMED_HTTP"]

_VALID = {"specversion": "1.0", "id": "malformed", "source": "/chaos/bad", "type": "chaos.bad"}


def _structured(document: Mapping[str, Any] | bytes) -> tuple[dict[str, str], bytes]:
    body = document if isinstance(document, bytes) else orjson.dumps(document)
    return {"content-type": "application/cloudevents+json"}, body


def _binary(extra: Mapping[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
    headers = {"content-type": "application/json", **{f"ce-{key}": value for key, value in _VALID.items()}, **extra}
    return headers, body


@dataclass(frozen=True)
class Limits:
    """The http-source's bounds the oversize kinds must cross."""

    body_bytes: int
    event_bytes: int


# kind -> (headers, body) factory given the endpoint's limits
MALFORMED_HTTP: dict[str, Callable[[Limits], tuple[dict[str, str], bytes]]] = {
    "wrong_content_type": lambda _limits: ({"content-type": "text/plain"}, b"just some text"),
    "invalid_json": lambda _limits: _structured(b'{"specversion": "1.0", "id": "x", "source": '),
    "missing_attributes": lambda _limits: _structured({"specversion": "1.0", "type": "chaos.bad", "data": {"a": 1}}),
    "oversize_body": lambda limits: _binary({}, orjson.dumps({"blob": "x" * (limits.body_bytes + 1)})),
    "oversize_event": lambda limits: _binary({}, orjson.dumps({"blob": "x" * (limits.event_bytes + 1)})),
    "invalid_extension_name": lambda _limits: _structured({**_VALID, "Bad_Name!": "x", "data": {"a": 1}}),
    "invalid_extension_header": lambda _limits: _binary({"ce-under_score": "x"}, b'{"a": 1}'),
    # A sender aiming at another pipeline's topic (the cdc sink's) is refused: topics come from the config.
    "topic_not_allowed": lambda _limits: _binary({"ce-subject": "shop.items"}, b'{"a": 1}'),
    "reserved_extension": lambda _limits: _binary({"ce-meshdataenc": "base64"}, b'{"a": 1}'),
}


def _frame(length: int, header_length: int, rest: bytes) -> bytes:
    return PREFIX + struct.pack(">Ii", length, header_length) + rest


def _hello_frame() -> bytes:
    return encode(Package.with_json(Header(Command.HELLO_REQUEST, seq="1"), user_agent_for("chaos-bad", "pub")))


# kind -> (bytes to send, whether the mesh must close the connection itself)
GARBAGE_FRAMES: dict[str, tuple[Callable[[], bytes], bool]] = {
    "wrong_magic": (lambda: b"NotEventMesh!" + struct.pack(">I", 20) + b"\x00" * 20, True),
    "oversize_length": (lambda: _frame(0x7FFFFFF0, 10, b"{}"), True),
    "bad_header_json": (lambda: _frame(13 + 9, 9, b"{not json"), True),
    "headerless": (lambda: _frame(13, 0, b""), True),
    "truncated": (lambda: _hello_frame()[: len(_hello_frame()) // 2], False),
    # Half of a 4 MiB frame before any HELLO: the mesh buffers no more than a HELLO needs.
    "big_frame_before_hello": (lambda: _frame(4 * 1024 * 1024, 10, b"{}" + b"x" * (2 * 1024 * 1024)), True),
    # The start of a HELLO, then silence: closed at the mesh's hello timeout, not held for good.
    "stalled_before_hello": (lambda: _hello_frame()[:20], True),
}
# The frame kinds the mesh closes for a flood bound (logged as ``mesh.refused``, one line per bound and
# second), not for being undecodable (one ``mesh.session.undecodable`` or ``headerless_frame`` line each).
BOUNDED_BEFORE_HELLO = frozenset({"big_frame_before_hello", "stalled_before_hello"})


@dataclass(frozen=True)
class BadConfig:
    """A worker config with one mistake; ``key`` must be named in the refusal."""

    kind: str
    connector: str
    config: Mapping[str, Any]
    key: str


@dataclass
class BadInput:
    """Sends bad input of every kind in turn (see the module docstring) and records what came back."""

    http_urls: list[str]
    mesh_port: int
    max_body_bytes: int
    max_event_bytes: int
    workdir: Path
    bad_configs: list[BadConfig] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)
    handled: Counter[str] = field(default_factory=Counter)
    mishandled: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event, *, every: float = 1.0, configs_every: float = 10.0) -> None:
        """One bad HTTP request or frame each ``every`` seconds, one bad config each ``configs_every``, until ``stop``."""
        kinds = itertools.cycle([("http", kind) for kind in MALFORMED_HTTP] + [("frame", kind) for kind in GARBAGE_FRAMES])
        urls = itertools.cycle(self.http_urls)
        configs = itertools.cycle(self.bad_configs)
        loop = asyncio.get_running_loop()
        next_config = loop.time() + configs_every / 2
        config_task: asyncio.Task[None] | None = None
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as http:
            while not stop.is_set():
                channel, kind = next(kinds)
                if channel == "http":
                    await self._http(http, next(urls), kind)
                else:
                    await self._frame(kind)
                if self.bad_configs and loop.time() >= next_config and (config_task is None or config_task.done()):
                    next_config = loop.time() + configs_every
                    config_task = asyncio.create_task(self._config(next(configs)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)
            if config_task is not None:
                await config_task

    async def _http(self, http: aiohttp.ClientSession, url: str, kind: str) -> None:
        headers, body = MALFORMED_HTTP[kind](Limits(self.max_body_bytes, self.max_event_bytes))
        label = f"http.{kind}"
        self.sent[label] += 1
        try:
            async with http.post(url, data=body, headers=headers) as response:
                status = response.status
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            # The replica was being killed: that says nothing about bad input; it is not counted.
            self.sent[label] -= 1
            return
        reason = ""
        with contextlib.suppress(orjson.JSONDecodeError):
            answer = orjson.loads(text)
            reason = str(answer.get("error", "")) if isinstance(answer, dict) else ""
        if 400 <= status < 500 and reason:
            self.handled[label] += 1
            self.reasons.setdefault(label, f"{status} {reason[:120]}")
        elif status == 503:
            self.sent[label] -= 1  # the replica was busy or draining: not an answer about the input
        else:
            self.mishandled.append(f"{label}: HTTP {status} {text[:200]}")

    async def _frame(self, kind: str) -> None:
        make, mesh_closes = GARBAGE_FRAMES[kind]
        label = f"frame.{kind}"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.mesh_port), 3)
        except (OSError, TimeoutError):
            return  # the mesh is being restarted: nothing was sent
        self.sent[label] += 1
        try:
            writer.write(make())
            await writer.drain()
            if not mesh_closes:
                await asyncio.sleep(0.2)
                self.handled[label] += 1
                self.reasons.setdefault(label, "mesh waited for the rest; closed by the sender")
                return
            try:
                while await asyncio.wait_for(reader.read(4096), 5):
                    pass
            except TimeoutError:
                self.mishandled.append(f"{label}: the mesh kept the connection open")
                return
            except OSError:
                pass  # reset by the mesh: closed, which is the expected outcome
            self.handled[label] += 1
            self.reasons.setdefault(label, "connection closed by the mesh")
        except OSError as exc:
            self.handled[label] += 1
            self.reasons.setdefault(label, f"connection closed by the mesh ({type(exc).__name__})")
        finally:
            writer.transport.abort()

    async def _config(self, bad: BadConfig) -> None:
        label = f"config.{bad.kind}"
        path = self.workdir / f"bad-{bad.kind}.yaml"
        await asyncio.to_thread(path.write_text, yaml.safe_dump(dict(bad.config), sort_keys=False))
        self.sent[label] += 1
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runtime.cli",
            "run",
            bad.connector,
            "--config",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()
            self.mishandled.append(f"{label}: still running after 60 s instead of refusing to start")
            return
        text = (out + err).decode(errors="replace")
        if process.returncode == 2 and bad.key in text:
            self.handled[label] += 1
            line = next((line for line in text.splitlines() if bad.key in line), "")
            self.reasons.setdefault(label, f"exit 2: {line.strip()[:160]}")
        else:
            self.mishandled.append(f"{label}: exit {process.returncode}, key {bad.key!r} named: {bad.key in text}: {text[-300:]}")
