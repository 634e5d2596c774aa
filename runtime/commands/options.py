"""What several commands share: the ``--config`` option (or ``MESHCONNECT_CONFIG``) and how a config error is told."""

from __future__ import annotations

import argparse
import os
import sys

from runtime.app import CONFIG_ENV, EXIT_CONFIG
from runtime.config import ConfigFileError, LogSettings, WorkerConfig, load_config
from runtime.errors import ConfigError
from runtime.observability import configure_logging

__all__ = ["add_config_argument", "load_worker_config", "positive_int", "report_config_error"]


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1 (``--limit``, ``--count``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def add_config_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--config FILE``, required unless ``MESHCONNECT_CONFIG`` names the file."""
    default = os.environ.get(CONFIG_ENV) or None
    parser.add_argument("--config", required=default is None, default=default, help=f"{help} (default: ${CONFIG_ENV})")


def load_worker_config(path: str, *, connector: str | None = None) -> WorkerConfig:
    """``load_config`` with its warnings (a ``${VAR}`` value, a Java key ignored) on stderr, never mixed into stdout."""
    configure_logging(LogSettings(), stream=sys.stderr)
    return load_config(path, connector=connector)


def report_config_error(exc: ConfigError) -> int:
    """Print ``exc`` on stderr; the exit code of a bad config."""
    prefix = "meshconnect" if isinstance(exc, ConfigFileError) else "invalid"
    print(f"{prefix}: {exc}", file=sys.stderr)
    return EXIT_CONFIG
