"""``meshconnect demo`` end to end: four processes, events POSTed over HTTP land in the output file, Ctrl-C stops cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def read_lines(out: Path) -> list[dict[str, Any]]:
    files = sorted(out.glob("events-*.jsonl"))
    return [orjson.loads(line) for path in files for line in path.read_bytes().splitlines() if line]


async def test_demo_pipeline_delivers_http_events_to_files_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    http_port, out = free_port(), tmp_path / "out"
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime.cli",
        "demo",
        "--http-port",
        str(http_port),
        "--out",
        str(out),
        "--state-dir",
        str(tmp_path / "state"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert demo.stdout is not None
    banner = b""
    async with asyncio.timeout(60):
        while b"Ctrl-C" not in banner:
            line = await demo.stdout.readline()
            assert line, f"the demo ended before it was ready: {banner.decode()}"
            banner += line
    assert f"curl -i -X POST http://127.0.0.1:{http_port}/events".encode() in banner
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
    rest = await demo.stdout.read()
    assert b"stopped." in rest
