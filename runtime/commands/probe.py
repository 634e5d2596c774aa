"""``meshconnect probe``: is the connector running with this config alive? (The image's HEALTHCHECK.)

It reads the same config file, with the same ``MESHCONNECT__...`` overrides, as the connector it
probes, so it asks the admin port the connector really listens on rather than a guess.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from runtime.app import CONFIG_ENV, EXIT_CONFIG, EXIT_FAILED
from runtime.config import AdminSettings, load_config
from runtime.errors import ConfigError

__all__ = ["admin_url", "register"]

_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def register(subparsers: Any) -> None:
    probe = subparsers.add_parser(
        "probe", help="GET /healthz (or /readyz) of the connector running with this config; exit 0 on 200"
    )
    probe.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV, "config.yaml"),
        help=f"the connector's config file (default: ${CONFIG_ENV} or ./config.yaml)",
    )
    probe.add_argument("--path", choices=("/healthz", "/readyz"), default="/healthz", help="endpoint to ask")
    probe.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer (default 4)")
    probe.set_defaults(func=probe_command)


def admin_url(admin: AdminSettings, path: str) -> str:
    """The URL of ``path`` on the admin endpoint, as reached from the same machine."""
    host = _WILDCARD_HOSTS.get(admin.host, admin.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{admin.port}{path}"


def probe_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"meshconnect: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.admin.port == 0:
        print(
            "meshconnect: admin.port is 0 (any free port), so the probe cannot know it: set a fixed admin.port",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    url = admin_url(config.admin, args.path)
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"probe failed: {url} did not answer ({exc}): is the connector of {args.config} running?", file=sys.stderr)
        return EXIT_FAILED
    if status != 200:
        print(f"probe failed: {url} answered {status}", file=sys.stderr)
        return EXIT_FAILED
    print(f"ok: {url} answered 200")
    return 0
