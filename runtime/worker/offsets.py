"""Which offsets may be checkpointed: per partition, the longest prefix of acknowledged records.

Records of one partition are submitted in order; the mesh acknowledges them in any order. An offset
becomes committable only once every earlier record of its partition was acknowledged (the deque
rule of Kafka Connect's ``SubmittedRecords``): a checkpoint can then never skip a record that the
mesh has not got, whatever order the acks come back in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from runtime.record import ConnectorRecord, partition_key

__all__ = ["Checkpoint", "OffsetTracker", "Submitted"]


class Submitted(msgspec.Struct, eq=False, gc=False):
    """One record on its way to the mesh; ``acked`` flips once the mesh (or the dead-letter topic) has it.

    One per published record, alive until its checkpoint: untracked by the garbage collector (``gc=False``; it
    is never part of a reference cycle), so the records in flight do not make each collection longer.
    """

    record: ConnectorRecord
    key: str
    group: str
    acked: bool = False
    batch: Any = None
    """What the worker counts the record in (its poll's batch, for the batch latency); the tracker never reads it."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What one checkpoint writes: the newest committable offset per partition, grouped by partition group."""

    offsets: Mapping[str, Mapping[str, Mapping[str, Any]]]
    """group -> partition key -> offset."""
    records: Sequence[ConnectorRecord]
    """The records made durable by it, in submission order per partition (for ``Source.commit``)."""

    @property
    def empty(self) -> bool:
        return not self.records


@dataclass(slots=True)
class OffsetTracker:
    """The submitted records of every partition and the committable offsets, not yet checkpointed."""

    _pending: dict[str, deque[Submitted]] = field(default_factory=dict)
    _committable: dict[str, Submitted] = field(default_factory=dict)
    _done: list[ConnectorRecord] = field(default_factory=list)
    in_flight: int = 0

    def submit(self, record: ConnectorRecord, group: str) -> Submitted:
        key = partition_key(record.partition)
        entry = Submitted(record, key, group)
        self._pending.setdefault(key, deque()).append(entry)
        self.in_flight += 1
        return entry

    def ack(self, entry: Submitted) -> None:
        """Mark ``entry`` acknowledged and move the acknowledged head of its partition to committable."""
        if entry.acked:
            return
        entry.acked = True
        self.in_flight -= 1
        queue = self._pending.get(entry.key)
        if queue is None:
            return
        while queue and queue[0].acked:
            head = queue.popleft()
            self._committable[head.key] = head
            self._done.append(head.record)
        if not queue:
            del self._pending[entry.key]

    @property
    def committable_count(self) -> int:
        """Acknowledged records waiting for the next checkpoint."""
        return len(self._done)

    def checkpoint(self) -> Checkpoint:
        """What to write now; call :meth:`written` once it is durable (else it is offered again)."""
        offsets: dict[str, dict[str, Mapping[str, Any]]] = {}
        for key, entry in self._committable.items():
            offsets.setdefault(entry.group, {})[key] = entry.record.offset
        return Checkpoint(offsets, list(self._done))

    def written(self, checkpoint: Checkpoint) -> None:
        """Forget what ``checkpoint`` made durable; later acks stay for the next one."""
        for group_offsets in checkpoint.offsets.values():
            for key, offset in group_offsets.items():
                entry = self._committable.get(key)
                if entry is not None and entry.record.offset is offset:
                    del self._committable[key]
        del self._done[: len(checkpoint.records)]
