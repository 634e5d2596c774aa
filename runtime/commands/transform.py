"""``meshconnect transform --config FILE < events.jsonl``: run a config's ``transforms:`` offline, on JSON lines.

Each stdin line is a structured CloudEvent; each event the chain keeps is printed on stdout as one
line of structured CloudEvents JSON, as the connector would pass it on. On stderr: an event a
filter dropped, one a step failed on (with the reason its dead letter would carry), a sink's
routed target, and a summary. The steps are those of the config's connector side (a source's
route picks a topic its config allows, a sink's its target). Nothing connects anywhere.

Exit codes: 0 every line was handled, 1 a line was no CloudEvent or a step failed on an event,
2 the config (or a step in it) is bad.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runtime.app import EXIT_FAILED
from runtime.cloudevents import record_from_json, record_to_json
from runtime.commands.options import add_config_argument, load_worker_config, report_config_error
from runtime.errors import ConfigError, DataError
from runtime.plugins import load_connector
from runtime.worker.transforming import transforms_for

__all__ = ["register"]


def register(subparsers: Any) -> None:
    transform = subparsers.add_parser(
        "transform", help="run a config's transforms on structured CloudEvents (JSON lines on stdin), print what comes out"
    )
    add_config_argument(transform, "worker config file whose transforms: run")
    transform.set_defaults(func=transform_command)


def transform_command(args: argparse.Namespace) -> int:
    try:
        config = load_worker_config(args.config)
        chain = transforms_for(config, load_connector(config.connector))
    except ConfigError as exc:
        return report_config_error(exc)
    if chain is None:
        print(f"meshconnect: {args.config} has no transforms: steps; events pass unchanged", file=sys.stderr)
    counts = {"in": 0, "out": 0, "dropped": 0, "failed": 0}
    for number, line in enumerate(sys.stdin.buffer, start=1):
        if not line.strip():
            continue
        counts["in"] += 1
        try:
            record = record_from_json(line)
        except DataError as exc:
            counts["failed"] += 1
            print(f"line {number}: not a CloudEvent: {exc.reason}", file=sys.stderr)
            continue
        try:
            result = record if chain is None else chain.apply(record)
            if result is None:
                counts["dropped"] += 1
                print(f"line {number} (id {record.id}): dropped by a filter", file=sys.stderr)
                continue
            out = record_to_json(result)
        except DataError as exc:
            counts["failed"] += 1
            print(f"line {number} (id {record.id}): would be dead-lettered: {exc.reason}", file=sys.stderr)
            continue
        if result.target is not None:
            print(f"line {number} (id {record.id}): target {result.target!r}", file=sys.stderr)
        sys.stdout.buffer.write(out + b"\n")
        counts["out"] += 1
    sys.stdout.flush()
    print(", ".join(f"{count} {what}" for what, count in counts.items()), file=sys.stderr)
    return EXIT_FAILED if counts["failed"] else 0
