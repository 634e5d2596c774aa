"""runtime/protocol stays sans-IO: bytes in, packages out, no sockets, clocks, event loops or logging."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"anyio", "asyncio", "socket", "time", "logging", "structlog", "selectors", "ssl"}
PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "runtime" / "protocol"


@pytest.mark.parametrize("path", sorted(PROTOCOL_DIR.glob("*.py")), ids=lambda path: path.name)
def test_protocol_module_imports_no_io(path: Path) -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"
