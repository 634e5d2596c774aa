"""The import rules of ARCHITECTURE.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import runtime

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
SERVICES = ROOT / "services"


# The codec is sans-IO: no event loop, socket, clock, logging or randomness of its own.
_IO_MODULES = {"asyncio", "socket", "time", "structlog", "uuid", "random", "secrets", "selectors", "threading"}
_CLOCK_READS = {"now", "utcnow", "today"}


# The layers of runtime, lowest first (ARCHITECTURE.md): a module imports only from lower layers
# and its own package. cli and commands are one layer, the command line.
_LAYERS = (
    {"errors"},
    {"validation"},
    {"record", "config", "columns"},
    {"protocol", "observability", "registry"},
    {"cloudevents"},
    {"client", "mesh", "publishing", "transforms"},
    {"connector"},
    {"plugins", "worker"},
    {"app", "configdoc"},
    {"testing"},
    {"cli"},
)
_RANK = {unit: rank for rank, units in enumerate(_LAYERS) for unit in units}


def _unit(module: str) -> str:
    """The runtime package or top-level module ``module`` belongs to (``runtime.worker.sink`` -> ``worker``)."""
    name = module.split(".")[1] if "." in module else "__init__"
    return "cli" if name == "commands" else name


def _imports(path: Path, *, include_type_checking: bool = True) -> Iterator[tuple[str, list[str]]]:
    """(module, imported names) of every import in ``path``, nested ones included (and, unless
    ``include_type_checking`` is false, those under ``if TYPE_CHECKING:``, which cost nothing at run time)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[ast.AST] = set()
    if not include_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                skipped.update(child for statement in node.body for child in ast.walk(statement))
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            yield node.module, [alias.name for alias in node.names]


def _service_files() -> Iterator[tuple[str, Path]]:
    for path in sorted(SERVICES.rglob("*.py")):
        yield path.relative_to(SERVICES).as_posix(), path


def test_services_import_only_the_public_names_of_runtime() -> None:
    offenders = []
    for relative, path in _service_files():
        for module, names in _imports(path):
            if module.split(".")[0] != "runtime":
                continue
            if module != "runtime" or not names:
                offenders.append(f"{relative}: {module} (import from runtime itself)")
            offenders.extend(f"{relative}: runtime.{name} is not public" for name in names if name not in runtime.__all__)
    assert offenders == [], offenders


def test_services_import_only_their_own_system_folder_and_the_shared_service_modules() -> None:
    shared = {f"services.{path.stem}" for path in SERVICES.glob("*.py") if path.stem != "__init__"}
    offenders = []
    for relative, path in _service_files():
        own = f"services.{relative.split('/')[0]}" if "/" in relative else None
        for module, _ in _imports(path):
            if module.split(".")[0] != "services" or module in shared:
                continue
            if own is None or not (module == own or module.startswith(own + ".")):
                offenders.append(f"{relative}: {module}")
    assert offenders == [], offenders


def test_the_protocol_codec_does_no_io() -> None:
    offenders = []
    for path in sorted((RUNTIME / "protocol").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        offenders.extend(f"{relative}: imports {module}" for module, _ in _imports(path) if module.split(".")[0] in _IO_MODULES)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in _CLOCK_READS:
                offenders.append(f"{relative}:{node.lineno}: reads the clock ({node.attr})")
    assert offenders == [], offenders


def test_runtime_modules_import_only_lower_layers() -> None:
    offenders = []
    for path in sorted(RUNTIME.rglob("*.py")):
        own = _unit(".".join(path.with_suffix("").relative_to(ROOT).parts))
        if own == "__init__":
            continue  # the public API gathers names from every layer
        for module, _ in _imports(path, include_type_checking=False):
            other = _unit(module) if module.split(".")[0] == "runtime" else None
            if other is not None and other != own and _RANK[other] >= _RANK[own]:
                offenders.append(f"{path.relative_to(ROOT).as_posix()}: {module} ({other} is not below {own})")
    modules = [path for path in RUNTIME.iterdir() if path.suffix == ".py" or (path / "__init__.py").is_file()]
    units = {_unit(f"runtime.{path.stem}") for path in modules}
    assert units - {"__init__"} == set(_RANK), "place every runtime module in a layer of _LAYERS"
    assert offenders == [], offenders


def test_runtime_does_not_import_services() -> None:
    offenders = [
        f"{path.relative_to(ROOT).as_posix()}: {module}"
        for path in sorted(RUNTIME.rglob("*.py"))
        for module, _ in _imports(path)
        if module.split(".")[0] == "services"
    ]
    assert offenders == [], offenders


# A module holds one idea; past this many lines it is split by responsibility, not by line count.
_MAX_MODULE_LINES = 600
_SIZE_CHECKED = ("runtime", "services", "tests", "bench")


def test_no_module_is_longer_than_the_limit() -> None:
    offenders = [
        f"{path.relative_to(ROOT).as_posix()}: {lines} lines"
        for folder in _SIZE_CHECKED
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (lines := len(path.read_bytes().splitlines())) > _MAX_MODULE_LINES
    ]
    assert offenders == [], f"split these by responsibility into modules of at most {_MAX_MODULE_LINES} lines: {offenders}"
