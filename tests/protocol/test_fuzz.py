"""Random and mutated bytes never make the decoder crash, hang or hoard memory."""

from __future__ import annotations

import contextlib
import random
import struct
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import HeaderlessFrameError, RemoteProtocolError
from runtime.protocol.frames import MAX_FRAME, PREFIX, FrameDecoder, Package, encode
from tests.protocol.vectors import ALL_FRAMES

_SEEDS = [frame for _, frame in ALL_FRAMES if len(frame) < 5000]


def drive(data: bytes, chunk_sizes: list[int]) -> None:
    """Feed ``data`` in chunks, going on past headerless frames as Java does; only RemoteProtocolError may escape."""
    for go_on_past_headerless in (False, True):
        decoder = FrameDecoder()
        position = 0
        sizes = iter(chunk_sizes or [len(data) or 1])
        try:
            while position < len(data):
                size = next(sizes, len(data))
                chunk = data[position : position + max(1, size)]
                position += len(chunk)
                for package in _feed(decoder, chunk, go_on_past_headerless):
                    _touch(package)
                assert decoder.buffered <= MAX_FRAME
        except RemoteProtocolError as exc:
            assert str(exc)


def _feed(decoder: FrameDecoder, chunk: bytes, go_on_past_headerless: bool) -> list[Package]:
    packages: list[Package] = []
    while True:
        try:
            return packages + decoder.feed(chunk)
        except HeaderlessFrameError as headerless:
            if not go_on_past_headerless:
                raise
            packages += headerless.packages
            chunk = b""


def _touch(package: Package) -> None:
    """Exercise the accessors a client would call; typed ones may only fail with RemoteProtocolError."""
    package.text()
    for accessor in (package.user_agent, package.subscription, package.redirect_info):
        with contextlib.suppress(RemoteProtocolError):
            accessor()


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1:
            cut = rng.randrange(len(data) + 1)
            del data[cut : cut + rng.randint(1, 20)]
        elif choice == 2:
            cut = rng.randrange(len(data) + 1)
            data[cut:cut] = rng.randbytes(rng.randint(1, 20))
        elif choice == 3 and len(data) >= 17:
            struct.pack_into(
                ">I", data, 13, rng.choice([0, 8, 9, 13, len(data) - 8 + rng.randint(-3, 3), 2**32 - 1, MAX_FRAME - 8])
            )
        elif choice == 4 and len(data) >= 21:
            struct.pack_into(">i", data, 17, rng.choice([0, -1, 1, len(data), -(2**31), 2**31 - 1, rng.randint(0, 200)]))
        else:
            data += rng.choice(_SEEDS)
    return bytes(data)


def test_mutated_vector_frames_fail_only_with_remote_protocol_error() -> None:
    rng = random.Random(20240506)
    started = time.monotonic()
    for _ in range(20000):
        data = mutate(rng, rng.choice(_SEEDS))
        drive(data, [rng.randint(1, 64) for _ in range(rng.randint(0, 8))])
    assert time.monotonic() - started < 30


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=10))
def test_random_bytes_fail_only_with_remote_protocol_error(data: bytes, chunk_sizes: list[int]) -> None:
    drive(data, chunk_sizes)
    drive(PREFIX + data, chunk_sizes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200), st.integers(-(2**31), 2**31 - 1))
def test_random_headers_and_bodies_in_valid_framing(header: bytes, body: bytes, header_length: int) -> None:
    framed = PREFIX + struct.pack(">ii", 13 + len(header) + len(body), len(header)) + header + body
    drive(framed, [])
    lying = PREFIX + struct.pack(">ii", 13 + len(header) + len(body), header_length) + header + body
    drive(lying, [7, 3])


def test_a_trickle_of_a_large_frame_stays_bounded_and_decodes() -> None:
    large = next(frame for name, frame in ALL_FRAMES if name == "eventmeshmessage_large_body_100k")
    decoder = FrameDecoder()
    packages = []
    for start in range(0, len(large), 7):
        packages += decoder.feed(large[start : start + 7])
        assert decoder.buffered < len(large)
    assert [encode(package) for package in packages] == [large]
