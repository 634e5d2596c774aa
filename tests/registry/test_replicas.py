"""Replicas as separate processes (tests/registry/replica.py) under kill -9, SIGSTOP and a Redis restart."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from runtime.record import partition_key
from tests.servers import RedisServer

pytestmark = pytest.mark.slow

TTL = 1.0
TAKEOVER = TTL + 4
"""How soon a standby holds a group whose holder died: the TTL, a round, and room for a loaded machine."""
BATCH = 5
"""The replica's default batch."""
REPO = Path(__file__).resolve().parents[2]


class Replica:
    """One replica process; its stdout (JSON lines) and its "published" integers go to files."""

    def __init__(self, directory: Path, redis_url: str, prefix: str, holder: str, *options: str) -> None:
        self.holder = holder
        self.report = directory / f"{holder}.jsonl"
        self.published = directory / f"{holder}.out"
        self.stderr = directory / f"{holder}.err"
        with open(self.report, "ab") as stdout, open(self.stderr, "ab") as stderr:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "tests.registry.replica", "--redis-url", redis_url, "--prefix", prefix),
                    *("--holder", holder, "--ttl", str(TTL), "--out", str(self.published), *options),
                ],
                cwd=REPO,
                stdout=stdout,
                stderr=stderr,
            )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        lines = self.report.read_bytes().splitlines()
        events = [orjson.loads(line) for line in lines if line.strip()]
        return [event for event in events if kind is None or event["event"] == kind]

    def signal(self, signum: int) -> float:
        os.kill(self.proc.pid, signum)
        return time.monotonic()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


class Cluster:
    """Replica processes of one connector sharing a Redis namespace."""

    def __init__(self, directory: Path, redis_url: str) -> None:
        self.directory = directory
        self.redis_url = redis_url
        self.prefix = f"replicas-{uuid.uuid4().hex[:8]}"
        self.replicas: list[Replica] = []

    def start(self, holder: str, *options: str) -> Replica:
        replica = Replica(self.directory, self.redis_url, self.prefix, holder, *options)
        self.replicas.append(replica)
        return replica

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, "{counter-source}", *parts))

    def stored_offset(self, group: str) -> int | None:
        with redis.Redis.from_url(self.redis_url) as client:
            raw = client.hget(self.key("offsets"), partition_key({"group": group}))
        return None if raw is None else int(orjson.loads(raw)["n"])

    def holder_of(self, group: str) -> tuple[str, int] | None:
        """Holder and token of ``group``'s lease in Redis, if it is held."""
        with redis.Redis.from_url(self.redis_url) as client:
            holder, token = client.hmget(self.key("lease", group), "holder", "token")
        return None if holder is None else (holder.decode(), int(token))

    def active(self, group: str = "g0") -> Replica:
        """The replica holding ``group``, once it committed a few batches under its lease."""
        wait_for(lambda: all(replica.events("member") for replica in self.replicas), 10, "every replica is a member")

        def settled() -> Replica | None:
            lease = self.holder_of(group)
            for replica in self.replicas:
                if lease is not None and replica.holder == lease[0]:
                    commits = [event for event in replica.events("commit") if event["token"] == lease[1]]
                    return replica if len(commits) >= 3 else None
            return None

        active: Replica = wait_for(settled, 10, f"an active replica commits {group}")
        return active

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.proc.poll() is None:
                replica.proc.kill()
                replica.proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[Cluster]:
    replicas = Cluster(tmp_path, redis_server.url)
    yield replicas
    replicas.stop()


def wait_for(condition: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"{what}: not within {within}s")


def published(replica: Replica, group: str) -> list[int]:
    if not replica.published.exists():
        return []
    lines = (line.split() for line in replica.published.read_text().splitlines())
    return [int(number) for line_group, number in lines if line_group == group]


def assert_no_gap(replicas: Sequence[Replica], groups: Sequence[str]) -> None:
    """Every integer published, and published again only if it followed the checkpoint a replica resumed from."""
    for group in groups:
        counts = Counter(n for replica in replicas for n in published(replica, group))
        assert set(counts) == set(range(1, max(counts) + 1)), f"{group} has a gap"
        resumed_from = [event["n"] for replica in replicas for event in replica.events("resume") if event["group"] == group]
        for n, times in counts.items():
            if times > 1:
                # A replica publishes one batch past its last commit at most, so only that can repeat.
                assert any(r < n <= r + BATCH for r in resumed_from), f"{group}: {n} published {times} times"


