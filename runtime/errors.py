"""The one error hierarchy of meshconnect, split by what the caller must do.

::

    MeshConnectError                 root: catch this to catch everything of ours
    ├── ConfigError                  bad configuration: fail at start-up, naming the key and the fix
    ├── RetriableError               a dependency is unavailable: back off (retry_after) and try again
    │   ├── MeshUnavailableError     the mesh connection is down, or a request to it timed out
    │   └── RegistryUnavailableError the offset/lease store cannot be reached
    ├── DataError                    this record cannot be handled: dead-letter it, keep going
    ├── ProtocolError                the EventMesh TCP protocol was broken
    │   ├── LocalProtocolError       ... by us (a package we were asked to encode is invalid)
    │   │   └── FrameTooLargeError   ... a frame over the 4 MiB limit: the event itself must shrink
    │   └── RemoteProtocolError      ... by the peer (malformed bytes, unknown command)
    │       └── HeaderlessFrameError ... a well-framed frame without header or cmd: end the session with a goodbye
    ├── MeshRejectedError            the mesh answered a request with a failure code
    │   └── HelloRefusedError        the handshake was refused (authentication included)
    └── FencedError                  the lease is lost: stop writing offsets and go to standby

Every message says what happened, to what, and what to do. Foreign exceptions are translated
into these at one seam per boundary (``raise Ours(...) from exc``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.protocol.frames import Package

__all__ = [
    "ConfigError",
    "DataError",
    "FencedError",
    "FrameTooLargeError",
    "HeaderlessFrameError",
    "HelloRefusedError",
    "LocalProtocolError",
    "MeshConnectError",
    "MeshRejectedError",
    "MeshUnavailableError",
    "ProtocolError",
    "RegistryUnavailableError",
    "RemoteProtocolError",
    "RetriableError",
]


class MeshConnectError(Exception):
    """Root of every error meshconnect raises on purpose."""


class ConfigError(MeshConnectError):
    """A configuration value is missing or wrong; raised before anything connects.

    ``key`` is the dotted path of the offending setting (``connector.table``), ``problem`` what is
    wrong with its value, ``fix`` what the user should write instead.
    """

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"config key '{key}': {problem}; fix: {fix}")


class RetriableError(MeshConnectError):
    """A dependency failed in a way that may heal: the caller backs off and retries.

    ``retry_after`` (seconds) is a hint from the failing side, e.g. an HTTP Retry-After header.
    Never dead-lettered: the record is fine, the world around it is not.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class MeshUnavailableError(RetriableError):
    """The EventMesh connection is down, or a request to the mesh timed out."""


class RegistryUnavailableError(RetriableError):
    """The offset and lease store (Redis or the state directory) cannot be reached."""


class DataError(MeshConnectError):
    """This record cannot be handled (bad shape, wrong type, unknown column).

    The worker sends it to the dead-letter topic with ``reason`` and carries on with the others.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ProtocolError(MeshConnectError):
    """The EventMesh TCP protocol was broken; the connection cannot be trusted any more."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow (e.g. a frame over 4 MiB)."""


class FrameTooLargeError(LocalProtocolError):
    """A frame would exceed the 4 MiB limit of the protocol: sending the same event again can never work."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid EventMesh frame.

    ``packages`` are the frames a decoder completed before the bad one in the same call: the Java runtime
    handles those before it closes the connection, and a server that mirrors it does the same.
    """

    packages: tuple[Package, ...] = ()


class HeaderlessFrameError(RemoteProtocolError):
    """A frame with no header, or a header without ``cmd``: well framed, but nothing can dispatch it.

    The Java runtime's decoder delivers such a frame and its session answers with SERVER_GOODBYE_REQUEST;
    ``header`` is Jackson's view of the header (``cmd`` None), or None when there was none. The frame is
    consumed: the decoder stays usable for the bytes after it.
    """

    def __init__(self, message: str, header: Mapping[str, Any] | None) -> None:
        self.header = header
        super().__init__(message)


class MeshRejectedError(MeshConnectError):
    """The mesh answered a request with a failure code; ``desc`` is its reason, verbatim."""

    def __init__(self, command: str, code: int, desc: str | None) -> None:
        self.command = command
        self.code = code
        self.desc = desc
        super().__init__(f"mesh rejected {command} with code {code}: {desc or 'no reason given'}")


class HelloRefusedError(MeshRejectedError):
    """The mesh refused the handshake: check user, password, token, group and purpose."""


class FencedError(MeshConnectError):
    """Our lease was taken over (or expired): this replica must stop writing and go to standby."""
