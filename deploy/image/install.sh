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

# pip only warns about an unknown extra: fail the build for a name that is not a registered connector.
"$venv/bin/python" - "$connector" <<'PY'
import sys
from importlib.metadata import entry_points

known = sorted(entry_point.name for entry_point in entry_points(group="meshconnect.connectors"))
if sys.argv[1] not in known:
    sys.exit(f"CONNECTOR={sys.argv[1]!r} is not a registered connector; choose one of: {', '.join(known)}")
PY

# The launcher is the image's entrypoint: Python itself is the process (no shell in between), so
# SIGTERM reaches the connector's main(), which drains, checkpoints and exits.
cat > "$venv/bin/meshconnect-connector" <<PY
#!$venv/bin/python
import sys

from runtime.cli import main

sys.exit(main(["run", "$connector", *sys.argv[1:]]))
PY
chmod 0755 "$venv/bin/meshconnect-connector"
