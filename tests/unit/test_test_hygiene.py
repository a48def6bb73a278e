"""The tests' own rules: shared data has one home outside the test modules.

A test module never imports another (shared builders live in helper modules such as
tests/examples.py, shared expected outputs in tests/golden/), and every golden file is
compared by some test, byte for byte (no carriage returns from a line-ending conversion).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests import golden

TESTS = Path(__file__).resolve().parents[1]


def _is_test_module(name: str) -> bool:
    return any(part.startswith("test_") for part in name.split("."))


def imported_test_modules(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            found += [n for n in names if _is_test_module(n)]
    return found


def test_no_test_module_imports_another() -> None:
    imports = {
        str(path.relative_to(TESTS)): imported_test_modules(path)
        for path in sorted(TESTS.rglob("*.py"))
    }
    assert {path: names for path, names in imports.items() if names} == {}


def test_the_check_sees_both_import_forms(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text(
        "from tests.unit.test_graph import X\nfrom tests.unit import test_iptables\n"
        "import tests.e2e.test_iptables_restore\nfrom tests.examples import KILO_SUBNET\n"
    )
    assert imported_test_modules(module) == [
        "tests.unit.test_graph",
        "tests.unit.test_graph.X",
        "tests.unit.test_iptables",
        "tests.e2e.test_iptables_restore",
    ]


def test_every_golden_file_is_compared_by_a_test() -> None:
    sources = "\n".join(p.read_text() for p in TESTS.rglob("*.py"))
    files = sorted(p.name for p in golden.DIRECTORY.iterdir())
    assert files
    assert [name for name in files if f'"{name}"' not in sources] == []


def test_golden_files_have_no_carriage_returns() -> None:
    assert [p.name for p in golden.DIRECTORY.iterdir() if b"\r" in p.read_bytes()] == []
