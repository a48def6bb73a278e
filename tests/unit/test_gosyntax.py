"""Go's syntax for flag values (strconv, time.ParseDuration, %q), as pflag reads Kilo's flags:
the values and messages Go gives for them."""

from __future__ import annotations

import pytest

from kilo.mesh import gosyntax


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("51820", 51820),
        ("+51820", 51820),
        ("-7", -7),
        ("0xca6c", 51820),
        ("0XCA6C", 51820),
        ("0x_ca_6c", 51820),
        ("0o144", 100),
        ("0O144", 100),
        ("0b1010", 10),
        ("010", 8),
        ("0_10", 8),
        ("1_000", 1000),
        ("-0x10", -16),
        (str(2**63 - 1), 2**63 - 1),
        (str(-(2**63)), -(2**63)),
    ],
)
def test_parse_int_reads_gos_integer_literals(text: str, value: int) -> None:
    assert gosyntax.parse_int(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "+", "-", "0x", "09", "0b2", "1__0", "_1", "1_", "0x_", "1e3", " 1", "1.0", "٣"],
)
def test_parse_int_refuses_what_go_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"^strconv\.ParseInt: parsing .*: invalid syntax$"):
        gosyntax.parse_int(text)


def test_parse_int_range_is_the_bit_size() -> None:
    with pytest.raises(ValueError, match=r'parsing "9223372036854775808": value out of range'):
        gosyntax.parse_int(str(2**63))
    assert gosyntax.parse_int("127", 8) == 127
    with pytest.raises(ValueError, match="value out of range"):
        gosyntax.parse_int("128", 8)


def test_parse_uint_has_no_sign_and_its_own_range() -> None:
    assert gosyntax.parse_uint("0x58c") == 1420
    assert gosyntax.parse_uint(str(2**64 - 1)) == 2**64 - 1
    for text in ("+1", "-1", "", "0x", "1__4"):
        with pytest.raises(ValueError, match=r"^strconv\.ParseUint: parsing .*: invalid syntax$"):
            gosyntax.parse_uint(text)
    with pytest.raises(ValueError, match=r'^strconv\.ParseUint: parsing "0x1_0000": value out'):
        gosyntax.parse_uint("0x1_0000", 16)
    assert gosyntax.parse_uint32("4294967295") == 2**32 - 1
    with pytest.raises(ValueError, match="value out of range"):
        gosyntax.parse_uint32("4294967296")
    with pytest.raises(ValueError, match="invalid syntax"):
        gosyntax.parse_uint32("0x10")  # base 10 only, as Kilo's --mtu


def test_parse_bool_takes_gos_spellings_only() -> None:
    for text in ("1", "t", "T", "TRUE", "true", "True"):
        assert gosyntax.parse_bool(text) is True
    for text in ("0", "f", "F", "FALSE", "false", "False"):
        assert gosyntax.parse_bool(text) is False
    for text in ("yes", "tRUE", "", " true"):
        with pytest.raises(ValueError, match=r"^strconv\.ParseBool: parsing .*: invalid syntax$"):
            gosyntax.parse_bool(text)


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("-0", 0),
        ("30s", 30 * 10**9),
        ("1m30s", 90 * 10**9),
        ("1.5h", 5400 * 10**9),
        ("-1s", -(10**9)),
        ("+2ms", 2 * 10**6),
        (".5s", 5 * 10**8),
        ("5.s", 5 * 10**9),
        ("1us", 1000),
        ("1µs", 1000),
        ("1μs", 1000),
        ("3ns", 3),
        ("2562047h47m16.854775807s", 2**63 - 1),
    ],
)
def test_parse_duration_reads_gos_durations(text: str, nanoseconds: int) -> None:
    assert gosyntax.parse_duration(text) == nanoseconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("30", 'time: missing unit in duration "30"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        (".s", 'time: invalid duration ".s"'),
        ("s", 'time: invalid duration "s"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
        ("2562047h47m16.854775808s", 'time: invalid duration "2562047h47m16.854775808s"'),
        ("1é", 'time: unknown unit "\\xc3\\xa9" in duration "1\\xc3\\xa9"'),
    ],
)
def test_parse_duration_refuses_with_gos_message(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        gosyntax.parse_duration(text)
    assert str(caught.value) == message


def test_go_quote_is_strconv_quote() -> None:
    assert gosyntax.go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert gosyntax.go_quote("\n\t\x07\x00é") == '"\\n\\t\\a\\x00é"'
    assert gosyntax.go_quote("\u200b\U000e0001") == '"\\u200b\\U000e0001"'
    # An undecodable byte of the command line (surrogateescape) is Go's \x escape.
    assert gosyntax.go_quote(b"\xff".decode("utf-8", "surrogateescape")) == '"\\xff"'
