"""YAML from users (kubeconfigs, cluster dumps), read with bounded work and one-line errors.

Rules: every YAML document Kilo reads from a user goes through here; nothing in it may
crash, hang or exhaust memory, whatever the bytes. Each limit is an error that names the
file (and the line and column where there is one), never a traceback:

* size: at most ``max_bytes`` are read (also from standard input); one more is an error;
* text: UTF-8 without the control characters YAML forbids;
* depth: collections nested deeper than ``max_depth`` are refused *before* any node is
  composed (libyaml's composer recurses in C and crashes the process on deep input; the
  pure-Python one raises ``RecursionError``);
* aliases: the number of values the documents would hold if every alias were expanded is
  counted (each anchored node's expanded size is remembered, so counting is linear) and
  refused past ``ALIAS_FACTOR`` times the values written plus ``ALIAS_ALLOWANCE``, and an
  alias inside its own anchor (a recursive structure) is refused. Go's yaml.v2 (kubectl)
  also refuses "excessive aliasing" rather than every alias: kubectl never writes aliases,
  but a hand-written dump or kubeconfig may share a label map or two, and that still works;
* scalars: a YAML 1.1 base-60 integer (``1:2:3``) longer than ``MAX_BASE60`` characters is
  refused (PyYAML computes it in quadratic time: 200 kB take seconds); a value PyYAML
  cannot construct (a date such as ``2001-13-45``, an integer of more than 4300 digits)
  is a YAML error, not a ``ValueError``.

Both PyYAML loaders are supported and give the same values: libyaml's ``CSafeLoader``
when PyYAML has it (the wheels do), else the pure-Python ``SafeLoader``.

A reader may name what it never reads (:class:`Unread`: the cluster dump's Node status,
nine tenths of a kubelet's Node): a YAML text is then parsed with those blocks cut out
(:mod:`kilo.adapters.yamlcut`, checked by the builder) and a JSON one decoded without
them (:mod:`kilo.adapters.dumpjson`); either falls back on the whole text. What is never
parsed is never refused either.

About 700 lines: the event check, the one-pass builder (with the cut's check) and the JSON
path enforce the same limits with the same messages (one set of refusal helpers), and each
falls back on the others; they are one concept, reading user YAML safely.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import yaml

from kilo.adapters import yamlcut
from kilo.errors import BackendError
from kilo.mesh.text import one_line

MiB = 1024 * 1024
MAX_DEPTH = 100
ALIAS_FACTOR = 10
ALIAS_ALLOWANCE = 100_000
MAX_BASE60 = 64
# What PyYAML's reader refuses (yaml/reader.py NON_PRINTABLE); checked first so that both
# loaders give the same message, with a line and column.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
# LookupError: PyYAML's int and float constructors index an empty value (``!!int ''``).
_CONSTRUCTION_ERRORS = (ValueError, TypeError, AttributeError, OverflowError, LookupError)


@dataclass(frozen=True, slots=True, kw_only=True)
class InputKind:
    """A kind of YAML input: what messages call it and how much of it is accepted."""

    name: str  # "cluster dump", "kubeconfig"
    syntax: str  # what the input must be: "YAML", "YAML or JSON"
    max_bytes: int
    max_depth: int = MAX_DEPTH
    # JSON (what ``kubectl -o json`` writes) is read by the json module: a 5000-node dump
    # as a cluster holds it is 85 MB of JSON, ten seconds for any YAML parser here.
    json: bool = False


# A dump of 5000 nodes as kubectl writes it is 20 to 30 MB.
CLUSTER_DUMP = InputKind(name="cluster dump", syntax="YAML or JSON", max_bytes=256 * MiB, json=True)
KUBECONFIG = InputKind(name="kubeconfig", syntax="YAML", max_bytes=16 * MiB)


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    value = loader.construct_scalar(node)
    if isinstance(value, str) and ":" in value and len(value) > MAX_BASE60:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"a base-60 integer longer than {MAX_BASE60} characters; quote it if it is a string",
            node.start_mark,
        )
    return loader.construct_yaml_int(node)


class _PureLoader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader, with bounded base-60 integers."""


_PureLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)

