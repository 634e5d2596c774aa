"""Who the client is (its HELLO identity) and where the mesh is (its addresses)."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Literal

from runtime.errors import ConfigError
from runtime.protocol.frames import UserAgent

__all__ = ["PROTOCOL_VERSION", "Address", "parse_addresses", "user_agent_for"]

Address = tuple[str, int]
PROTOCOL_VERSION = "2.0"
"""The client version sent in the HELLO (the Java runtime requires one; it is informational)."""


def parse_addresses(address: str | Address | Sequence[str | Address]) -> tuple[Address, ...]:
    """``"host:port"``, ``"h1:p1,h2:p2"``, ``("host", port)`` or a list of those."""
    if isinstance(address, tuple) and len(address) == 2 and isinstance(address[1], int):
        return ((str(address[0]), address[1]),)
    items: Sequence[str | Address] = address.split(",") if isinstance(address, str) else address
    parsed: list[Address] = []
    for item in items:
        if isinstance(item, tuple):
            parsed.append((str(item[0]), int(item[1])))
            continue
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                "mesh.address", f"{item!r} is not host:port", 'write e.g. "127.0.0.1:10000" (comma-separate several)'
            )
        parsed.append((host.strip("[]"), int(port)))
    if not parsed:
        raise ConfigError("mesh.address", "no address given", 'write e.g. "127.0.0.1:10000"')
    return tuple(parsed)


def user_agent_for(
    group: str,
    purpose: Literal["pub", "sub"],
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    idc: str = "DEFAULT",
    env: str = "PRD",
    subsystem: str = "5023",
    unack: int = 0,
) -> UserAgent:
    """A complete HELLO identity: pid, host and version filled in from this process; ``unack`` is the push
    window asked of the mesh (0: the mesh's default)."""
    return UserAgent(
        env=env,
        subsystem=subsystem,
        path=os.getcwd(),
        pid=os.getpid(),
        host=socket.gethostname(),
        port=0,
        version=PROTOCOL_VERSION,
        username=username,
        password=password,
        token=token,
        idc=idc,
        group=group,
        purpose=purpose,
        unack=unack,
    )
