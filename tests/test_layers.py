"""The package's layers: every import in ``agent/`` points down the layers.

From the bottom: the shared base (``agent.version``, ``agent.errors``, and
``agent.argtypes``, the option types of both commands); the
wire protocol (``agent.wire``), the OS layer (``agent.system``) and the
transports (``agent.transports``), which know nothing of each other; the
schema's models (``agent.models``); the agent's core (``agent.core``); the
command handlers (``agent.handlers``); and at the top the guest daemon's
command line (``agent.daemon``) and the host side (``agent.host``), which
share nothing but what lies below the core: the host never loads the guest
agent. Every import counts, those inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "agent"

# What each layer may import, besides itself.
MAY_IMPORT: dict[str, set[str]] = {
    "agent.version": set(),
    "agent.errors": set(),
    "agent.argtypes": set(),
    "agent.wire": {"agent.errors"},
    "agent.system": {"agent.errors"},
    "agent.transports": {"agent.errors"},
    "agent.models": {"agent.errors", "agent.wire"},
    "agent.core": {
        "agent.version",
        "agent.errors",
        "agent.wire",
        "agent.system",
        "agent.transports",
        "agent.models",
    },
    "agent.handlers": {
        "agent.version",
        "agent.errors",
        "agent.wire",
        "agent.system",
        "agent.models",
        "agent.core",
    },
    "agent.daemon": {
        "agent.version",
        "agent.errors",
        "agent.argtypes",
        "agent.wire",
        "agent.system",
        "agent.transports",
        "agent.models",
        "agent.core",
    },
    "agent.host": {
        "agent.version",
        "agent.errors",
        "agent.argtypes",
        "agent.wire",
        "agent.models",
    },
}
# The package's entry points sit on top of everything.
TOP = {"agent", "agent.__main__", "agent.testing"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``agent...`` module that ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from agent.x import y`` may import the module agent.x.y
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "agent" or name.startswith("agent.")}


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    for path in MODULES:
        name = module_name(path)
        assert name in TOP or layer_of(name) in MAY_IMPORT, f"{name} is in no layer"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_down(path: Path) -> None:
    name = module_name(path)
    if name in TOP:
        return
    layer = layer_of(name)
    allowed = MAY_IMPORT[layer] | {layer}
    wrong = sorted(
        imported
        for imported in imported_modules(path)
        if imported != "agent" and layer_of(imported) not in allowed
        # ``from agent.wire import b64`` names a module of an allowed layer
    )
    assert not wrong, f"{name} ({layer}) imports {wrong}"


def test_no_import_cycles() -> None:
    """No module reaches itself through what it imports (in a function too).

    A package's own modules importing through it (``from agent.handlers import
    exec``) are not a cycle: the package only gathers them."""
    names = {module_name(path) for path in MODULES}
    graph = {}
    for path in MODULES:
        module = module_name(path)
        graph[module] = {
            name
            for name in imported_modules(path)
            if name in names and name != module and not module.startswith(name + ".")
        }
    for start in graph:
        seen: set[str] = set()
        stack = [*graph[start]]
        while stack:
            name = stack.pop()
            assert name != start or start in TOP, f"{start} imports itself through {seen}"
            if name not in seen:
                seen.add(name)
                stack.extend(graph[name])


def test_the_layer_test_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check itself can fail: an upward import is found, in a function too."""
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from agent.core.session import serve_session\n")
    assert imported_modules(module) == {"agent.core.session", "agent.core.session.serve_session"}
    assert layer_of("agent.core.session") not in MAY_IMPORT["agent.wire"]
