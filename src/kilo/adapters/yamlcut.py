"""Cutting out of block YAML, before it is parsed, the values of a key nobody reads.

A kubelet-registered Node's ``status`` (addresses, conditions, the images the node holds)
is nine tenths of a cluster dump as ``kubectl get nodes -o yaml`` writes it: 47 of the 50 MB
of a 5000-node dump, and parsing it took libyaml's events alone 2.6 s. Kilo reads a Node's
metadata and spec only (``kilo.adapters.kubernetes`` drops the status of every Node it lists
or watches), so :func:`cut` removes the lines of each ``status:`` block from the text and
:mod:`kilo.adapters.yamlinput` parses what is left.

A cut is exact when the ``status:`` line is a key of a block mapping at its column ``c``:
its value is then the lines after it that are more indented than ``c`` (or blank, or,
when the value is a sequence at column ``c``, its entries ``- ``), up to the first line
indented ``c`` or less, because in block context every token of a value is more indented
than its key, except a quoted scalar or a flow collection continued on a next line: a
block is cut only if each of its quoted scalars and flow collections (``'...'``,
``"..."``, ``[]``, ``{}``) closes at the end of its line, as kubectl and PyYAML write them.
The cut leaves ``status:`` with an empty value (null), and whether its line was such a
key at all (and not, say, a line inside a block scalar) only the parser knows: :func:`cut`
returns where each cut key is in the cut text, and the caller checks the parser found a
key there, in a block mapping, or parses the whole text. It parses the whole text too
when that mapping, or a collection holding it, has an anchor (an alias would put it
elsewhere, where its status is not unread); a block holding an anchor (``&`` outside
quotes) is not cut, so that an anchor defined twice, or defined in the status and used
outside it, is refused or read as before.

What is never parsed is never checked: a Node's status that is not valid YAML (or nests
too deep, or holds an alias bomb) is not refused; nothing of it is built either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A line of a cut block after its indentation: quoted scalars and flow collections only
# whole, at the end of the line (a quote or bracket elsewhere ends the block: no cut),
# and no "&" outside quotes: an anchor in a cut block is left to the whole text (PyYAML
# refuses one defined twice, there and outside).
_BODY = r"""[^'"\[{\n&]*+(?:\n|'[^'\n]*+'[ ]*+\n|"[^"\\\n]*+"[ ]*+\n|(?:\[\]|\{\})[ ]*+\n)"""
_SPACES = re.compile(r"[ ]*")
_BLANK = re.compile(r"[ \n]*")
# The keys of an object are at column 0 (a document), 2 (an item of a List, as kubectl
# writes one) or 4 (a List indented otherwise); deeper ones are not cut. It also bounds the
# patterns compiled (two a column) whatever the text.
MAX_COLUMN = 8
# Line breaks other than "\n": YAML counts them as lines, and the checked positions are
# counted in "\n". A text holding one is parsed whole.
_OTHER_BREAKS = ("\r", "\x85", "\u2028", "\u2029")


@dataclass(frozen=True, slots=True)
class Cut:
    """``text`` without the cut blocks, and where each cut key is in it: (line, column),
    counted from 0 as YAML marks are."""

    text: str
    keys: frozenset[tuple[int, int]]


_blocks: dict[tuple[int, bool], re.Pattern[str]] = {}


def _block(column: int, *, sequence: bool) -> re.Pattern[str]:
    """The lines of a block value under a key at ``column``: lines indented more (or
    blank), and with ``sequence`` entries ``- `` at ``column`` too."""
    pattern = _blocks.get((column, sequence))
    if pattern is None:
        entry = rf"|[ ]{{{column}}}-(?:[ ]{_BODY}|\n)" if sequence else ""
        pattern = re.compile(rf"(?:[ ]{{{column + 1}}}{_BODY}{entry}|[ ]*+\n)*+")
        _blocks[(column, sequence)] = pattern
    return pattern


def cut(text: str, key: str) -> Cut | None:
    """``text`` without the block value of every line ``<spaces>KEY:``; None when nothing
    was cut (or the text has line breaks other than ``\\n``)."""
    if "\r" in text or (not text.isascii() and any(b in text for b in _OTHER_BREAKS)):
        return None
    needle = f"{key}:\n"
    pieces: list[str] = []
    keys: set[tuple[int, int]] = set()
    kept = 0  # end of the text already kept or cut
    kept_lines = 0  # line breaks in the pieces kept so far
    position = 0
    while (found := text.find(needle, position)) >= 0:
        position = body = found + len(needle)
        line_start = text.rfind("\n", 0, found) + 1
        column = found - line_start
        if column > MAX_COLUMN or text.count(" ", line_start, found) != column:
            continue  # not an object's key alone after its indentation
        end = _block_end(text, body, column)
        if end is None:
            continue
        keys.add((kept_lines + text.count("\n", kept, line_start), column))
        kept_lines += text.count("\n", kept, body)
        pieces.append(text[kept:body])
        kept = position = end
    if not pieces:
        return None
    pieces.append(text[kept:])
    return Cut("".join(pieces), frozenset(keys))


def _block_end(text: str, body: int, column: int) -> int | None:
    """Where the block value starting at ``body`` ends: the start of the first line that
    closes it (or the end of the text); None when it cannot be cut exactly or is empty."""
    lines = _block(column, sequence=False).match(text, body)
    assert lines is not None  # the pattern matches the empty string
    blank = _BLANK.match(text, body)
    assert blank is not None
    if blank.end() >= lines.end():
        # Entries "- " at the key's column are its value only when they are all of it (a
        # sequence at the key's indentation); after a value indented more, one is an error
        # of the whole text, not part of the value (the check below then does not cut).
        lines = _block(column, sequence=True).match(text, body)
        assert lines is not None
    end = lines.end()
    if end == body:
        return None
    if end == len(text):
        return end
    spaces = _SPACES.match(text, end)
    assert spaces is not None
    indent = spaces.end() - end
    first = text[end + indent : end + indent + 1]
    if indent > column or first in ("", "\t", "#"):
        # A line of the block holding an open quote or bracket, a last line without "\n"
        # (spaces only, too), a tab, or a comment at the key's indentation (the value may
        # go on after it).
        return None
    if indent == column and first == "-" and text[end + indent + 1 : end + indent + 2] in " \n":
        # An entry of a sequence at the key's column: part of the value, or an error after
        # a value indented more.
        return None
    return end
