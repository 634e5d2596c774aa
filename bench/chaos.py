"""The chaos run for any duration: the whole topology under load, faults and bad input, then the verdict table.

Runs :func:`tests.chaos.harness.run_chaos` (see its module docstring for the topology and the
faults): ``python bench/chaos.py --duration 600``; ``--sentinel`` puts the registry on a primary,
a replica and three Sentinels (replica-acknowledged commits) and fails the primary over among the
faults. Prints the fault timeline, the table, then
``verdict: accepted=N landed=N dead_lettered=N lost=N duplicates=N`` and, as the last line,
``ratio: <landed/accepted>``, where the baseline is what was accepted in the same run (the
does-not-fit events, dead-lettered by design, count as accepted and not landed). Exits 1 when
anything was lost or duplicated, or the replica's rows differ from the source's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import FAULT_KINDS, ONE_REDIS_FAULTS, SENTINEL_FAULTS, ChaosSettings, run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults (default: %(default)s)")
    parser.add_argument("--http-rate", type=float, default=40.0, help="CloudEvents POSTed per second")
    parser.add_argument("--sql-rate", type=float, default=15.0, help="source transactions per second (1-3 row changes each)")
    parser.add_argument("--sink-replicas", type=int, default=3, help="replicas of each mysql-sink deployment")
    parser.add_argument(
        "--redelivery-timeout", type=float, default=3.0, help="seconds before the mesh pushes an un-acked event again"
    )
    parser.add_argument(
        "--sentinel",
        action="store_true",
        help="registry on a Redis primary, a replica and three Sentinels, min_replicas 1 (fault redis_failover)",
    )
    parser.add_argument(
        "--faults",
        help=f"comma-separated fault kinds to inject (default: all that apply: {', '.join(ONE_REDIS_FAULTS)};"
        f" with --sentinel {', '.join(SENTINEL_FAULTS)}; '' for none)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs and every process's log)")
    args = parser.parse_args()
    if args.faults is None:
        args.faults = ",".join(SENTINEL_FAULTS if args.sentinel else ONE_REDIS_FAULTS)
    unknown = {kind for kind in args.faults.split(",") if kind} - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    if "redis_failover" in args.faults.split(",") and not args.sentinel:
        parser.error("the fault redis_failover needs --sentinel (a primary and a replica to fail over between)")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = ChaosSettings(
        duration=args.duration,
        http_rate=args.http_rate,
        sql_rate=args.sql_rate,
        sink_replicas=args.sink_replicas,
        seed=args.seed,
        redelivery_timeout=args.redelivery_timeout,
        sentinel=args.sentinel,
        faults=tuple(kind for kind in args.faults.split(",") if kind),
        drain_timeout=max(90.0, args.duration / 4),
    )
    workdir = Path(tempfile.mkdtemp(prefix="meshconnect-chaos-"))
    try:
        report = asyncio.run(run_chaos(settings, workdir, progress=lambda line: print(f"# {line}", flush=True)))
    finally:
        if args.keep:
            print(f"# work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for line in report.timeline:
        print(f"# {line}")
    for line in report.lines():
        print(line)
    verdict = report.verdict
    print(f"ratio: {verdict.landed / verdict.accepted if verdict.accepted else 0.0:.4f}")
    return 0 if verdict.lost == 0 and verdict.duplicates == 0 and verdict.mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
