"""Byte-exact conformance with the Java codec: every vector encodes to its frame and decodes like Java did."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.errors import HeaderlessFrameError, RemoteProtocolError
from runtime.protocol import jackson
from runtime.protocol.frames import FrameDecoder, Package, encode
from runtime.protocol.java import frame_as_written, java_view
from tests.protocol.vectors import ALL_FRAMES, MALFORMED, VALID, expected_outcome, expected_packages

_EVERY_SPLIT_UP_TO = 20_000  # bytes; larger frames (the 100 KiB body) are split at 2000 evenly spaced points


def _decode_java(chunks: list[bytes]) -> tuple[list[dict[str, Any]], RemoteProtocolError | None, int]:
    decoder = FrameDecoder()
    views: list[dict[str, Any]] = []
    for chunk in chunks:
        data = chunk
        while True:  # past a headerless frame, Java's decoder goes on with the bytes after it
            try:
                views += [java_view(package) for package in decoder.feed(data)]
                break
            except HeaderlessFrameError as headerless:
                views += [java_view(package) for package in headerless.packages] + [java_view(headerless)]
                data = b""
            except RemoteProtocolError as error:
                views += [java_view(package) for package in error.packages]
                return views, error, decoder.buffered
    return views, None, decoder.buffered


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["name"])
def test_valid_vector_encodes_byte_for_byte(vector: dict[str, Any]) -> None:
    header_json = jackson.dumps(vector["header"])
    assert header_json == vector["header_json_text"].encode()
    assert frame_as_written(header_json, vector["body_text"].encode()).hex() == vector["frame_hex"]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["name"])
def test_valid_vector_decodes_like_java_and_reencodes(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["frame_hex"])
    packages = FrameDecoder().feed(frame)
    assert [java_view(package) for package in packages] == expected_packages(vector)
    # Packages whose body Java keeps re-encode to the very same bytes through Header/Package.
    if all(package.body is not None or not vector["body_text"] for package in packages):
        assert b"".join(encode(package) for package in packages) == frame


@pytest.mark.parametrize("vector", MALFORMED, ids=lambda v: v["name"])
def test_malformed_vector_gets_javas_verdict(vector: dict[str, Any]) -> None:
    verdict = expected_outcome(vector)
    views, error, buffered = _decode_java([bytes.fromhex(vector["frame_hex"])])
    assert views == expected_packages(vector)
    if verdict["outcome"] == "error":
        assert error is not None
        assert str(error)
    else:
        assert error is None
        assert verdict["outcome"] in {"decoded", "decoded_with_pending_bytes", "incomplete_waiting_for_more_bytes"}
        assert buffered == verdict["unconsumed_bytes"]
        assert (buffered > 0) == (verdict["outcome"] != "decoded")


@pytest.mark.parametrize("vector", MALFORMED, ids=lambda v: v["name"])
def test_strict_feed_refuses_what_java_refuses_or_cannot_dispatch(vector: dict[str, Any]) -> None:
    verdict = expected_outcome(vector)
    decoder = FrameDecoder()
    frame = bytes.fromhex(vector["frame_hex"])
    headerless = any(package["header"] is None or package["header"]["cmd"] is None for package in verdict["packages"])
    if verdict["outcome"] == "error" or headerless:
        with pytest.raises(RemoteProtocolError):
            decoder.feed(frame)
        with pytest.raises(RemoteProtocolError, match="unusable"):
            decoder.feed(b"")
    else:
        assert len(decoder.feed(frame)) == len(verdict["packages"])


@pytest.mark.parametrize(("name", "frame"), ALL_FRAMES, ids=[name for name, _ in ALL_FRAMES])
def test_any_chunking_gives_the_same_result(name: str, frame: bytes) -> None:
    whole = _decode_java([frame])
    step = 1 if len(frame) <= _EVERY_SPLIT_UP_TO else len(frame) // 2000
    for split in [*range(0, len(frame) + 1, step), len(frame) - 1]:
        views, error, _ = _decode_java([frame[:split], frame[split:]])
        assert views == whole[0], f"split at {split}"
        assert (error is None) == (whole[1] is None), f"split at {split}"
    one_byte = _decode_java([frame[index : index + 1] for index in range(len(frame))])
    assert one_byte[0] == whole[0]
    assert (one_byte[1] is None) == (whole[1] is None)


def test_all_vectors_back_to_back_in_one_stream() -> None:
    stream = b"".join(bytes.fromhex(vector["frame_hex"]) for vector in VALID)
    decoder = FrameDecoder()
    packages: list[Package] = []
    for start in range(0, len(stream), 1000):
        packages += decoder.feed(stream[start : start + 1000])
    assert [java_view(package) for package in packages] == [p for v in VALID for p in expected_packages(v)]
    assert decoder.buffered == 0