def commits_in_time_order(replicas: Sequence[Replica], group: str) -> list[int]:
    events = sorted((event for replica in replicas for event in replica.events("commit")), key=lambda event: event["t"])
    return [event["n"] for event in events if event["group"] == group]


def commits_since(replica: Replica, since: float) -> list[dict[str, Any]]:
    return [event for event in replica.events("commit") if event["t"] > since]


def acquired_by(replicas: Sequence[Replica], after: float) -> tuple[Replica, float] | None:
    for replica in replicas:
        for event in replica.events("acquired"):
            if event["t"] > after:
                return replica, event["t"]
    return None


def test_a_standby_takes_over_a_killed_active_from_its_last_checkpoint(cluster: Cluster) -> None:
    cluster.start("a")
    cluster.start("b")
    active = cluster.active()
    [standby] = [replica for replica in cluster.replicas if replica is not active]
    killed_at = active.signal(signal.SIGKILL)
    active.proc.wait(5)
    last_checkpoint = cluster.stored_offset("g0")

    _, took_at = wait_for(lambda: acquired_by([standby], killed_at), TAKEOVER, "standby takes over")
    assert took_at - killed_at <= TAKEOVER
    wait_for(lambda: len(commits_since(standby, killed_at)) >= 5, 10, "standby commits")
    assert standby.stop() == 0

    resumes = [event for event in standby.events("resume") if event["t"] > killed_at]
    assert len(resumes) == 1, (active.events(), standby.events())
    [resume] = resumes
    assert resume["n"] == last_checkpoint, "the standby resumes from the last checkpoint"
    assert_no_gap(cluster.replicas, ["g0"])
    commits = commits_in_time_order(cluster.replicas, "g0")
    assert commits == sorted(set(commits)), "offsets only move forward"


def test_three_replicas_survive_two_kills(cluster: Cluster) -> None:
    for name in ("a", "b", "c"):
        cluster.start(name)
    alive = list(cluster.replicas)
    active = cluster.active()
    for _ in range(2):
        killed_at = active.signal(signal.SIGKILL)
        active.proc.wait(5)
        alive.remove(active)
        active, took_at = wait_for(lambda since=killed_at: acquired_by(alive, since), TAKEOVER, "a standby takes over")
        assert took_at - killed_at <= TAKEOVER
        wait_for(lambda active=active, since=killed_at: len(commits_since(active, since)) >= 3, 10, "the new active commits")
    for replica in alive:
        assert replica.stop() == 0
    assert_no_gap(cluster.replicas, ["g0"])
    commits = commits_in_time_order(cluster.replicas, "g0")
    assert commits == sorted(set(commits))


def test_a_paused_active_is_fenced_and_stops_by_itself(cluster: Cluster) -> None:
    # A long ack delay: the pause most likely lands between "publish" and "commit", the zombie's worst moment.
    for name in ("a", "b"):
        cluster.start(name, "--exit-on-loss", "--ack-delay", "0.2", "--interval", "0")
    zombie = cluster.active()
    [standby] = [replica for replica in cluster.replicas if replica is not zombie]
    paused_at = zombie.signal(signal.SIGSTOP)
    _, took_at = wait_for(lambda: acquired_by([standby], paused_at), TAKEOVER, "standby takes over")
    assert took_at - paused_at <= TAKEOVER
    wait_for(lambda: len(commits_since(standby, paused_at)) >= 3, 10, "standby commits")

    zombie.signal(signal.SIGCONT)
    assert zombie.proc.wait(10) == 3, "the zombie stops by itself"
    after = [event for event in zombie.events() if event["t"] > took_at]
    assert not [event for event in after if event["event"] == "commit"], after
    assert {event["event"] for event in after} & {"fenced", "dropped"}, after
    assert standby.stop() == 0
    assert_no_gap(cluster.replicas, ["g0"])
    commits = commits_in_time_order(cluster.replicas, "g0")
    assert commits == sorted(set(commits))
    assert cluster.stored_offset("g0") == commits[-1]


