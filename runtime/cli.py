"""The ``meshconnect`` command: each command group lives in ``runtime/commands/<group>.py``.

A group module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` to a callable taking the parsed namespace and returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from runtime.observability import package_version

__all__ = ["main"]

COMMAND_MODULES = (
    "runtime.commands.protocol",
    "runtime.commands.mesh",
    "runtime.commands.connectors",
    "runtime.commands.registry",
    "runtime.commands.dlq",
    "runtime.commands.demo",
    "runtime.commands.events",
    "runtime.commands.completion",
    "runtime.commands.probe",
    "runtime.commands.transform",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshconnect", description="Connectors for Apache EventMesh.")
    parser.add_argument("--version", action="version", version=f"meshconnect {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every command module needs only the core dependencies: one that cannot be imported is a broken
    # installation, reported as such rather than a command silently missing from the list.
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
