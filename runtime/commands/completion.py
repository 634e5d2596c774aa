"""``meshconnect completion bash|zsh``: a shell completion script, generated from the command's own parser.

The script comes from the argparse parser by ``shtab``, so every command, option and choice added
later is completed without a script to keep in step; a positional argument shown as ``CONNECTOR``
completes the names of the connectors installed when the script was made. Install it with e.g.
``meshconnect completion bash > /etc/bash_completion.d/meshconnect`` or, for zsh,
``meshconnect completion zsh > "${fpath[1]}/_meshconnect"``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from runtime.plugins import catalogue

__all__ = ["CONNECTOR_METAVAR", "register"]

SHELLS = ("bash", "zsh")
CONNECTOR_METAVAR = "CONNECTOR"
"""The metavar of a positional argument that names a connector type: completed with the installed ones."""


def register(subparsers: Any) -> None:
    completion = subparsers.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.set_defaults(func=completion_command)


def completion_command(args: argparse.Namespace) -> int:
    import shtab  # only this command needs it: every other command starts without it

    from runtime.cli import build_parser  # the whole parser, which this command is part of

    parser = build_parser()
    names = " ".join(entry.name for entry in catalogue())
    connectors = {
        "bash": "_meshconnect_connectors",
        "zsh": f"({names})",
        "preamble": {"bash": f'_meshconnect_connectors() {{\n  compgen -W "{names}" -- "$1"\n}}\n'},
    }
    for action in _connector_arguments(parser):
        action.complete = connectors  # type: ignore[attr-defined]  # shtab reads this attribute
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0


def _connector_arguments(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                yield from _connector_arguments(subparser)
        elif not action.option_strings and action.metavar == CONNECTOR_METAVAR:
            yield action