def test_a_redis_restart_loses_and_regresses_nothing(tmp_path: Path) -> None:
    server = RedisServer(persistent=True)  # as a production registry must run
    server.start()
    cluster = Cluster(tmp_path, server.url)
    try:
        groups = ["g0", "g1"]
        replica = cluster.start("a", "--groups", ",".join(groups))
        wait_for(lambda: len(replica.events("commit")) >= 10, 10, "replica commits")
        server.kill()
        last_before = {group: commits_in_time_order([replica], group)[-1] for group in groups}
        wait_for(lambda: replica.events("unavailable"), 10, "replica notices the outage")
        wait_for(
            lambda: [event for event in replica.events("dropped") if event["losses"]], 10, "leases not renewed for a TTL are lost"
        )
        assert replica.proc.poll() is None, "no crash while Redis is down"
        server.start()
        restarted_at = time.monotonic()
        for group in groups:
            wait_for(
                lambda group=group: [event for event in commits_since(replica, restarted_at) if event["group"] == group],
                10,
                f"{group} resumes",
            )
        assert replica.stop() == 0
        for group in groups:
            commits = commits_in_time_order([replica], group)
            assert commits == sorted(set(commits)), f"{group} offsets regressed"
            assert commits[-1] > last_before[group]
            assert cluster.stored_offset(group) == commits[-1]
        assert_no_gap([replica], groups)
    finally:
        cluster.stop()
        server.stop()


def ownership(replica: Replica, ended_at: float) -> dict[str, list[tuple[float, float]]]:
    """Per group, the intervals ``replica`` owned it, from its own reports (open ones end at ``ended_at``)."""
    intervals: dict[str, list[tuple[float, float]]] = {}
    since: dict[str, float] = {}
    for event in replica.events():
        if event["event"] == "acquired":
            since[event["group"]] = event["t"]
        elif event["event"] == "dropped" and event["group"] in since:
            intervals.setdefault(event["group"], []).append((since.pop(event["group"]), event["t"]))
    for group, started in since.items():
        intervals.setdefault(group, []).append((started, ended_at))
    return intervals


