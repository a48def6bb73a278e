"""The agent's WireGuard private key on disk (``/var/lib/kilo/key``).

Kilo's rules: the directory is created with mode 0700; the file holds the base64 key with
surrounding newlines ignored; a missing or unparsable key is replaced by a new one, written
without a trailing newline with mode 0600. Any other read error is fatal. The key itself is
never logged; callers get a :class:`~kilo.mesh.keys.Key` whose ``repr`` hides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from kilo.errors import ConfigError
from kilo.mesh.keys import Key, clamp

DEFAULT_DIRECTORY = Path("/var/lib/kilo")
KEY_FILE = "key"


@dataclass(frozen=True, slots=True)
class LoadedKey:
    private: Key
    public: Key
    generated: bool  # true when no usable key was on disk and a new one was written


def generate_private_key() -> Key:
    """A new Curve25519 private key (clamped, as ``wg genkey`` writes it)."""
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    # cryptography returns the unclamped scalar; clamp it so the file matches wg's format.
    return Key(clamp(raw))


def load_or_create(directory: Path = DEFAULT_DIRECTORY) -> LoadedKey:
    """Read the private key, or create it; raise :class:`ConfigError` naming the file."""
    path = directory / KEY_FILE
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create key directory {directory}: {exc.strerror or exc}"
        ) from exc
    private: Key | None = None
    try:
        private = Key.try_parse(path.read_text(encoding="ascii", errors="replace").strip("\n"))
    except FileNotFoundError:
        private = None
    except OSError as exc:
        raise ConfigError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    if private is not None:
        return LoadedKey(private, private.public_key(), generated=False)
    private = generate_private_key()
    _write_private(path, private)
    return LoadedKey(private, private.public_key(), generated=True)


def _write_private(path: Path, key: Key) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # Created 0600 from the start (no window where the key is readable), then renamed
        # into place so that a crash never leaves a half-written key.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(str(key))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write private key {path}: {exc.strerror or exc}") from exc


def read_key_file(path: Path) -> Key | None:
    """The private key in ``path`` (``kgctl connect --private-key``); ``None`` if missing.

    Unlike the agent's key, a file that holds no valid key is an error, never replaced: it
    may be a key the user meant to use.
    """
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"failed to read private key {path}: {exc.strerror or exc}") from exc
    key = Key.try_parse(text.strip("\n"))
    if key is None:
        raise ConfigError(
            f"failed to parse private key {path}: not a base64 WireGuard key "
            "(as written by 'wg genkey')"
        )
    return key


def write_key_file(path: Path, key: Key) -> None:
    """Write ``key`` to ``path`` (0600); a missing parent directory is created 0700."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create key directory {path.parent}: {exc.strerror or exc}"
        ) from exc
    _write_private(path, key)
