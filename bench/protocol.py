"""EventMesh TCP hot path: (a) codec encode+decode, (b) publish-with-ack through MeshClient.

(a) 1 KiB CloudEvent publishes: ``publish_frame`` (event mapping included), then
    ``FrameDecoder.feed`` over 64 KiB chunks; baseline: the same body bytes framed with a bare
    4-byte length prefix and split again.
(b) publish-with-ack events/s from one task, window ``WINDOW``, to the embedded mesh running in
    its own process (``python -m runtime.commands.mesh``); baseline: a raw asyncio server process
    reading length-prefixed frames of the same size and writing a 4-byte ack per frame, driven by a
    raw asyncio.Protocol client with the same window, one write per frame and per ack (the ratio's
    baseline); the same with one write per loop turn on both sides is printed for reference. Each
    measured client runs after ``freeze_startup_heap()``, as in every meshconnect process, so the
    garbage collector does not walk the pre-built inputs; the raw client gets the same treatment.
    Each measure runs ``RUNS`` times; medians are printed.

The last line is ``ratio: <client events/s / raw events/s>`` (target >= 0.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cloudevents.core.v1.event import CloudEvent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.app import freeze_startup_heap  # noqa: E402
from runtime.client import MeshClient, user_agent_for  # noqa: E402
from runtime.protocol.events import event_to_body, publish_frame  # noqa: E402
from runtime.protocol.frames import Command, FrameDecoder  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
CODEC_EVENTS = 20_000
PUBLISH_EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
WINDOW = 1000
CHUNK = 65536
_LENGTH = struct.Struct(">I")

RAW_SERVER = r"""
import asyncio, struct, sys
LENGTH = struct.Struct(">I")
ACK = LENGTH.pack(0)

BATCHED = sys.argv[2] == "batched"

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, bytearray()
    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        position, acks = 0, 0
        while len(buffer) - position >= 4:
            (size,) = LENGTH.unpack_from(buffer, position)
            if len(buffer) - position - 4 < size:
                break
            position += 4 + size
            acks += 1
            if not BATCHED:
                self.transport.write(ACK)
        del buffer[:position]
        if acks and BATCHED:
            self.transport.write(ACK * acks)

