"""``meshconnect completion bash|zsh``: a shell completion script, generated from the command's own parser.

The script comes from the argparse parser by ``shtab``, so every command, option and choice added
later is completed without a script to keep in step. Install it with e.g.
``meshconnect completion bash > /etc/bash_completion.d/meshconnect`` or, for zsh,
``meshconnect completion zsh > "${fpath[1]}/_meshconnect"``.
"""

from __future__ import annotations

import argparse
from typing import Any

import shtab

__all__ = ["register"]

SHELLS = ("bash", "zsh")


def register(subparsers: Any) -> None:
    completion = subparsers.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.set_defaults(func=completion_command)


def completion_command(args: argparse.Namespace) -> int:
    from runtime.cli import build_parser  # the whole parser, which this command is part of

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0
