"""Running a connector as a process: ``main_for(TheClass)`` in a service's ``__main__``, ``meshconnect run``.

One process runs one connector instance: it loads and validates the config (failing at once, with
the key and the fix, on a bad one), starts the admin endpoint, opens the registry, runs the source
or sink worker, and on SIGTERM or SIGINT drains: in-flight work is finished, offsets are
checkpointed, the mesh session says goodbye, and the process exits 0 — all within
``shutdown_timeout`` seconds, after which what is left is abandoned (nothing was acked or
checkpointed for it, so it is delivered again).

Exit codes: 0 clean stop, 1 the worker failed, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import structlog

from runtime.config import RegistrySettings, WorkerConfig, connector_config, load_config
from runtime.connector import Sink, Source
from runtime.errors import ConfigError
from runtime.observability import AdminServer, ConnectorMetrics, StatusBoard, configure_logging
from runtime.plugins import ConnectorClass, load_connector
from runtime.publishing import check_source_topics
from runtime.registry import Registry
from runtime.worker import SinkWorker, SourceWorker
from runtime.worker.transforming import transforms_for

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "freeze_startup_heap", "main_for", "open_registry", "run_connector", "serve"]

EXIT_FAILED = 1
EXIT_CONFIG = 2
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
CONFIG_ENV = "MESHCONNECT_CONFIG"


def open_registry(settings: RegistrySettings) -> Registry:
    """The offset and lease store the ``registry:`` section names."""
    if settings.kind == "redis":
        from runtime.registry.redis import RedisRegistry

        return RedisRegistry.from_settings(settings)
    from runtime.registry.file import FileRegistry

    return FileRegistry(Path(settings.path))


def main_for(cls: ConnectorClass, argv: Sequence[str] | None = None) -> NoReturn:
    """The ``main()`` of a service: ``python -m services.<pkg> --config FILE``."""
    parser = argparse.ArgumentParser(prog=f"python -m {cls.__module__.rsplit('.', 1)[0]}", description=cls.description)
    parser.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV, "config.yaml"),
        help=f"worker config file (default: ${CONFIG_ENV} or ./config.yaml)",
    )
    parser.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT, help="seconds to drain on SIGTERM")
    args = parser.parse_args(argv)
    exit_process(run_connector(args.config, connector_class=cls, shutdown_timeout=args.shutdown_timeout))


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` once the connector has stopped, without finalizing the interpreter.

    By now every write is durable and acknowledged and the offsets are committed. What finalizing would
    still do is destroy native clients' objects, and one of them (pulsar-client's C++ client) can abort
    the process there with its threads still running, turning a clean stop into exit -6.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_connector(
    config_path: str | os.PathLike[str],
    *,
    connector_class: ConnectorClass | None = None,
    connector: str | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
) -> int:
    """Load the config, run the connector until SIGTERM/SIGINT, return the exit code."""
    try:
        config = load_config(config_path, connector=connector or (connector_class.name if connector_class else None))
        cls = connector_class or load_connector(config.connector)
    except ConfigError as exc:
        print(f"meshconnect: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log)
    freeze_startup_heap()
    return asyncio.run(serve(cls, config, shutdown_timeout=shutdown_timeout))


_YOUNG_COLLECTION_EVERY = 10_000
"""Net allocations of container objects between two collections of the youngest generation (Python's default: 700)."""


def freeze_startup_heap() -> None:
    """Move what start-up made (modules, classes, config) out of the garbage collector's generations, and
    collect the youngest generation every ``_YOUNG_COLLECTION_EVERY`` allocations instead of 700.

    They live as long as the process, and each collection then walks only what the traffic
    allocates: about a fifth of a worker's CPU. What the traffic allocates lives until its ack or its
    checkpoint (a source's read-ahead and window: tens of thousands of records), so with the default
    threshold nearly all of it was promoted to the oldest generation, whose full collections then took a
    tenth of a source worker's CPU; a larger young generation lets those objects die young. It affects the
    whole interpreter, so only process entry points call it (``run_connector``, ``meshconnect mesh``), never a
    library class.
    """
    gc.freeze()
    gc.set_threshold(_YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])