async def main():
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def one_kib_event(number: int) -> CloudEvent:
    return CloudEvent(
        attributes={
            "id": f"bench-{number:08d}",
            "source": "/bench/protocol",
            "type": "bench.event",
            "specversion": "1.0",
            "subject": "bench",
            "time": datetime(2026, 1, 1, tzinfo=UTC),
            "datacontenttype": "application/json",
        },
        data={"n": number, "payload": "x" * 800},
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (its threads included), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def spawn(args: list[str], port: int, stderr: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a Python server process and wait until it listens on ``port``; its stderr goes to ``stderr`` if given."""
    with open(stderr, "wb") if stderr is not None else contextlib.nullcontext(subprocess.DEVNULL) as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    wait_for_port(port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- (a) codec ----------------------------------------------------------------------------------


def bench_codec(events: list[CloudEvent]) -> tuple[float, float]:
    """(codec packages/s, bare framing packages/s) for encode + decode of ``events``."""
    started = time.perf_counter()
    wire = b"".join(publish_frame(event, Command.ASYNC_MESSAGE_TO_SERVER, f"{n:010d}") for n, event in enumerate(events))
    decoder = FrameDecoder()
    decoded = sum(len(decoder.feed(wire[offset : offset + CHUNK])) for offset in range(0, len(wire), CHUNK))
    codec_seconds = time.perf_counter() - started
    assert decoded == len(events)

    bodies = [event_to_body(event) for event in events]
    started = time.perf_counter()
    raw = b"".join(_LENGTH.pack(len(body)) + body for body in bodies)
    frames, position = 0, 0
    while position < len(raw):
        (size,) = _LENGTH.unpack_from(raw, position)
        _ = raw[position + 4 : position + 4 + size]
        position += 4 + size
        frames += 1
    raw_seconds = time.perf_counter() - started
    assert frames == len(events)
    return len(events) / codec_seconds, len(events) / raw_seconds


# -- (b) publish with ack -----------------------------------------------------------------------


async def publish_through_client(port: int, events: list[CloudEvent], host: str = "127.0.0.1", window: int = WINDOW) -> float:
    async with MeshClient(f"{host}:{port}", user_agent_for("bench", "pub"), max_in_flight=window, request_timeout=60) as client:
        await client.publish(events[0])  # warm the connection before the clock starts
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        remaining = len(events)

        def acked(waiter: asyncio.Future[None]) -> None:
            nonlocal remaining
            if waiter.exception() is not None and not finished.done():
                finished.set_exception(waiter.exception())  # type: ignore[arg-type]
            remaining -= 1
            if remaining == 0 and not finished.done():
                finished.set_result(None)

        started = time.perf_counter()
        for event in events:
            (await client.start_publish(event)).add_done_callback(acked)
        await finished
        return len(events) / (time.perf_counter() - started)


class _RawClient(asyncio.Protocol):
    def __init__(self, batched: bool) -> None:
        self.batched = batched
        self.acked = 0
        self.room: asyncio.Future[None] | None = None
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.buffered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffered += len(data)
        acks, self.buffered = divmod(self.buffered, 4)
        self.acked += acks
        if self.room is not None and not self.room.done():
            self.room.set_result(None)

    def send(self, frame: bytes) -> None:
        if not self.batched:
            assert self.transport is not None
            self.transport.write(frame)
            return
        self.outgoing.append(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        assert self.transport is not None
        self.transport.writelines(self.outgoing)
        self.outgoing.clear()


async def publish_raw(port: int, payloads: list[bytes], batched: bool) -> float:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(lambda: _RawClient(batched), "127.0.0.1", port)
    try:
        started = time.perf_counter()
        for sent, payload in enumerate(payloads, start=1):
            while sent - client.acked > WINDOW:
                client.room = loop.create_future()
                await asyncio.wait_for(client.room, 30)
            client.send(_LENGTH.pack(len(payload)) + payload)
        while client.acked < len(payloads):
            client.room = loop.create_future()
            await asyncio.wait_for(client.room, 30)
        return len(payloads) / (time.perf_counter() - started)
    finally:
        transport.close()


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    events = [one_kib_event(n) for n in range(max(CODEC_EVENTS, PUBLISH_EVENTS))]
    frame_size = len(publish_frame(events[0], Command.ASYNC_MESSAGE_TO_SERVER, "0000000001"))
    print(f"event: {len(event_to_body(events[0]))} body bytes, {frame_size} frame bytes; runs: {RUNS}")

    codec_rates, framing_rates = zip(*(bench_codec(events[:CODEC_EVENTS]) for _ in range(RUNS)), strict=True)
    codec, framing = statistics.median(codec_rates), statistics.median(framing_rates)
    print(
        f"(a) codec encode+decode: {codec:,.0f} packages/s; "
        f"bare length-prefix framing: {framing:,.0f}/s; ratio {codec / framing:.3f}"
    )

    publish_events = events[:PUBLISH_EVENTS]
    payloads = [publish_frame(event, Command.ASYNC_MESSAGE_TO_SERVER, "0000000001") for event in publish_events]
    client_rates: list[float] = []
    raw_rates: list[float] = []
    batched_rates: list[float] = []
    for run in range(RUNS):
        port = free_port()
        mesh = spawn(["-m", "runtime.commands.mesh", "--port", str(port), "--log-level", "error"], port)
        try:
            renamed = [on_topic(event, f"bench-{run}") for event in publish_events]
            freeze_startup_heap()  # as every meshconnect process does at its entry point; the raw side gets the same
            client_rates.append(asyncio.run(publish_through_client(port, renamed)))
        finally:
            stop(mesh)
        for batched, rates in ((False, raw_rates), (True, batched_rates)):
            port = free_port()
            raw_server = spawn(["-c", RAW_SERVER, str(port), "batched" if batched else "per-frame"], port)
            try:
                freeze_startup_heap()
                rates.append(asyncio.run(publish_raw(port, payloads, batched)))
            finally:
                stop(raw_server)
        print(
            f"    run {run + 1}: client {client_rates[-1]:,.0f}/s, "
            f"raw {raw_rates[-1]:,.0f}/s, raw batched {batched_rates[-1]:,.0f}/s"
        )
    client, raw, batched_raw = (statistics.median(rates) for rates in (client_rates, raw_rates, batched_rates))
    print(f"(b) publish with ack, window {WINDOW}: client -> embedded mesh {client:,.0f} events/s")
    print(f"    raw asyncio, one write per frame and per ack: {raw:,.0f} events/s (the baseline)")
    print(
        f"    raw asyncio, one write per loop turn (no protocol work at all): {batched_raw:,.0f} events/s, "
        f"ratio {client / batched_raw:.3f}"
    )
    print(f"ratio: {client / raw:.3f}")


def on_topic(event: CloudEvent, topic: str) -> CloudEvent:
    return CloudEvent(attributes={**event.get_attributes(), "subject": topic}, data=event.get_data())


if __name__ == "__main__":
    main()
