"""Small connectors for the runtime's own tests: a counting source and a sink that keeps what it got."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from runtime import ConnectorConfig, ConnectorRecord, DataError, Rejection, RetriableError, Sink, Source, SourceContext


class CounterConfig(ConnectorConfig):
    limit: int = Field(100, description="Numbers per partition.")
    partitions: int = Field(2, description="How many partitions.")
    batch: int = Field(10, description="Records per poll.")
    poison_every: int = Field(0, description="Every n-th number cannot become an event (0: none).")
    big_every: int = Field(0, description="Every n-th number carries big_size bytes of padding (0: none).")
    big_size: int = Field(5000, description="Padding of the big numbers, bytes.")
    broken_text_every: int = Field(0, description="Every n-th number is text holding a lone surrogate (0: none).")
    refused_every: int = Field(0, description="Every n-th number is refused by the source itself (0: none).")


class CounterSource(Source[CounterConfig]):
    name = "counter-source"
    description = "Emits 0..limit-1 on each partition, resuming from its offsets."
    config_model = CounterConfig

    async def start(self, context: SourceContext) -> None:
        self.next = {}
        for p in range(self.config.partitions):
            last = context.offset({"p": p})
            self.next[p] = 0 if last is None else int(last["n"]) + 1
        self.committed: list[ConnectorRecord] = []

    async def poll(self) -> Sequence[ConnectorRecord]:
        records = []
        for p, n in self.next.items():
            for k in range(n, min(n + self.config.batch, self.config.limit)):
                poison = self.config.poison_every and k % self.config.poison_every == self.config.poison_every - 1
                big = self.config.big_every and k % self.config.big_every == self.config.big_every - 1
                number: dict[str, object] = {"p": p, "n": k, "pad": "x" * self.config.big_size} if big else {"p": p, "n": k}
                broken = self.config.broken_text_every and k % self.config.broken_text_every == self.config.broken_text_every - 1
                if broken:  # what a surrogateescape decode of bytes that are not UTF-8 leaves
                    records.append(
                        ConnectorRecord(data=f"n={k} \udcff", datacontenttype="text/plain", partition={"p": p}, offset={"n": k})
                    )
                    continue
                refused = self.config.refused_every and k % self.config.refused_every == self.config.refused_every - 1
                records.append(
                    ConnectorRecord(
                        data="not json" if poison else number,
                        datacontenttype="application/json" if poison else None,
                        partition={"p": p},
                        offset={"n": k},
                        refusal=f"number {k} is refused by the source" if refused else None,
                    )
                )
            self.next[p] = min(n + self.config.batch, self.config.limit)
        if not records:
            await asyncio.sleep(0.05)
        return records

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        self.committed.extend(records)


class GroupedCounterConfig(ConnectorConfig):
    groups: int = Field(4, description="Partition groups g0..g<n-1>, one partition each.")
    limit: int = Field(100, description="Numbers per group.")
    batch: int = Field(3, description="Numbers per group and poll.")
    pause: float = Field(0.05, description="Seconds after each poll: a steady stream, not a burst.")


class GroupedCounterSource(Source[GroupedCounterConfig]):
    """Emits 0..limit-1 in every partition group assigned to this replica, resuming from its offsets."""

    name = "grouped-counter-source"
    description = "One counting partition per partition group."
    config_model = GroupedCounterConfig

    async def partition_groups(self) -> Sequence[str]:
        return [f"g{index}" for index in range(self.config.groups)]

    async def start(self, context: SourceContext) -> None:
        self.next = {}
        for group in sorted(context.assigned_groups):
            last = context.offset({"group": group})
            self.next[group] = 0 if last is None else int(last["n"]) + 1

    async def poll(self) -> Sequence[ConnectorRecord]:
        records = []
        for group, n in self.next.items():
            upto = min(n + self.config.batch, self.config.limit)
            records += [
                ConnectorRecord(data={"g": group, "n": k}, partition={"group": group}, offset={"n": k}) for k in range(n, upto)
            ]
            self.next[group] = upto
        await asyncio.sleep(self.config.pause)
        return records


class ListSinkConfig(ConnectorConfig):
    fail_first: int = Field(0, description="Raise RetriableError on this many first puts.")


RECEIVED: list[ConnectorRecord] = []
PUTS: list[int] = []
HELD_PUTS: list[asyncio.Event] = []
"""Each put() while this holds events takes the first one and waits until it is set: a target busy writing."""


class ListSink(Sink[ListSinkConfig]):
    """Keeps records in RECEIVED; data {"reject": ...} is rejected, {"bad": ...} fails the batch as data."""

    name = "list-sink"
    description = "Keeps what it receives in memory."
    config_model = ListSinkConfig

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        PUTS.append(len(records))
        if HELD_PUTS:
            await HELD_PUTS.pop(0).wait()
        if len(PUTS) <= self.config.fail_first:
            raise RetriableError("target is down", retry_after=0.05)
        if any(isinstance(r.data, dict) and "bad" in r.data for r in records):
            raise DataError("a record in the batch is bad")
        rejections = [Rejection(r, "rejected by the test") for r in records if isinstance(r.data, dict) and "reject" in r.data]
        RECEIVED.extend(r for r in records if not (isinstance(r.data, dict) and "reject" in r.data))
        return rejections


class GatedFileSinkConfig(ConnectorConfig):
    target: str = Field(description="File the records go to, one JSON line {id, data} each, fsynced.")
    gate: str = Field(description="While this file exists, put() waits: a target that hangs (or a crash before the write).")


class GatedFileSink(Sink[GatedFileSinkConfig]):
    """Appends each record as a JSON line to ``target`` (durable across processes), once ``gate`` is gone."""

    name = "gated-file-sink"
    description = "Writes records to a file once a gate file is removed."
    config_model = GatedFileSinkConfig

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        while await asyncio.to_thread(Path(self.config.gate).exists):  # noqa: ASYNC110 - another process removes it
            await asyncio.sleep(0.02)
        await asyncio.to_thread(self._append, records)
        return []

    def _append(self, records: Sequence[ConnectorRecord]) -> None:
        with open(self.config.target, "a") as target:
            target.writelines(json.dumps({"id": record.id, "data": record.data}) + "\n" for record in records)
            target.flush()
            os.fsync(target.fileno())


def written_ids(target: Path) -> list[str]:
    """The ids a GatedFileSink wrote to ``target``, in order (duplicates kept)."""
    if not target.exists():
        return []
    return [json.loads(line)["id"] for line in target.read_text().splitlines()]
