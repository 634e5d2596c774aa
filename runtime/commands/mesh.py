"""``meshconnect mesh``: run the embedded EventMesh server on its own (also ``python -m runtime.commands.mesh``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from runtime.app import freeze_startup_heap
from runtime.config import LogSettings
from runtime.errors import ConfigError
from runtime.mesh import EmbeddedMesh
from runtime.observability import configure_logging

__all__ = ["register", "main"]

DESCRIPTION = """\
Run the embedded EventMesh TCP server: a development and test stand-in with in-memory topics
(durable with --data-dir). Production connectors point at a real Apache EventMesh runtime.
Un-acked pushes are redelivered; events wait in a bounded log per topic until every subscribed
group acked them, or until a group without a session for --group-expiry is dropped. Connections,
bytes and time before HELLO, topics and retained bytes are bounded: what passes a bound is refused
(an error answer, or a close before HELLO) and logged as mesh.refused. SIGTERM or SIGINT stops it
gracefully (SERVER_GOODBYE to every session).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mesh",
        help="run the embedded EventMesh server (development and test stand-in)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=10000, help="TCP port, 0 for any free one (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep events, cursors and acks in DIR (survive a crash)")
    parser.add_argument("--users", type=Path, default=None, help="YAML or JSON file mapping user names to passwords")
    parser.add_argument(
        "--redelivery-timeout",
        type=float,
        default=30.0,
        help="seconds before an un-acked push is redelivered (default: %(default)s)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=60.0,
        help="seconds without heartbeat before a session is closed (default: %(default)s)",
    )
    parser.add_argument(
        "--max-topic-events", type=int, default=100_000, help="retained events per topic before publishes are refused"
    )
    parser.add_argument(
        "--max-unacked-per-session",
        type=int,
        default=10_000,
        help="pushes in flight per session at most: what its HELLO asks (unack), else 1000 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-unacked-bytes-per-session",
        type=int,
        default=2 * 1024 * 1024,
        help="bytes of pushes in flight per session, per 1000 pushes of its window; one push always goes, however"
        " large (default: %(default)s, 2 MiB)",
    )
    parser.add_argument(
        "--max-event-size", type=int, default=None, help="largest event data accepted, in bytes (default: no limit)"
    )
    parser.add_argument(
        "--group-expiry",
        type=float,
        default=7 * 24 * 3600.0,
        help="seconds a consumer group may have no session before it is dropped and stops holding its topics' events;"
        " 0 keeps groups forever (default: %(default)s, 7 days)",
    )
    parser.add_argument(
        "--max-connections", type=int, default=1000, help="connections open at once; more are closed (default: %(default)s)"
    )
    parser.add_argument(
        "--hello-timeout",
        type=float,
        default=10.0,
        help="seconds a new connection has to say HELLO before it is closed (default: %(default)s)",
    )
    parser.add_argument(
        "--max-bytes-before-hello",
        type=int,
        default=16 * 1024,
        help="bytes of a frame a connection may send before its HELLO; more close it (default: %(default)s)",
    )
    parser.add_argument(
        "--max-incomplete-frame-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="bytes of frames begun and not yet complete, over all connections; the connection that passes it is"
        " closed (default: %(default)s, 64 MiB; at least one 4 MiB frame)",
    )
    parser.add_argument(
        "--max-topics",
        type=int,
        default=10_000,
        help="topics the mesh holds; publishes and subscriptions creating more are refused (default: %(default)s)",
    )
    parser.add_argument(
        "--max-retained-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="bytes of retained events over all topics before publishes are refused (default: %(default)s, 256 MiB)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def load_users(path: Path) -> Mapping[str, str]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("--users", f"cannot read {path}: {exc}", "give a readable YAML or JSON file") from exc
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, str | int) for k, v in loaded.items()):
        raise ConfigError("--users", f"{path} is not a mapping of user names to passwords", "write lines like 'alice: s3cret'")
    return {user: str(password) for user, password in loaded.items()}


async def serve(mesh: EmbeddedMesh) -> bool:
    """Run ``mesh`` until SIGTERM or SIGINT (then stop it gracefully) or until its store fails; True if it failed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await mesh.start()
    try:
        waits = {asyncio.create_task(stop.wait()), asyncio.create_task(mesh.wait_failed())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await mesh.stop()
    return mesh.failed


def run(args: argparse.Namespace) -> int:
    configure_logging(LogSettings(level=args.log_level))
    log = structlog.get_logger("meshconnect.mesh")
    try:
        mesh = EmbeddedMesh(
            args.host,
            args.port,
            users=load_users(args.users) if args.users is not None else None,
            data_dir=args.data_dir,
            redelivery_timeout=args.redelivery_timeout,
            session_timeout=args.session_timeout,
            max_topic_events=args.max_topic_events,
            max_unacked_per_session=args.max_unacked_per_session,
            max_unacked_bytes_per_session=args.max_unacked_bytes_per_session,
            max_event_size=args.max_event_size,
            group_expiry=args.group_expiry or None,
            max_connections=args.max_connections,
            hello_timeout=args.hello_timeout,
            max_bytes_before_hello=args.max_bytes_before_hello,
            max_topics=args.max_topics,
            max_retained_bytes=args.max_retained_bytes,
            max_incomplete_frame_bytes=args.max_incomplete_frame_bytes,
        )
        freeze_startup_heap()
        failed = asyncio.run(serve(mesh))
    except ConfigError as exc:
        log.error("mesh.config_error", error=str(exc))
        return 2
    except OSError as exc:
        log.error("mesh.listen_failed", host=args.host, port=args.port, error=str(exc))
        return 1
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.commands.mesh", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
