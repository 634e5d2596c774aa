"""``meshconnect demo`` end to end: four processes, events POSTed over HTTP land in the output file, Ctrl-C stops cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from asyncio.subprocess import Process
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def read_lines(out: Path) -> list[dict[str, Any]]:
    files = sorted(out.glob("events-*.jsonl"))
    return [orjson.loads(line) for path in files for line in path.read_bytes().splitlines() if line]


async def start_demo(http_port: int, out: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[Process, str]:
    """Start ``meshconnect demo``; return it once its banner (up to "Ctrl-C") is printed, and the banner."""
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime.cli",
        "demo",
        "--http-port",
        str(http_port),
        "--out",
        str(out),
        *extra,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert demo.stdout is not None
    banner = b""
    async with asyncio.timeout(60):
        while b"Ctrl-C" not in banner:
            line = await demo.stdout.readline()
            assert line, f"the demo ended before it was ready: {banner.decode()}"
            banner += line
    return demo, banner.decode()


def admin_endpoints(banner: str) -> dict[str, str]:
    """The process -> admin URL lines the banner prints."""
    return dict(re.findall(r"^  ([a-z-]+)\s+(http://127\.0\.0\.1:\d+)$", banner, re.MULTILINE))


async def test_demo_pipeline_delivers_http_events_to_files_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    http_port, out, state = free_port(), tmp_path / "out", tmp_path / "state"
    demo, banner = await start_demo(http_port, out, "--state-dir", str(state))
    assert demo.stdout is not None
    assert f"curl -i -X POST http://127.0.0.1:{http_port}/events" in banner
    endpoints = admin_endpoints(banner)
    assert endpoints.keys() == {"file-sink", "http-source"}, banner
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for url in endpoints.values():
            async with http.get(f"{url}/readyz") as response:
                assert response.status == 200, f"{url} is not the admin endpoint of a ready process"
    assert re.search(r"^  mesh\s+TCP 127\.0\.0\.1:\d+ ", banner, re.MULTILINE), banner
    url = f"http://127.0.0.1:{http_port}/events"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        binary = {"ce-specversion": "1.0", "ce-id": "b-1", "ce-source": "/test", "ce-type": "demo.binary"}
        async with http.post(url, data=b'{"mode": "binary"}', headers={**binary, "content-type": "application/json"}) as response:
            assert response.status < 300, await response.text()
        structured = {
            "specversion": "1.0",
            "id": "s-1",
            "source": "/test",
            "type": "demo.structured",
            "data": {"mode": "structured"},
        }
        async with http.post(
            url, data=orjson.dumps(structured), headers={"content-type": "application/cloudevents+json"}
        ) as response:
            assert response.status < 300, await response.text()
        async with http.post(url, json={"mode": "webhook"}) as response:
            assert response.status < 300, await response.text()
    async with asyncio.timeout(20):
        while len(lines := read_lines(out)) < 3:  # noqa: ASYNC110 - a file has no event to wait on
            await asyncio.sleep(0.1)
    by_mode = {line["data"]["mode"]: line for line in lines}
    assert set(by_mode) == {"binary", "structured", "webhook"}
    assert by_mode["binary"]["id"] == "b-1" and by_mode["binary"]["type"] == "demo.binary"
    assert by_mode["structured"]["id"] == "s-1"
    assert by_mode["webhook"]["subject"] == "demo"
    demo.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(demo.wait(), 60) == 0
    rest = (await demo.stdout.read()).decode()
    assert "stopped." in rest
    assert f"state left in {state}" in rest, "the --state-dir given is the user's: kept, and said so"
    assert (state / "file-sink.log").is_file()


async def test_demo_removes_the_state_directory_it_made_after_a_clean_stop(tmp_path: Path) -> None:
    temp = tmp_path / "temp"  # where the demo's own state directory goes (tempfile honours TMPDIR)
    temp.mkdir()
    demo, banner = await start_demo(free_port(), tmp_path / "out", env={**os.environ, "TMPDIR": str(temp)})
    (made,) = temp.iterdir()
    assert f"Configs, registry and logs: {made}" in banner
    demo.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(demo.wait(), 60) == 0
    assert list(temp.iterdir()) == [], "the demo left its temporary state directory behind"
