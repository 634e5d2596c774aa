#!/bin/sh
# Installs one connector into a fresh virtual environment: the meshconnect package with only that
# connector's extra, then a launcher that runs it. The Dockerfile's build stage runs this script, and
# tests/deploy runs it too, so the image's install step is checked without a Docker engine.
#
# usage: install.sh CONNECTOR VENV [SOURCE_DIR]
set -eu

connector="$1"
venv="$2"
source_dir="${3:-.}"

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${source_dir}[${connector}]"

# pip only warns about an unknown extra: fail the build for a name that is not a registered connector,
# or one that cannot be imported with only its own extra installed.
"$venv/bin/python" - "$connector" <<'PY'
import sys

from runtime.errors import ConfigError
from runtime.plugins import load_connector

try:
    load_connector(sys.argv[1])
except ConfigError as exc:
    sys.exit(f"CONNECTOR={sys.argv[1]}: {exc}")
PY

# The launcher is the image's entrypoint: Python itself is the process (no shell in between), so
# SIGTERM reaches the connector's main(), which drains, checkpoints and exits.
cat > "$venv/bin/meshconnect-connector" <<PY
#!$venv/bin/python
from runtime.app import main_for
from runtime.plugins import load_connector

main_for(load_connector("$connector"))
PY
chmod 0755 "$venv/bin/meshconnect-connector"