async def serve(
    cls: ConnectorClass,
    config: WorkerConfig,
    *,
    stop: asyncio.Event | None = None,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    install_signals: bool = True,
) -> int:
    """Run ``cls`` with ``config`` until ``stop`` is set (or a signal arrives); return the exit code."""
    log = structlog.get_logger().bind(connector=config.connector, name=config.name)
    try:
        instance = cls(connector_config(cls.config_model, config))
        if isinstance(instance, Source):
            check_source_topics(type(instance), config, instance.config)
        transforms_for(config, cls)  # the workers compile them again; a bad step stops the start here
        # A sink only reports its membership, and only to a registry its config names.
        wants_registry = cls.side == "source" or "registry" in config.model_fields_set
        registry = open_registry(config.registry) if wants_registry else None
    except ConfigError as exc:
        log.error("bad configuration", key=exc.key, problem=exc.problem, fix=exc.fix)
        return EXIT_CONFIG
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, stop, signum, log)
    metrics = ConnectorMetrics(config.connector, config.name)
    board = StatusBoard(
        connector=config.connector,
        name=config.name,
        side=cls.side,
        metrics=metrics,
        stall_timeout=config.admin.stall_timeout,
    )
    admin = AdminServer(config.admin, board)
    log.info("starting", config=config.model_dump())
    try:
        await admin.start()
    except OSError as exc:
        log.error("admin endpoint cannot listen", port=config.admin.port, error=str(exc), fix="set admin.port to a free port")
        return EXIT_CONFIG
    drain = max(1.0, shutdown_timeout * 0.8)
    worker = asyncio.create_task(_worker(instance, config, registry, board, drain).run(stop))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([worker, stopping], return_when=asyncio.FIRST_COMPLETED)
        code = await _finish(worker, shutdown_timeout, log)
    finally:
        stopping.cancel()
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        await admin.stop()
        if registry is not None:
            await registry.close()
    log.info("stopped", exit_code=code)
    return code


async def _finish(worker: asyncio.Task[None], shutdown_timeout: float, log: Any) -> int:
    """Wait for the draining worker (bounded); the exit code from how it ended."""
    # asyncio.wait, not wait_for: a TimeoutError the worker raised itself is its failure, not the deadline.
    await asyncio.wait({worker}, timeout=shutdown_timeout)
    if not worker.done():
        log.warning("drain took longer than the shutdown timeout: stopping now", timeout=shutdown_timeout)
        worker.cancel()
        await asyncio.wait({worker})
        return 0
    exc = None if worker.cancelled() else worker.exception()
    if isinstance(exc, ConfigError):  # met only once running, e.g. a spool directory it cannot use
        log.error("bad configuration", key=exc.key, problem=exc.problem, fix=exc.fix)
        return EXIT_CONFIG
    if exc is not None:  # the worker's own failure, whatever it was: report it and exit non-zero
        log.error("worker failed", error=repr(exc), exc_info=exc)
        return EXIT_FAILED
    return 0


def _on_signal(stop: asyncio.Event, signum: int, log: Any) -> None:
    log.info("signal received: draining", signal=signal.Signals(signum).name)
    stop.set()


def _worker(
    instance: Source[Any] | Sink[Any], config: WorkerConfig, registry: Registry | None, board: StatusBoard, drain: float
) -> SourceWorker | SinkWorker:
    if isinstance(instance, Source):
        assert registry is not None
        return SourceWorker(instance, config, registry=registry, board=board, metrics=board.metrics, drain_timeout=drain)
    return SinkWorker(instance, config, board=board, metrics=board.metrics, registry=registry, drain_timeout=drain)
