"""The import rules of mmc's layers (README, "How it works"), checked on the source.

Layers point down only: the broker layer knows no store, the schemas load without the
MQTT client, an API module never imports another one, and no module imports itself
through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mmc"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The mmc modules ``name`` imports, anywhere in it (a function's imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # "from mmc.brokers import mappings" imports the module mmc.brokers.mappings.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(importer: str, imported: str) -> list[str]:
    return [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if _in(name, importer)
        for target in sorted(targets)
        if _in(target, imported)
    ]


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        # The broker layer speaks MQTT to brokers; what is stored reaches it as LinkConfig.
        ("mmc.brokers", "mmc.store"),
        # Schemas validate requests; loading them must not load aiomqtt and paho.
        ("mmc.schemas", "mmc.brokers"),
        # Nothing below the HTTP layer knows about it.
        ("mmc.brokers", "mmc.schemas"),
        ("mmc.brokers", "mmc.services"),
        ("mmc.brokers", "mmc.web"),
        ("mmc.services", "mmc.web"),
        ("mmc.services", "mmc.api"),
        ("mmc.auth", "mmc.services"),
        ("mmc.store", "mmc.brokers"),
        ("mmc.store", "mmc.services"),
    ],
)
def test_layer_does_not_import(importer: str, imported: str) -> None:
    assert _violations(importer, imported) == []


def test_no_api_module_imports_another() -> None:
    found = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if _in(name, "mmc.api")
        for target in sorted(targets)
        if _in(target, "mmc.api") and target != "mmc.api"
    ]
    assert found == []


def test_no_import_cycles() -> None:
    # Depth-first search for a back edge; the path to it is the cycle.
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_rules_see_imports() -> None:
    # The checks above pass vacuously if the walk finds nothing: it must see known edges.
    assert "mmc.brokers.link" in GRAPH["mmc.brokers.pool"]
    assert "mmc.brokers.mappings" in GRAPH["mmc.brokers.license"]
    assert "mmc.web.brokers" in GRAPH["mmc.api.brokers"]
