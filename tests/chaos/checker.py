"""The verdict: what was accepted compared with what landed in the sink database.

*Accepted* is every 2xx answer of the http-source (good events and does-not-fit events alike)
plus every committed row change of the source database (its ``journal``: one row per change of
``items``). *Landed* is a good event's row in ``http_events`` or a change's journal row in the
replica. A does-not-fit event must be in the dead-letter table (with its reason) and nowhere
else. *Lost* is whatever was accepted and is in neither place. *Duplicates* are rows beyond the
first for one event or change. The replicated ``items`` must equal the source's at the end
(rows missing, stale or present only in the replica are mismatches).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomysql

__all__ = ["Observed", "Verdict", "judge", "observe", "percentile"]


@dataclass
class Observed:
    """What the databases hold at one moment."""

    source_changes: dict[int, int] = field(default_factory=dict)
    """change_id -> at_us of every committed source change."""
    source_items: dict[int, tuple[int, str]] = field(default_factory=dict)
    replica_changes: dict[int, int] = field(default_factory=dict)
    """change_id -> landed (unix µs) in the replica."""
    replica_change_rows: int = 0
    replica_items: dict[int, tuple[int, str]] = field(default_factory=dict)
    http_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    """uid -> (sent_us, landed µs)."""
    http_row_count: int = 0
    dead_letters: dict[str, str] = field(default_factory=dict)
    """event id -> reason."""
    dead_letter_rows: int = 0


@dataclass
class Verdict:
    accepted_http: int
    accepted_bad_fit: int
    accepted_changes: int
    landed_http: int
    landed_changes: int
    dead_lettered: int
    lost_http: list[str]
    lost_bad_fit: list[str]
    lost_changes: list[int]
    duplicates: int
    unexpected_dead_letters: dict[str, str]
    landed_without_2xx: int
    items_missing: int
    items_stale: int
    items_extra: int
    mismatch_examples: list[str]
    dead_letter_reasons: dict[str, str]
    """does-not-fit kind -> the reason its dead letter gives (one example each)."""
    dead_letters_without_reason: int
    latencies: list[float]

    @property
    def accepted(self) -> int:
        return self.accepted_http + self.accepted_bad_fit + self.accepted_changes

    @property
    def landed(self) -> int:
        return self.landed_http + self.landed_changes

    @property
    def lost(self) -> int:
        return len(self.lost_http) + len(self.lost_bad_fit) + len(self.lost_changes)

    @property
    def mismatches(self) -> int:
        return self.items_missing + self.items_stale + self.items_extra

    @property
    def settled(self) -> bool:
        """Nothing missing any more and the replica equal to the source (what a drain waits for)."""
        return self.lost == 0 and self.mismatches == 0

    def line(self) -> str:
        return (
            f"verdict: accepted={self.accepted} landed={self.landed} dead_lettered={self.dead_lettered} "
            f"lost={self.lost} duplicates={self.duplicates}"
        )


async def _rows(conn: Any, sql: str) -> Sequence[tuple[Any, ...]]:
    async with conn.cursor() as cursor:
        await cursor.execute(sql)
        return list(await cursor.fetchall())


async def _connect(port: int) -> Any:
    return await aiomysql.connect(
        host="127.0.0.1", port=port, user="root", autocommit=True, connect_timeout=5, init_command="SET time_zone = '+00:00'"
    )


async def observe(
    *, source_port: int, source_db: str, sink_port: int, replica_db: str, http_db: str, dead_letter_db: str
) -> Observed:
    """Read both databases (raises aiomysql/OS errors when one is down)."""
    seen = Observed()
    source = await _connect(source_port)
    try:
        for change_id, at_us in await _rows(source, f"SELECT change_id, at_us FROM {source_db}.journal"):
            seen.source_changes[int(change_id)] = int(at_us)
        for item, version, note in await _rows(source, f"SELECT id, version, note FROM {source_db}.items"):
            seen.source_items[int(item)] = (int(version), str(note))
    finally:
        source.close()
    sink = await _connect(sink_port)
    try:
        rows = await _rows(sink, f"SELECT change_id, UNIX_TIMESTAMP(landed_at) FROM {replica_db}.journal")
        seen.replica_change_rows = len(rows)
        seen.replica_changes = {int(change_id): int(float(landed) * 1e6) for change_id, landed in rows}
        for item, version, note in await _rows(sink, f"SELECT id, version, note FROM {replica_db}.items"):
            seen.replica_items[int(item)] = (int(version), str(note))
        rows = await _rows(sink, f"SELECT uid, sent_us, UNIX_TIMESTAMP(landed_at) FROM {http_db}.http_events")
        seen.http_row_count = len(rows)
        seen.http_rows = {str(uid): (int(sent), int(float(landed) * 1e6)) for uid, sent, landed in rows}
        try:
            rows = await _rows(
                sink,
                f"SELECT id, JSON_UNQUOTE(JSON_EXTRACT(extensions, '$.dlqreason')) FROM {dead_letter_db}.dead_letters",
            )
        except aiomysql.ProgrammingError:
            rows = []  # no dead letter yet: the table is created with the first one
        seen.dead_letter_rows = len(rows)
        seen.dead_letters = {str(event_id): str(reason) for event_id, reason in rows}
    finally:
        sink.close()
    return seen


def judge(accepted: Mapping[str, float], bad_fit_accepted: Mapping[str, str], seen: Observed) -> Verdict:
    """Compare what the load generator was told was accepted (``bad_fit_accepted``: uid -> kind) with the databases."""
    bad_fit = set(bad_fit_accepted)
    reasons: dict[str, str] = {}
    for uid, kind in bad_fit_accepted.items():
        if uid in seen.dead_letters:
            reasons.setdefault(kind, seen.dead_letters[uid])
    lost_http = sorted(uid for uid in accepted if uid not in seen.http_rows)
    lost_bad_fit = sorted(uid for uid in bad_fit if uid not in seen.dead_letters)
    lost_changes = sorted(change for change in seen.source_changes if change not in seen.replica_changes)
    duplicates = (seen.http_row_count - len(seen.http_rows)) + (seen.replica_change_rows - len(seen.replica_changes))
    duplicates += seen.dead_letter_rows - len(seen.dead_letters)
    duplicates += sum(1 for uid in bad_fit if uid in seen.http_rows)  # a refused event must not land as well
    latencies = [(landed - sent) / 1e6 for uid, (sent, landed) in seen.http_rows.items() if uid in accepted]
    latencies += [
        (seen.replica_changes[change] - at_us) / 1e6
        for change, at_us in seen.source_changes.items()
        if change in seen.replica_changes
    ]
    source_items, replica_items = seen.source_items, seen.replica_items
    return Verdict(
        accepted_http=len(accepted),
        accepted_bad_fit=len(bad_fit),
        accepted_changes=len(seen.source_changes),
        landed_http=sum(1 for uid in accepted if uid in seen.http_rows),
        landed_changes=sum(1 for change in seen.source_changes if change in seen.replica_changes),
        dead_lettered=sum(1 for uid in bad_fit if uid in seen.dead_letters),
        lost_http=lost_http,
        lost_bad_fit=lost_bad_fit,
        lost_changes=lost_changes,
        duplicates=duplicates,
        unexpected_dead_letters={uid: reason for uid, reason in seen.dead_letters.items() if uid not in bad_fit},
        landed_without_2xx=sum(1 for uid in seen.http_rows if uid not in accepted and uid not in bad_fit),
        items_missing=sum(1 for item in source_items if item not in replica_items),
        items_stale=sum(1 for item, row in source_items.items() if item in replica_items and replica_items[item] != row),
        items_extra=sum(1 for item in replica_items if item not in source_items),
        mismatch_examples=[
            f"item {item}: source {source_items.get(item)} replica {replica_items.get(item)}"
            for item in sorted(set(source_items) | set(replica_items))
            if source_items.get(item) != replica_items.get(item)
        ][:5],
        dead_letter_reasons=reasons,
        dead_letters_without_reason=sum(1 for reason in seen.dead_letters.values() if not reason or reason == "None"),
        latencies=latencies,
    )


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, min(998, round(share * 1000) - 1))]
