"""An S3 endpoint: moto in server mode."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from tests.servers.process import ServerProcess, unavailable

__all__ = ["MotoS3Server"]


class MotoS3Server(ServerProcess):
    """moto's S3 in server mode: a real HTTP S3 endpoint, its objects in memory (a restart empties it).

    ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT) make it an endpoint that stops answering and comes
    back with its objects: an outage that keeps the data, as a real store's would.
    """

    name = "moto"
    access_key = "testing-access-key"
    secret_key = "testing-secret-key"

    def __init__(self) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            unavailable("moto[s3] with flask is not installed (pip install -e '.[dev]')")
        super().__init__()

    def command(self) -> Sequence[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def pause(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a stopped process acts on SIGTERM only once continued
        super().terminate()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
