"""The native message brokers: Mosquitto (MQTT) and NATS with JetStream."""

from __future__ import annotations

import getpass
from collections.abc import Sequence

from tests.servers.process import ServerProcess, require_binary

__all__ = ["MosquittoServer", "NatsServer"]


class MosquittoServer(ServerProcess):
    name = "mosquitto"

    def __init__(self) -> None:
        self.binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
        super().__init__()

    def prepare(self) -> None:
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nmax_queued_messages 100000\n"
            # Run as whoever owns the data dir: as root, mosquitto would otherwise drop to its own
            # user and could not save its sessions there.
            f"user {getpass.getuser()}\n"
        )

    def command(self) -> Sequence[str]:
        return [self.binary, "-c", str(self.dir / "mosquitto.conf")]


class NatsServer(ServerProcess):
    name = "nats"

    def __init__(self) -> None:
        self.binary = require_binary("nats-server", "/usr/sbin/nats-server")
        super().__init__()

    def command(self) -> Sequence[str]:
        return [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.dir / "js")]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"