def test_six_groups_rebalance_over_three_two_three_replicas(cluster: Cluster) -> None:
    groups = [f"g{i}" for i in range(6)]
    option = ("--groups", ",".join(groups), "--batch", "1", "--interval", "0.05")
    first = [cluster.start(name, *option) for name in ("a", "b", "c")]
    wait_for(lambda: all(replica.events("member") for replica in first), 10, "every replica is a member")

    def spread_over(replicas: Sequence[Replica]) -> bool:
        """Every group owned by one of ``replicas``, evenly, as the replicas themselves report it."""
        holders = Counter(
            replica.holder
            for replica in replicas
            for intervals in ownership(replica, math.inf).values()
            if intervals[-1][1] == math.inf
        )
        return holders == dict.fromkeys((replica.holder for replica in replicas), len(groups) // len(replicas))

    wait_for(lambda: spread_over(first), 20, "the groups are spread over a, b and c")
    assert first[2].stop() == 0  # c leaves gracefully
    wait_for(lambda: spread_over(first[:2]), 20, "a and b take c's groups")
    killed_at = first[1].signal(signal.SIGKILL)  # b crashes
    first[1].proc.wait(5)
    wait_for(lambda: spread_over(first[:1]), 20, "a takes b's groups once their leases expire")
    later = [cluster.start(name, *option) for name in ("b2", "c2")]
    wait_for(lambda: all(replica.events("member") for replica in later), 10, "the new replicas are members")
    wait_for(lambda: spread_over([first[0], *later]), 20, "the groups are spread over a, b2 and c2")
    ended_at = time.monotonic()
    for replica in [first[0], *later]:
        assert replica.stop() == 0

    spans: dict[str, list[tuple[float, float, str]]] = {group: [] for group in groups}
    for replica in cluster.replicas:
        end = killed_at if replica is first[1] else ended_at
        for group, intervals in ownership(replica, end).items():
            spans[group] += [(start, stop, replica.holder) for start, stop in intervals if start < ended_at]
    for group, owned in spans.items():
        owned.sort()
        for (_, stop, holder), (start, _, successor) in itertools.pairwise(owned):
            assert start >= stop, f"{group} owned by {holder} and {successor} at once"
            assert start - stop <= TAKEOVER, f"{group} idle {start - stop:.2f}s between {holder} and {successor}"
        assert owned[-1][1] >= ended_at - 0.5, f"{group} is owned at the end"
    # At the end the groups are spread evenly over the live replicas.
    live = [first[0].holder, *(replica.holder for replica in later)]
    assert Counter(owned[-1][2] for owned in spans.values()) == dict.fromkeys(live, 2)
    for group in groups:
        commits = commits_in_time_order(cluster.replicas, group)
        assert commits == sorted(set(commits)), f"{group} offsets moved backwards"


def published_counts(replicas: Sequence[Replica], group: str) -> Counter[int]:
    return Counter(n for replica in replicas for n in published(replica, group))


def test_a_replica_back_from_a_pause_stands_by_and_nothing_is_replayed(cluster: Cluster) -> None:
    # Every group's batch is in flight most of the time: taking a lease from a replica that works replays it.
    for name in ("a", "b"):
        cluster.start(name, "--ack-delay", "0.2", "--interval", "0")
    paused = cluster.active()
    [healthy] = [replica for replica in cluster.replicas if replica is not paused]
    paused_at = paused.signal(signal.SIGSTOP)
    wait_for(lambda: acquired_by([healthy], paused_at), TAKEOVER, "the healthy replica takes over")
    wait_for(lambda: len(commits_since(healthy, paused_at)) >= 3, 10, "the healthy replica commits")
    lease = cluster.holder_of("g0")
    assert lease is not None and lease[0] == healthy.holder
    [takeover] = [event for event in healthy.events("resume") if event["t"] > paused_at]

    resumed_at = time.monotonic()  # taken before the signal: the replica may run before os.kill returns
    paused.signal(signal.SIGCONT)
    # Back: it drops the lease it can no longer trust and becomes a member again; then give it many rounds.
    wait_for(lambda: [event for event in paused.events("dropped") if event["t"] > resumed_at], 5, "the paused replica drops g0")
    with redis.Redis.from_url(cluster.redis_url) as client:
        wait_for(lambda: client.zscore(cluster.key("members"), paused.holder), 5, "the paused replica is a member again")
    rejoined_at = time.monotonic()
    wait_for(
        lambda: len(commits_since(healthy, rejoined_at)) >= 15 or healthy.events("dropped"),
        20,
        "the healthy replica keeps committing",
    )

    assert not healthy.events("dropped"), "the healthy replica lost its lease to the one back from a pause"
    assert cluster.holder_of("g0") == lease, "the lease changed hands"
    back = [event for event in paused.events() if event["t"] > resumed_at]
    assert not [event for event in back if event["event"] in ("acquired", "resume", "commit")], back
    assert paused.stop() == 0 and healthy.stop() == 0
    commits = commits_in_time_order(cluster.replicas, "g0")
    assert commits == sorted(set(commits)), "an offset moved backwards"
    assert_no_gap(cluster.replicas, ["g0"])
    # Only the paused replica's last batch, in flight when it stopped, may have been published twice.
    replayed = {n: times for n, times in published_counts(cluster.replicas, "g0").items() if times > 1}
    assert all(takeover["n"] < n <= takeover["n"] + BATCH and times == 2 for n, times in replayed.items()), replayed


def test_a_joining_replica_gets_its_share_by_a_hand_over_that_replays_nothing(cluster: Cluster) -> None:
    groups = ["g0", "g1", "g2", "g3"]
    options = ("--groups", ",".join(groups), "--ack-delay", "0.2", "--interval", "0")
    first = cluster.start("a", *options)
    wait_for(lambda: {event["group"] for event in first.events("commit")} == set(groups), 10, "a commits every group")
    joined_at = time.monotonic()
    second = cluster.start("b", *options)

    def moved() -> list[str]:
        return sorted({event["group"] for event in second.events("commit")})

    wait_for(lambda: len(moved()) == 2, 15, "b commits its share of the groups")
    wait_for(
        lambda: all(len([e for e in commits_since(second, joined_at) if e["group"] == g]) >= 3 for g in moved()), 10, "b commits"
    )
    holders = {group: (cluster.holder_of(group) or ("(free)", 0))[0] for group in groups}
    assert holders == {group: "b" if group in moved() else "a" for group in groups}
    ended_at = time.monotonic()
    assert second.stop() == 0
    assert first.stop() == 0

    for group in groups:
        commits = commits_in_time_order(cluster.replicas, group)
        assert commits == sorted(set(commits)), f"{group}: an offset moved backwards"
        counts = published_counts(cluster.replicas, group)
        assert set(counts) == set(range(1, max(counts) + 1)), f"{group} has a gap"
        assert {n: times for n, times in counts.items() if times > 1} == {}, f"{group}: replayed"

    def before_the_end(replica: Replica, kind: str, group: str) -> list[dict[str, Any]]:
        return [event for event in replica.events(kind) if event["group"] == group and event["t"] < ended_at]

    for group in moved():
        [handed] = before_the_end(first, "dropped", group)
        [taken] = before_the_end(second, "acquired", group)
        assert handed["losses"] == 0 and handed["t"] < taken["t"], "released by a, then acquired by b"
        last_commit = [event["n"] for event in before_the_end(first, "commit", group) if event["t"] < taken["t"]][-1]
        assert [event["n"] for event in before_the_end(second, "resume", group)] == [last_commit], (
            "b resumes once, where a committed last"
        )
    assert not first.events("fenced") and not second.events("fenced")
