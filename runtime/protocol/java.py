"""What the Java runtime's decoder makes of a frame, shaped like the conformance vectors' ``decoded_by_java``.

Nothing here is on a path that sends or receives: these views exist to compare our decoding with the
Java codec's, byte for byte and value for value (tests/protocol/test_vectors.py), and to show frames
the way Java holds them (``meshconnect protocol``).
"""

from __future__ import annotations

from typing import Any

from runtime.errors import HeaderlessFrameError
from runtime.protocol import jackson
from runtime.protocol.frames import NULL_PROPERTIES, TYPED_BODIES, Header, Package, frame_bytes

__all__ = ["frame_as_written", "headerless_header_view", "java_body_view", "java_header_view", "java_view"]


def java_header_view(header: Header) -> dict[str, Any]:
    """The header as Java's decoder holds it (cmd, code, desc, seq, properties): what ``meshconnect protocol decode`` shows."""
    properties = None if header.properties is NULL_PROPERTIES else dict(header.properties)
    return {"cmd": header.command.name, "code": header.code, "desc": header.desc, "seq": header.seq, "properties": properties}


def headerless_header_view(error: HeaderlessFrameError) -> dict[str, Any] | None:
    """The header of a frame Java decodes but cannot dispatch: Jackson's view (``cmd`` None), or None without one."""
    return None if error.header is None else dict(error.header)


def java_body_view(package: Package) -> tuple[str | None, Any]:
    """What Java's decoder turns the body into: (Java class name, value)."""
    if package.body is None:
        return None, None
    typed = TYPED_BODIES.get(package.header.command)
    if typed is None:
        return "String", package.text()
    java_type, view = typed
    value = jackson.as_object(jackson.parse(package.body), java_type)
    return java_type, None if value is None else view(value)


def java_view(frame: Package | HeaderlessFrameError) -> dict[str, Any]:
    """A decoded frame as the vectors' ``decoded_by_java`` packages: header, body_java_type, body."""
    if isinstance(frame, HeaderlessFrameError):
        return {"header": headerless_header_view(frame), "body_java_type": None, "body": None}
    java_type, body = java_body_view(frame)
    return {"header": java_header_view(frame.header), "body_java_type": java_type, "body": body}


def frame_as_written(header_json: bytes, body: bytes) -> bytes:
    """A frame whose header JSON is taken as written (Java's own bytes, or any a peer might send), not built.

    ``encode`` writes only headers built from a ``Header``; the vectors and ``meshconnect protocol encode``
    need headers exactly as given (key order, unknown keys, no cmd), framed the same way.
    """
    return frame_bytes(header_json, body)
