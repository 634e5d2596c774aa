"""What the Java runtime's decoder makes of a frame, shaped like the conformance vectors' ``decoded_by_java``.

Nothing here is on a path that sends or receives: these views exist to compare our decoding with the
Java codec's, byte for byte and value for value (tests/protocol/test_vectors.py).
"""

from __future__ import annotations

from typing import Any

from runtime.protocol import jackson
from runtime.protocol.frames import TYPED_BODIES, HeaderlessFrame, Package, java_header_view

__all__ = ["java_body_view", "java_view"]


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


def java_view(frame: Package | HeaderlessFrame) -> dict[str, Any]:
    """A decoded frame as the vectors' ``decoded_by_java`` packages: header, body_java_type, body."""
    if isinstance(frame, HeaderlessFrame):
        return {"header": None if frame.header is None else dict(frame.header), "body_java_type": None, "body": None}
    java_type, body = java_body_view(frame)
    return {"header": java_header_view(frame.header), "body_java_type": java_type, "body": body}
