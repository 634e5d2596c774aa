"""The EventMesh TCP conformance vectors (written and decoded by the Java codec) and Java's view of our output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# The full conformance set has the same shape; point MESHCONNECT_TCP_VECTORS at it to run it too.
VECTORS_PATH = Path(
    os.environ.get("MESHCONNECT_TCP_VECTORS", Path(__file__).parent.parent / "data" / "eventmesh-tcp-vectors.json")
)
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VALID: list[dict[str, Any]] = VECTORS["valid"]
MALFORMED: list[dict[str, Any]] = VECTORS["malformed"]
ALL_FRAMES: list[tuple[str, bytes]] = [(v["name"], bytes.fromhex(v["frame_hex"])) for v in VALID + MALFORMED]


def expected_packages(vector: dict[str, Any]) -> list[dict[str, Any]]:
    verdict = vector.get("decoded_by_java") or vector["verdict"]
    return [{key: package.get(key) for key in ("header", "body_java_type", "body")} for package in verdict["packages"]]


def expected_outcome(vector: dict[str, Any]) -> dict[str, Any]:
    return vector.get("decoded_by_java") or vector["verdict"]