_C_BASE: type[Any] | None = getattr(yaml, "CSafeLoader", None)
LOADERS: tuple[type[Any], ...] = (_PureLoader,)
if _C_BASE is not None:
    _CLoader: type[Any] = type("_CLoader", (_C_BASE,), {"__doc__": "libyaml's safe loader."})
    _CLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
    LOADERS = (_CLoader, _PureLoader)
# The loader used unless a test asks for another: libyaml's when there is one.
LOADER: type[Any] = LOADERS[0]


def read(path: str, kind: InputKind, *, stdin: BinaryIO | None = None) -> bytes:
    """At most ``kind.max_bytes`` of ``path`` (``-`` for standard input), else an error."""
    try:
        if path == "-":
            source = stdin if stdin is not None else sys.stdin.buffer
            data = source.read(kind.max_bytes + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(kind.max_bytes + 1)
    except OSError as exc:
        raise BackendError(f"cannot read {kind.name} {path}: {exc.strerror or exc}") from exc
    if len(data) > kind.max_bytes:
        raise BackendError(
            f"{kind.name} {path} is larger than {_size(kind.max_bytes)}; refusing it"
        )
    return data


@dataclass(frozen=True, slots=True)
class Unread:
    """A key whose block values the reader never looks at, in the mappings ``check``
    accepts: they are cut from the text before it is parsed (:mod:`kilo.adapters.yamlcut`).

    ``check`` gets the documents and each mapping the key was cut from (the key removed)
    and says whether the key is unread in every one of them; when it is not, or the cut
    text does not parse, the whole text is parsed.
    """

    key: str
    check: Callable[[list[Any], list[dict[Any, Any]]], bool]
    # A JSON text's documents less what the reader never reads (None: read it whole);
    # what it gives is checked as plain JSON as the json module's documents are.
    json: Callable[[str], list[Any] | None] | None = None


def load_all(
    data: bytes | str,
    kind: InputKind,
    *,
    source: str,
    loader: type[Any] | None = None,
    unread: Unread | None = None,
) -> list[Any]:
    """Every document of ``data``; :class:`BackendError` says in one line what is wrong."""
    text = _text(data, kind, source)
    chosen = LOADER if loader is None else loader
    with cycle_collector_paused():
        return _load_all(text, kind, source, chosen, unread)


def _load_all(
    text: str, kind: InputKind, source: str, chosen: type[Any], unread: Unread | None = None
) -> list[Any]:
    body = text.removeprefix("\ufeff")  # a byte-order mark: YAML skips it, json refuses it
    if kind.json and body.lstrip()[:1] in ("{", "["):
        if unread is not None and unread.json is not None:
            documents = unread.json(body)
            if documents is not None and all(
                _plain(document, kind.max_depth) for document in documents
            ):
                return documents
        document = _json(body, kind.max_depth)
        if document is not _NOT_JSON:
            return [document]
    if unread is not None:
        documents = _load_cut(text, kind, source, chosen, unread)
        if documents is not None:
            return documents
    try:
        return _build(text, kind, source, chosen)
    except _Unsupported:
        # PyYAML's own composer and constructor say what they make of it.
        return _load_all_pyyaml(text, kind, source, chosen)


def _load_cut(
    text: str, kind: InputKind, source: str, chosen: type[Any], unread: Unread
) -> list[Any] | None:
    """The documents of ``text`` with ``unread``'s blocks cut (see :class:`Unread`), or
    None: nothing to cut, or the whole text must be parsed."""
    cut = yamlcut.cut(text, unread.key)
    if cut is None:
        return None
    holders: list[dict[Any, Any]] = []
    try:
        documents = _build(cut.text, kind, source, chosen, cut=(unread.key, cut.keys, holders))
    except (BackendError, _Unsupported):
        return None  # the whole text says what is wrong, where
    if len(holders) != len(cut.keys):
        return None  # a cut line the parser did not read as a key of a block mapping
    for mapping in holders:
        # The cut left the key without a value; anything else (the key written twice,
        # once with a value) and the cut text is not the whole text less the blocks.
        if mapping.get(unread.key, _NOT_NULL) is not None:
            return None
        del mapping[unread.key]
    return documents if unread.check(documents, holders) else None


_NOT_NULL = object()


def _load_all_pyyaml(text: str, kind: InputKind, source: str, chosen: type[Any]) -> list[Any]:
    """The checks, then PyYAML's composer and constructor: what :func:`_build` gives up to."""
    _check_events(text, kind, source, chosen)
    documents: list[Any] = []
    instance = chosen(text)
    try:
        while instance.check_data():
            documents.append(instance.get_data())
    except yaml.YAMLError as exc:
        raise BackendError(_describe(exc, kind, source, text)) from exc
    except _CONSTRUCTION_ERRORS as exc:
        raise BackendError(
            f"{kind.name} {source} is not valid {kind.syntax}: {one_line(str(exc))}"
        ) from exc
    finally:
        instance.dispose()
    return documents


def load_single(
    data: bytes | str, kind: InputKind, *, source: str, loader: type[Any] | None = None
) -> Any:
    """The one document of ``data`` (``None`` when empty), as ``yaml.safe_load`` reads it."""
    documents = load_all(data, kind, source=source, loader=loader)
    if len(documents) > 1:
        raise BackendError(
            f"{kind.name} {source} holds {len(documents)} YAML documents; expected one"
        )
    return documents[0] if documents else None


@contextlib.contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (while a document is loaded, while a
    ``kgctl`` view is computed).

    Loading allocates one node and one value per scalar and keeps them all: a 5000-node
    dump holds hundreds of thousands, and the collector, run every few hundred
    allocations, walked them again and again (three quarters of kgctl's time on such a
    dump). What is loaded is a tree (recursive aliases are refused before loading), so
    reference counting frees all of it; the collector is switched back on afterwards (if
    it was on) and then finds whatever cycles the loader itself left.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_all(path: str, kind: InputKind, *, stdin: BinaryIO | None = None) -> list[Any]:
    return load_all(read(path, kind, stdin=stdin), kind, source=path)


def read_single(path: str, kind: InputKind) -> Any:
    return load_single(read(path, kind), kind, source=path)


# --- checks ---------------------------------------------------------------------------------


def _text(data: bytes | str, kind: InputKind, source: str) -> str:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BackendError(
                f"{kind.name} {source} is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from exc
    else:
        text = data
    bad = None if _printable_ascii(text, data) else _NON_PRINTABLE.search(text)
    if bad is not None:
        line, column = _line_column(text, bad.start())
        raise BackendError(
            f"{kind.name} {source} is not valid {kind.syntax} at line {line}, column {column}: "
            f"it holds the control character #x{ord(bad.group()):04x} (is it a binary file?)"
        )
    return text


# The ASCII characters YAML allows (_NON_PRINTABLE's, below 0x80).
_PRINTABLE_ASCII = b"\t\n\r" + bytes(range(0x20, 0x7F))


def _printable_ascii(text: str, data: bytes | str) -> bool:
    """Whether ``text`` (``data`` decoded) is ASCII without a character YAML forbids: a
    47 MB dump in 0.07 s, where the pattern for any text takes 0.7 s (a deleting translate
    runs at memory speed)."""
    if not text.isascii():
        return False
    raw = data if isinstance(data, bytes) else text.encode("ascii")
    return not raw.translate(None, _PRINTABLE_ASCII)


def _check_events(text: str, kind: InputKind, source: str, loader: type[Any]) -> None:
    """Refuse deep nesting, recursive aliases and alias bombs from the event stream alone.

    The parser keeps its own stack (no recursion), so this is safe on any input, and it
    counts, per document, every value as often as aliases would repeat it.
    """
    written = 0  # values as written (scalars, aliases, collections)
    expanded = 0  # values if every alias were replaced by a copy of its anchor's node
    ceiling = _ceiling(text)
    sizes: dict[str, int] = {}
    open_collections: list[list[Any]] = []  # [anchor, expanded size so far]
    instance = loader(text)
    try:
        for event in _events(instance):
            size = 0
            if isinstance(event, yaml.ScalarEvent):
                written += 1
                size = 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                written += 1
                if any(anchor == event.anchor for anchor, _ in open_collections):
                    raise _recursive(kind, source, event)
                size = sizes.get(str(event.anchor), 1)  # undefined: the loader says so
            elif isinstance(event, yaml.CollectionStartEvent):
                written += 1
                if len(open_collections) >= kind.max_depth:
                    raise _too_deep(kind, source, event)
                open_collections.append([event.anchor, 1])
                continue
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, size = open_collections.pop()
                if anchor is not None:
                    sizes[anchor] = size
            elif isinstance(event, yaml.DocumentEndEvent):
                sizes.clear()  # anchors are per document
                continue
            else:
                continue
            if open_collections:
                open_collections[-1][1] = min(open_collections[-1][1] + size, ceiling)
            else:
                expanded = min(expanded + size, ceiling)
    except yaml.YAMLError as exc:
        raise BackendError(_describe(exc, kind, source, text)) from exc
    finally:
        instance.dispose()
    _check_expansion(kind, source, written, expanded)


# --- JSON ---------------------------------------------------------------------------------

_NOT_JSON = object()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")  # NaN and Infinity: JSON has no such numbers


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text}")  # 1e400: Go refuses it too
    return value


# A surrogate written as a JSON escape; a lone one makes a string no UTF-8 can hold.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _json(text: str, max_depth: int) -> Any:
    """The value of JSON ``text`` nested at most ``max_depth`` deep, else ``_NOT_JSON``.

    Anything that is not plain JSON (a syntax error, NaN, an integer of more than 4300
    digits, two documents, nesting too deep for the json module or for ``max_depth``)
    is ``_NOT_JSON``, and the caller reads the text as YAML: it says what is wrong, where,
    as it always did. Plain JSON is read as JSON, as Go reads it: a number with an
    exponent is a number (YAML 1.1 reads ``1e3`` as a string; one out of range, as
    ``1e400``, is not plain JSON) and a surrogate-pair escape is one character (PyYAML
    refuses it; a lone surrogate is not plain JSON).
    """
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(document, ensure_ascii=False).encode()  # a lone one raises
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return _NOT_JSON
    return document if _plain(document, max_depth) else _NOT_JSON


def _plain(document: Any, max_depth: int) -> bool:
    """Whether a decoded JSON ``document`` is nested at most ``max_depth`` deep (iterative:
    no recursion). Integers need no check: msgspec, like the json module, refuses more
    than 4300 digits."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if type(value) is dict else value
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth >= max_depth:
                    return False
                stack.append((child, depth + 1))
    return True


# --- one pass -----------------------------------------------------------------------------

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"


class _Unsupported(Exception):
    """Input the one-pass builder leaves to PyYAML's composer and constructor."""


class _Frame:
    """An open collection: its value so far, anchor, expanded size and pending key."""

    __slots__ = ("anchor", "block", "has_key", "key", "mapping", "size", "value")

    def __init__(
        self, value: dict[Any, Any] | list[Any], anchor: str | None, block: bool = False
    ) -> None:
        self.value = value
        self.anchor = anchor
        self.mapping = isinstance(value, dict)
        self.block = block  # a block collection (not a flow one)
        self.size = 1
        self.key: Any = None
        self.has_key = False


# What a cut text's build checks: the cut key, where the cuts left it (line, column) and
# the list of the mappings it was found in, filled by the build.
_CutKeys = tuple[str, frozenset[tuple[int, int]], list[dict[Any, Any]]]


def _build(
    text: str, kind: InputKind, source: str, loader: type[Any], cut: _CutKeys | None = None
) -> list[Any]:
    """The documents, checked (as :func:`_check_events`) and built from one parse.

    The checks need a parse of their own before PyYAML composes (libyaml's composer
    recurses in C), and composing makes a node per value before constructing it: three
    walks over the input, most of a kgctl command's time on a 5000-node dump. Here the
    events are checked and turned into values as they come, with PyYAML's resolver and
    constructors, so the values are those of ``yaml.load_all`` (aliases share one value,
    as there). What this does not build itself (merge keys, collection tags other than
    map and seq, collections or aliases as keys, an undefined alias) and any value a
    constructor refuses raises :class:`_Unsupported`: the caller then checks and loads
    the input PyYAML's way, so messages and their precedence stay exactly as before.
    """
    written = 0
    expanded = 0
    ceiling = _ceiling(text)
    sizes: dict[str, int] = {}
    anchored: dict[str, Any] = {}
    defined: set[str] = set()  # anchors seen in this document, complete or not
    stack: list[_Frame] = []
    documents: list[Any] = []
    root: Any = None
    instance = loader(text)
    resolve = instance.resolve
    # PyYAML's resolver looks a plain scalar up by its first character; most (names, keys,
    # addresses in quotes aside) start with one no implicit tag claims, and are strings.
    resolvers = instance.yaml_implicit_resolvers
    firsts = frozenset(() if None in resolvers or instance.yaml_path_resolvers else resolvers)
    # ... and most of the others (addresses, CIDRs, names starting with "n") match none of
    # the resolvers of their first character: one pattern tells, before resolve() tries
    # each (they are 5000 a 5000-node dump's Node names and addresses).
    claimed = {first: _any_of(resolvers[first]) for first in firsts}
    scalar_event, alias_event = yaml.ScalarEvent, yaml.AliasEvent
    mapping_start, sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
    mapping_end, sequence_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
    cut_key, cut_at, holders = (None, frozenset(), []) if cut is None else cut

    def construct(tag: str, event: Any) -> Any:
        """The value of a scalar ``event`` resolved to ``tag``, as PyYAML constructs it."""
        if tag == _STR:
            return event.value
        if tag in (_MERGE, _VALUE):
            raise _Unsupported
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            value = instance.construct_object(node, deep=True)
        except (yaml.YAMLError, *_CONSTRUCTION_ERRORS) as exc:
            raise _Unsupported from exc
        # The constructor remembers each node it built: not this throwaway one.
        instance.constructed_objects.pop(node, None)
        return value

    try:
        for event in iter(instance.get_event, None):
            cls = event.__class__
            size = 1
            if cls is scalar_event:
                written += 1
                value: Any = event.value
                tag = event.tag
                if tag is None and firsts:
                    # Untagged, the common case: quoted, a string; plain, a string unless
                    # a resolver of its first character claims it.
                    if event.implicit[0]:
                        first = value[:1]
                        if first in firsts and claimed[first].match(value) is not None:
                            value = construct(
                                resolve(yaml.ScalarNode, value, event.implicit), event
                            )
                        elif value == cut_key and stack:
                            frame = stack[-1]
                            # The key a cut left, where it was, in a block mapping that
                            # no alias can share: with an anchor on it or on a collection
                            # holding it, the value would lose the key wherever an alias
                            # puts it too (a Node in another's annotation), so it is not
                            # counted and the whole text is parsed.
                            if (
                                isinstance(frame.value, dict)
                                and frame.block
                                and not frame.has_key
                                and (event.start_mark.line, event.start_mark.column) in cut_at
                                and all(open_frame.anchor is None for open_frame in stack)
                            ):
                                holders.append(frame.value)
                else:
                    if tag is None or tag == "!":
                        implicit = event.implicit
                        if implicit[0] and (not firsts or value[:1] in firsts):
                            tag = resolve(yaml.ScalarNode, value, implicit)
                        else:
                            tag = _STR
                    value = construct(tag, event)
                if event.anchor is not None:
                    if event.anchor in defined:
                        raise _Unsupported  # a duplicate anchor: PyYAML's composer says so
                    defined.add(event.anchor)
                    sizes[event.anchor] = 1
                    anchored[event.anchor] = value
            elif cls is alias_event:
                written += 1
                if any(frame.anchor == event.anchor for frame in stack):
                    raise _recursive(kind, source, event)
                if event.anchor not in anchored or (
                    stack and stack[-1].mapping and not stack[-1].has_key
                ):
                    raise _Unsupported
                value = anchored[event.anchor]
                size = sizes[event.anchor]
            elif cls is mapping_start or cls is sequence_start:
                written += 1
                if len(stack) >= kind.max_depth:
                    raise _too_deep(kind, source, event)
                mapping = cls is mapping_start
                if (event.tag not in (None, "!", _MAP if mapping else _SEQ)) or (
                    stack and stack[-1].mapping and not stack[-1].has_key
                ):
                    raise _Unsupported
                if event.anchor is not None:
                    if event.anchor in defined:
                        raise _Unsupported
                    defined.add(event.anchor)
                stack.append(_Frame({} if mapping else [], event.anchor, not event.flow_style))
                continue
            elif cls is mapping_end or cls is sequence_end:
                frame = stack.pop()
                value, size = frame.value, frame.size
                if frame.anchor is not None:
                    sizes[frame.anchor] = size
                    anchored[frame.anchor] = value
            elif cls is yaml.DocumentEndEvent:
                documents.append(root)
                root = None
                sizes.clear()  # anchors are per document
                anchored.clear()
                defined.clear()
                continue
            else:
                continue
            if stack:
                parent = stack[-1]
                # min() inlined: this runs once for each of a dump's 200 000 events.
                total = parent.size + size
                parent.size = total if total < ceiling else ceiling
                container = parent.value
                if isinstance(container, list):
                    container.append(value)
                elif parent.has_key:
                    container[parent.key] = value
                    parent.has_key = False
                else:
                    parent.key = value
                    parent.has_key = True
            else:
                root = value
                expanded = min(expanded + size, ceiling)
    except yaml.YAMLError as exc:
        raise BackendError(_describe(exc, kind, source, text)) from exc
    finally:
        instance.dispose()
    _check_expansion(kind, source, written, expanded)
    return documents


def _any_of(resolvers: list[tuple[str, re.Pattern[str]]]) -> re.Pattern[str]:
    """A pattern that matches where one of ``resolvers``' patterns matches (each with its
    own flags: PyYAML's are verbose)."""
    parts = []
    for _, pattern in resolvers:
        flags = "x" if pattern.flags & re.VERBOSE else ""
        parts.append(f"(?{flags}:{pattern.pattern})" if flags else f"(?:{pattern.pattern})")
    return re.compile("|".join(parts))


def _ceiling(text: str) -> int:
    """Where expanded sizes saturate, so that a bomb's exponential sizes stay small
    integers: no input of this length could be allowed that many values."""
    return ALIAS_FACTOR * 2 * (len(text) + 1) + ALIAS_ALLOWANCE + 1


def _check_expansion(kind: InputKind, source: str, written: int, expanded: int) -> None:
    limit = ALIAS_FACTOR * written + ALIAS_ALLOWANCE
    if expanded > limit:
        raise BackendError(
            f"{kind.name} {source}: YAML aliases expand to more than {limit} values; "
            f"refusing it (a {kind.name} needs no aliases)"
        )


def _recursive(kind: InputKind, source: str, event: yaml.AliasEvent) -> BackendError:
    return BackendError(
        f"{kind.name} {source}: the YAML alias *{one_line(str(event.anchor))}"
        f"{_at(event.start_mark)} is inside its own anchor (a recursive structure); refusing it"
    )


def _too_deep(kind: InputKind, source: str, event: yaml.Event) -> BackendError:
    return BackendError(
        f"{kind.name} {source} is nested more than {kind.max_depth} levels "
        f"deep{_at(event.start_mark)}; refusing it"
    )


def _events(loader: Any) -> Iterator[yaml.Event]:
    while loader.check_event():
        yield loader.get_event()


def _describe(exc: yaml.YAMLError, kind: InputKind, source: str, text: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = _at(mark)
    if mark is None and isinstance(exc, yaml.reader.ReaderError):
        line, column = _line_column(text, exc.position)
        where = f" at line {line}, column {column}"
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    context = getattr(exc, "context", None)
    if isinstance(context, str) and context.startswith("found duplicate anchor"):
        # PyYAML's problem is only "second occurrence"; the anchor is in its context.
        first = _at(getattr(exc, "context_mark", None)).replace(" at ", "", 1)
        problem = f"{context.split(';')[0]} (first defined at {first})"
    return f"{kind.name} {source} is not valid {kind.syntax}{where}: {one_line(str(problem))}"


def _at(mark: Any) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


def _line_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n} bytes"
