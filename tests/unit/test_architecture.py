"""The pure core's imports, exactly: an allow-list, because import-linter sees an external
package only as a whole (``urllib``, never ``urllib.request`` next to ``urllib.parse``).

Everything ``kilo.mesh`` imports must compute, never reach the world: no files, sockets,
processes, threads, clock or randomness. A module needed for computing is added here with
the reason it is pure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "src" / "kilo" / "mesh"

ALLOWED = {
    # the language and its data structures
    "__future__",
    "abc",
    "bisect",
    "collections",
    "collections.abc",
    "dataclasses",
    "enum",
    "functools",
    "itertools",
    "math",
    "operator",
    "types",
    "typing",
    # text and formats, in memory only
    "base64",
    "json",
    "re",
    "reprlib",
    "shlex",
    "urllib.parse",
    "yaml",  # only to render Peer manifests as text (peerspec.py)
    # datetime.date, to validate YAML timestamps (peerspec.py), and a Lease's renewTime
    # parsed (leadership.py); no clock
    "datetime",
    "ipaddress",
    "hashlib",  # only to name a location's Lease (leadership.py)
    # deriving a WireGuard public key from a private key (keys.py)
    "cryptography.hazmat.primitives.asymmetric.x25519",
    "cryptography.hazmat.primitives.serialization",
    # the project's own error tree
    "kilo.errors",
}


def imports_of(source: str) -> list[str]:
    """Every module a source text imports, at any depth of the file (functions too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the core uses absolute imports"
            assert node.module is not None
            found.append(node.module)
    return found


def forbidden(source: str) -> list[str]:
    return [
        name
        for name in imports_of(source)
        if name not in ALLOWED and name != "kilo.mesh" and not name.startswith("kilo.mesh.")
    ]


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_only_what_computes(path: Path) -> None:
    assert forbidden(path.read_text()) == []


def test_the_check_refuses_io_modules_and_third_party_io() -> None:
    source = "import pyroute2, lightkube, pathlib, threading, urllib.request, shutil\n"
    source += "from urllib.parse import urlsplit\n"
    source += "def f():\n    import subprocess\n    from kilo.adapters import netlink\n"
    assert forbidden(source) == [
        "pyroute2",
        "lightkube",
        "pathlib",
        "threading",
        "urllib.request",
        "shutil",
        "subprocess",
        "kilo.adapters",
    ]
