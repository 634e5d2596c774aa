"""The load: CloudEvents POSTed at a fixed rate to the http-source replicas, row changes written to the source database.

:class:`HttpLoad` posts binary-mode CloudEvents, alternating between the replicas. It behaves as an
at-least-once sender should: an answer other than 2xx (a 503, a cut connection, a timeout) is
retried with the same event id on the other replica, with backoff and jitter, until it is
accepted or the give-up time passes. Every 2xx is recorded as *accepted*, with the time of the
first attempt. A small share of the events is valid CloudEvents whose data does not fit the sink's
table (a text where the table has an integer, a column the table lacks, a text too long): the
http-source accepts them, the sink must dead-letter them.

:class:`SqlLoad` runs small transactions against the source database: inserts, updates and
deletes of ``items``, each change journalled in ``journal`` in the same transaction (the
journal is what the checker counts: every committed change has exactly one journal row).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiomysql
import orjson
import structlog

__all__ = ["BAD_FIT_KINDS", "HttpLoad", "SqlLoad", "event_source"]

log = structlog.get_logger("chaos.load")

event_source = "/chaos/loadgen"
BAD_FIT_KINDS = ("text_in_integer", "boolean_in_integer", "unknown_column", "text_too_long")
_MAX_IN_FLIGHT = 400
_REQUEST_TIMEOUT = 15.0


@dataclass
class HttpLoad:
    urls: list[str]
    rate: float
    bad_fit_share: float = 0.02
    seed: int = 1
    accepted: dict[str, float] = field(default_factory=dict)
    """uid -> unix time of the first attempt, for every good event answered 2xx."""
    bad_fit_accepted: dict[str, str] = field(default_factory=dict)
    """uid -> kind, for every does-not-fit event answered 2xx."""
    refused: dict[str, str] = field(default_factory=dict)
    """uid -> status and reason, for events answered 4xx (none expected)."""
    gave_up: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    retries: int = 0
    late_ticks: int = 0

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._replica = itertools.cycle(range(len(self.urls)))

    async def run(self, stop: asyncio.Event, give_up_at: float) -> None:
        """Post at ``rate`` per second until ``stop``; then wait for the retries, until ``give_up_at`` (monotonic)."""
        slots = asyncio.Semaphore(_MAX_IN_FLIGHT)
        timeout = aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
            interval = 1.0 / self.rate
            next_tick = time.monotonic()
            number = 0
            while not stop.is_set():
                now = time.monotonic()
                if now < next_tick:
                    await asyncio.sleep(next_tick - now)
                    continue
                next_tick += interval
                if slots.locked():
                    self.late_ticks += 1
                await slots.acquire()
                number += 1
                task = asyncio.create_task(self._deliver(http, number, give_up_at))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                task.add_done_callback(lambda _task: slots.release())
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), timeout=max(0.1, give_up_at - time.monotonic() + _REQUEST_TIMEOUT))

    def _event(self, number: int) -> tuple[str, str | None, dict[str, Any]]:
        uid = f"ev-{self.seed}-{number}"
        body: dict[str, Any] = {"uid": uid, "n": number, "sent_us": int(time.time() * 1e6), "payload": f"event {number}"}
        if self.random.random() >= self.bad_fit_share:
            return uid, None, body
        kind = BAD_FIT_KINDS[number % len(BAD_FIT_KINDS)]
        if kind == "text_in_integer":
            body["n"] = f"number {number}"
        elif kind == "boolean_in_integer":
            body["n"] = True  # bound as 1 it would land; the column's type refuses it
        elif kind == "unknown_column":
            body["colour"] = "red"
        else:
            body["payload"] = "x" * 500
        return uid, kind, body

    async def _deliver(self, http: aiohttp.ClientSession, number: int, give_up_at: float) -> None:
        uid, bad_fit, body = self._event(number)
        first_attempt = time.time()
        headers = {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": uid,
            "ce-source": event_source,
            "ce-type": "chaos.bad-fit" if bad_fit else "chaos.event",
        }
        payload = orjson.dumps(body)
        delay = 0.1
        while True:
            url = self.urls[next(self._replica)]
            self.sent += 1
            try:
                async with http.post(url, data=payload, headers=headers) as response:
                    status = response.status
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, text = 0, type(exc).__name__
            self.statuses[str(status)] += 1
            if 200 <= status < 300:
                if bad_fit:
                    self.bad_fit_accepted[uid] = bad_fit
                else:
                    self.accepted[uid] = first_attempt
                return
            if 400 <= status < 500:
                self.refused[uid] = f"{status} {text[:200]}"
                return
            if time.monotonic() + delay > give_up_at:
                self.gave_up.add(uid)
                return
            self.retries += 1
            await asyncio.sleep(delay * self.random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)


SOURCE_TABLES = """
CREATE TABLE items (id INT PRIMARY KEY, version INT NOT NULL, note VARCHAR(64) NOT NULL, updated_us BIGINT NOT NULL);
CREATE TABLE journal (change_id BIGINT PRIMARY KEY, item_id INT NOT NULL, op CHAR(1) NOT NULL, at_us BIGINT NOT NULL);
"""


@dataclass
class SqlLoad:
    """Transactions of 1-3 item changes, ``rate`` transactions per second (see the module docstring)."""

    host: str
    port: int
    database: str
    rate: float
    seed: int = 2
    committed: int = 0
    failed: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    _reload_needed: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.items: list[int] = []
        self.next_item = 1
        self.next_change = 1

    async def run(self, stop: asyncio.Event) -> None:
        conn: Any = None
        interval = 1.0 / self.rate
        next_tick = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now < next_tick:
                    await asyncio.sleep(next_tick - now)
                    continue
                next_tick = max(next_tick + interval, now - 1.0)
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(
                            aiomysql.connect(host="127.0.0.1", port=self.port, user="root", db=self.database, autocommit=False),
                            5,
                        )
                    await asyncio.wait_for(self._transaction(conn), 10)
                except (aiomysql.Error, OSError, TimeoutError) as exc:
                    # The outcome of a failed commit is unknown here: the checker counts the source journal, not us.
                    self.failed += 1
                    log.warning("source transaction failed", error=repr(exc))
                    if conn is not None:
                        conn.close()
                    conn = None
                    self._reload_needed = True
        finally:
            if conn is not None:
                conn.close()

    async def _transaction(self, conn: Any) -> None:
        async with conn.cursor() as cursor:
            if self._reload_needed:
                await cursor.execute("SELECT id FROM items")
                self.items = [row[0] for row in await cursor.fetchall()]
                await cursor.execute("SELECT COALESCE(MAX(id), 0), (SELECT COALESCE(MAX(change_id), 0) FROM journal) FROM items")
                top_item, top_change = await cursor.fetchone()
                self.next_item = max(self.next_item, int(top_item) + 1)
                self.next_change = max(self.next_change, int(top_change) + 1)
                await conn.commit()
                self._reload_needed = False
            changes: list[tuple[int, str]] = []
            touched: set[int] = set()
            for _ in range(self.random.randint(1, 3)):
                choice = self.random.random()
                if choice < 0.45 or len(self.items) < 20:
                    item = self.next_item
                    self.next_item += 1
                    await cursor.execute(
                        "INSERT INTO items (id, version, note, updated_us) VALUES (%s, 1, %s, %s)",
                        (item, f"item {item}", int(time.time() * 1e6)),
                    )
                    changes.append((item, "c"))
                    touched.add(item)
                    continue
                item = self.random.choice(self.items)
                if item in touched:
                    continue
                touched.add(item)
                if choice < 0.85:
                    await cursor.execute(
                        "UPDATE items SET version = version + 1, note = %s, updated_us = %s WHERE id = %s",
                        (f"item {item} changed", int(time.time() * 1e6), item),
                    )
                    changes.append((item, "u"))
                else:
                    await cursor.execute("DELETE FROM items WHERE id = %s", (item,))
                    changes.append((item, "d"))
            rows = []
            for item, op in changes:
                rows.append((self.next_change, item, op, int(time.time() * 1e6)))
                self.next_change += 1
            if rows:
                await cursor.executemany("INSERT INTO journal (change_id, item_id, op, at_us) VALUES (%s, %s, %s, %s)", rows)
        await conn.commit()
        for item, op in changes:
            self.ops[op] += 1
            if op == "c":
                self.items.append(item)
            elif op == "d":
                self.items.remove(item)
        self.committed += 1
