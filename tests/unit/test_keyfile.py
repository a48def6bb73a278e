"""The agent's private key file: Kilo's read, regenerate and write rules."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kilo.adapters import keyfile
from kilo.errors import ConfigError
from kilo.mesh.keys import Key
from tests.examples import PRIVATE_KEYS, PUBLIC_KEYS


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_key_is_generated_with_private_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "lib" / "kilo"
    loaded = keyfile.load_or_create(directory)
    assert loaded.generated
    assert mode(directory) == 0o700
    text = (directory / "key").read_text()
    assert mode(directory / "key") == 0o600
    assert not text.endswith("\n")  # Kilo writes the key without a newline
    assert Key.parse(text) == loaded.private
    assert loaded.public == loaded.private.public_key()
    # Clamped like `wg genkey`.
    assert loaded.private.raw[0] & 7 == 0 and loaded.private.raw[31] & 0xC0 == 0x40


def test_an_existing_key_is_kept_and_surrounding_newlines_ignored(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(f"\n{PRIVATE_KEYS['alpha']}\n")
    loaded = keyfile.load_or_create(tmp_path)
    assert not loaded.generated
    assert loaded.private == PRIVATE_KEYS["alpha"]
    assert loaded.public == PUBLIC_KEYS["alpha"]
    assert (tmp_path / "key").read_text() == f"\n{PRIVATE_KEYS['alpha']}\n"


@pytest.mark.parametrize("content", ["", "not a key", "AAAA", " " + str(PRIVATE_KEYS["beta"])])
def test_an_invalid_key_is_replaced(tmp_path: Path, content: str) -> None:
    (tmp_path / "key").write_text(content)
    loaded = keyfile.load_or_create(tmp_path)
    assert loaded.generated
    assert Key.parse((tmp_path / "key").read_text()) == loaded.private


def test_unreadable_key_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "key").mkdir()  # a directory where the key should be
    with pytest.raises(ConfigError, match=f"cannot read private key {tmp_path / 'key'}"):
        keyfile.load_or_create(tmp_path)


def test_generated_keys_differ_and_never_show_in_repr() -> None:
    first, second = keyfile.generate_private_key(), keyfile.generate_private_key()
    assert first != second
    assert str(first) not in repr(first)
