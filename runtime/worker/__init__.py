"""The workers that drive connectors: :class:`SourceWorker` and :class:`SinkWorker`.

Connector classes never batch, retry, ack or checkpoint: everything of that kind lives here.
"""

from runtime.worker.retry import Backoff
from runtime.worker.sink import SinkWorker
from runtime.worker.source import SourceWorker

__all__ = ["Backoff", "SinkWorker", "SourceWorker"]
