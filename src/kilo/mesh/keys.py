"""WireGuard keys: 32-byte Curve25519 keys written as standard base64.

Pure. Generating a key needs randomness and lives in the adapters; deriving a public key
from a private key is deterministic and lives here.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from kilo.errors import KiloError

KEY_LENGTH = 32


class InvalidKeyError(KiloError, ValueError):
    """A text is not a WireGuard key."""


_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_NEWLINES = (0x0A, 0x0D)
_PAD = 0x3D
_ZERO_RAW = bytes(KEY_LENGTH)


_CANONICAL = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _corrupt(offset: int) -> InvalidKeyError:
    return InvalidKeyError(f"illegal base64 data at input byte {offset}")


def decode_base64(text: str) -> bytes:
    """Go's ``base64.StdEncoding.DecodeString``, with Go's error text and byte offset.

    Padding is required, ``\r`` and ``\n`` are skipped anywhere, and an error names the
    offset Go names (``illegal base64 data at input byte 40``), so that messages match.
    """
    if _CANONICAL.fullmatch(text):
        # Whole quanta of the alphabet, padding only at the end: Go and the C decoder
        # agree on these (the usual case, e.g. every key Kilo writes), and it is 50 times
        # faster. Anything else goes through Go's algorithm below for Go's error.
        return base64.b64decode(text)
    src = text.encode("utf-8", "surrogatepass")
    out = bytearray()
    si, end = 0, len(src)
    while si < end:
        quantum = [0, 0, 0, 0]
        size = 4
        j = 0
        while j < 4:
            if si == end:
                if j == 0:
                    return bytes(out)
                raise _corrupt(si - j)
            c = src[si]
            si += 1
            value = _DECODE.get(c)
            if value is not None:
                quantum[j] = value
                j += 1
                continue
            if c in _NEWLINES:
                continue
            if c != _PAD or j < 2:
                raise _corrupt(si - 1)
            if j == 2:
                # "==" is expected; the first "=" is consumed already.
                while si < end and src[si] in _NEWLINES:
                    si += 1
                if si == end:
                    raise _corrupt(end)
                if src[si] != _PAD:
                    raise _corrupt(si - 1)
                si += 1
            while si < end and src[si] in _NEWLINES:
                si += 1
            if si < end:
                raise _corrupt(si)  # trailing garbage after the padding
            size = j
            break
        bits = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += bits.to_bytes(3, "big")[: size - 1]
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Key:
    """A WireGuard key (public, private or preshared)."""

    raw: bytes
    # The base64 text, computed once: a large mesh's configs and graphs print each key on
    # every apply. Not part of the value (equality, hash, repr).
    _text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LENGTH:
            raise InvalidKeyError(f"a WireGuard key has {KEY_LENGTH} bytes, got {len(self.raw)}")
        object.__setattr__(self, "_text", base64.b64encode(self.raw).decode("ascii"))

    @classmethod
    def parse(cls, text: str) -> Key:
        """Parse standard padded base64, ignoring ``\\r`` and ``\\n`` as Go does."""
        try:
            raw = decode_base64(text)
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"WireGuard key is not base64 encoded: {exc}") from exc
        if len(raw) != KEY_LENGTH:
            raise InvalidKeyError("WireGuard key has invalid length")
        return cls(raw)

    @classmethod
    def try_parse(cls, text: str | None) -> Key | None:
        """``parse`` that returns ``None`` instead of raising."""
        if text is None:
            return None
        try:
            return cls.parse(text)
        except InvalidKeyError:
            return None

    @property
    def is_zero(self) -> bool:
        return self.raw == _ZERO_RAW

    def public_key(self) -> Key:
        """The public key of this private key (clamping is applied by X25519)."""
        # Imported here: most of kgctl never derives a key, and cryptography's bindings
        # take 20-30 ms to import.
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        private = X25519PrivateKey.from_private_bytes(self.raw)
        return Key(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        # Never print key material by accident: a private key may end up in a log line.
        return f"Key({str(self)[:6]}…)"


ZERO_KEY = Key(bytes(KEY_LENGTH))


def clamp(raw: bytes) -> bytes:
    """Clamp 32 random bytes into a Curve25519 private key, as ``wg genkey`` does."""
    if len(raw) != KEY_LENGTH:
        raise InvalidKeyError(f"a WireGuard key has {KEY_LENGTH} bytes, got {len(raw)}")
    key = bytearray(raw)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)
