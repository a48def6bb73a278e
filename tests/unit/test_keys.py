"""WireGuard keys: Go-compatible base64, derivation and clamping."""

from __future__ import annotations

import pytest

from kilo.mesh.keys import KEY_LENGTH, ZERO_KEY, InvalidKeyError, Key, clamp, decode_base64

KEY = "KiPuWyUHI4XEGa4TZDwK2txpogj3ImzUC6eD+tJPZ18="

# RFC 7748 §6.1 (X25519 Diffie-Hellman test vectors).
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")


def test_parse_round_trips() -> None:
    key = Key.parse(KEY)
    assert len(key.raw) == KEY_LENGTH
    assert str(key) == KEY
    assert Key.parse(str(key)) == key
    assert not key.is_zero


@pytest.mark.parametrize(
    "text",
    [
        KEY[:10] + "\r\n" + KEY[10:],
        KEY[:10] + "\n" + KEY[10:20] + "\r" + KEY[20:],
        "\n" + KEY + "\r\n",
        KEY[:43] + "\n=",  # even between the data and the padding
    ],
)
def test_carriage_returns_and_newlines_are_ignored(text: str) -> None:
    assert Key.parse(text) == Key.parse(KEY)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (KEY[:43], "illegal base64 data at input byte 40"),  # padding is required
        (KEY + "=", "illegal base64 data at input byte 44"),
        (KEY[:20] + "!" + KEY[21:], "illegal base64 data at input byte 20"),
        (KEY[:20] + " " + KEY[21:], "illegal base64 data at input byte 20"),
        (KEY.replace("+", "-"), "illegal base64 data at input byte 36"),  # URL alphabet
        (" " + KEY, "illegal base64 data at input byte 0"),
    ],
)
def test_invalid_base64(text: str, problem: str) -> None:
    with pytest.raises(InvalidKeyError, match=rf"^WireGuard key is not base64 encoded: {problem}$"):
        Key.parse(text)
    assert Key.try_parse(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AAAA",
        KEY[:40] + "AA==",  # 31 bytes
        KEY[:40] + "AAAAAAAA",  # 36 bytes, valid base64
        "A" * 44,  # 33 bytes
    ],
)
def test_wrong_length(text: str) -> None:
    with pytest.raises(InvalidKeyError, match=r"^WireGuard key has invalid length$"):
        Key.parse(text)
    assert Key.try_parse(text) is None


def test_try_parse_none() -> None:
    assert Key.try_parse(None) is None
    assert Key.try_parse(KEY) == Key.parse(KEY)


def test_zero_key() -> None:
    zero = Key.parse("A" * 43 + "=")
    assert zero == ZERO_KEY
    assert zero.is_zero
    assert str(ZERO_KEY) == "A" * 43 + "="
    assert ZERO_KEY.raw == bytes(32)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_key_constructor_checks_the_length(length: int) -> None:
    with pytest.raises(InvalidKeyError):
        Key(bytes(length))


def test_repr_does_not_print_the_whole_key() -> None:
    assert KEY not in repr(Key.parse(KEY))
    assert KEY[:6] in repr(Key.parse(KEY))


# --- derivation and clamping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("private", "public"),
    [(ALICE_PRIVATE, ALICE_PUBLIC), (BOB_PRIVATE, BOB_PUBLIC)],
    ids=["alice", "bob"],
)
def test_public_key_matches_rfc7748(private: bytes, public: bytes) -> None:
    assert Key(private).public_key() == Key(public)
    # X25519 clamps internally, so a clamped private key gives the same public key.
    assert Key(clamp(private)).public_key() == Key(public)


def test_public_key_of_the_example_keys() -> None:
    private = Key.parse("aCeI7O4eTJTwlJ4IHe5grdXfvJRai3Ng4Ms9ZCAR1F8=")
    assert str(private.public_key()) == KEY


def test_clamp() -> None:
    clamped = clamp(b"\xff" * 32)
    assert clamped[0] == 0xF8
    assert clamped[31] == 0x7F
    assert clamped[1:31] == b"\xff" * 30
    zero = clamp(bytes(32))
    assert zero[0] == 0
    assert zero[31] == 0x40
    assert zero[1:31] == bytes(30)
    assert clamp(ALICE_PRIVATE) == clamp(clamp(ALICE_PRIVATE))  # idempotent
    assert clamp(bytes(range(32)))[1:31] == bytes(range(1, 31))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_clamp_checks_the_length(length: int) -> None:
    with pytest.raises(InvalidKeyError):
        clamp(bytes(length))


# --- decode_base64: Go's StdEncoding.DecodeString, results taken from Go ------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", b""),
        ("\n", b""),
        ("AAAA", bytes(3)),
        ("AAAA\r\n", bytes(3)),
        ("AA==", bytes(1)),
        ("AAA=", bytes(2)),
        ("AA==\n\n", bytes(1)),
        ("AA=\n=", bytes(1)),
        ("YQ==", b"a"),
        ("aGVsbG8=", b"hello"),
    ],
)
def test_decode_base64_valid(text: str, expected: bytes) -> None:
    assert decode_base64(text) == expected


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("A", 0),
        ("AA", 0),
        ("AAA", 0),
        ("AA=", 3),
        ("A===", 1),
        ("AA=A", 2),
        ("====", 0),
        ("AAAA====", 4),
        ("YQ==\nYQ==", 5),
        ("AA-_", 2),
        ("AAAA AAAA", 4),
        ("é", 0),
    ],
)
def test_decode_base64_invalid(text: str, offset: int) -> None:
    with pytest.raises(InvalidKeyError, match=rf"^illegal base64 data at input byte {offset}$"):
        decode_base64(text)
