"""The suite's own layout: what tests share lives in ``tests/support``, and no test
module imports another (nor does a benchmark, nor the support package): a test
module can be moved, renamed or deleted without breaking any other. Every import
counts, those inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
SUPPORT = "tests.support"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module ``path`` imports (``from tests import x``: ``tests.x``);
    a relative import as ``.name``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            if node.level == 0 and node.module in ("tests", SUPPORT):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def foreign_test_imports(path: Path) -> list[str]:
    """What ``path`` imports of the suite other than its support package."""
    return sorted(
        module
        for module in imported_modules(path)
        if module.startswith(".")
        or (module.startswith("tests.") and module.split(".")[1] != "support")
    )


def python_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.py"))


@pytest.mark.parametrize(
    "path",
    python_files(TESTS) + python_files(ROOT / "benchmarks"),
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_imports_only_the_support_package_of_the_suite(path: Path) -> None:
    assert foreign_test_imports(path) == []


def test_helpers_live_in_the_support_package() -> None:
    """Beside the test modules, nothing but the package marker."""
    loose = [
        path.name
        for path in TESTS.iterdir()
        if path.is_file() and path.name != "__init__.py" and not path.name.startswith("test_")
    ]
    assert loose == []


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    module = tmp_path / "test_example.py"
    module.write_text(
        "from tests.support.clients import SocketClient\n"
        "from tests.support import exchange_checks\n"
        "import tests.test_vm\n"
        "from tests import test_exec\n"
        "def later():\n"
        "    from tests.test_accounts import KEY1\n"
        "    from .scratch import Scratch\n"
    )
    assert foreign_test_imports(module) == [
        ".scratch",
        "tests.test_accounts",
        "tests.test_exec",
        "tests.test_vm",
    ]
