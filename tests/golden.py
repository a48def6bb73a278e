"""Expected outputs kept verbatim in ``tests/golden/``, one file per output.

Each file holds the text exactly as the program prints it: real tabs, no added or stripped
whitespace, and a final newline only where the program writes one. Keys in them are the
fixed keys of ``tests/examples.py``. A test compares a whole output with ``text(name)``, or
with ``lines(name)`` when the output is one item per line (routes, rules), as exactly as it
compared the literal that the file replaced. ``.gitattributes`` keeps git from converting
their line endings.
"""

from __future__ import annotations

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent / "golden"


def text(name: str) -> str:
    """The exact text of ``tests/golden/<name>`` (UTF-8, no newline translation)."""
    return (DIRECTORY / name).read_bytes().decode()


def lines(name: str) -> list[str]:
    """The lines of a one-item-per-line file, each of which ends with a newline."""
    content = text(name)
    assert content.endswith("\n"), f"tests/golden/{name} does not end with a newline"
    return content.split("\n")[:-1]
