"""YAML from users is read with bounded work, and every refusal is one line naming the file."""

from __future__ import annotations

import dataclasses
import io
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kilo.adapters import file as file_backend
from kilo.adapters import yamlinput
from kilo.errors import BackendError
from tests.bad_kubeconfigs import BOMB
from tests.examples import EXAMPLE_DUMP
from tests.hostile import FUZZ

DUMP = yamlinput.CLUSTER_DUMP


def refusal(data: bytes | str, *, loader: type | None = None, source: str = "dump.yaml") -> str:
    with pytest.raises(BackendError) as caught:
        yamlinput.load_all(data, DUMP, source=source, loader=loader)
    message = str(caught.value)
    assert "\n" not in message
    assert source in message
    return message


@pytest.fixture(params=yamlinput.LOADERS, ids=lambda loader: loader.__name__)
def loader(request: pytest.FixtureRequest) -> type:
    return request.param  # type: ignore[no-any-return]


def test_the_c_loader_is_used_when_pyyaml_has_it() -> None:
    assert hasattr(yaml, "CSafeLoader")  # the PyYAML wheels are built with libyaml
    assert issubclass(yamlinput.LOADER, yaml.CSafeLoader)
    assert [issubclass(loader, yaml.CSafeLoader) for loader in yamlinput.LOADERS] == [True, False]


def test_both_loaders_read_the_example_dump_as_yaml_safe_load_does() -> None:
    text = EXAMPLE_DUMP.read_text()
    expected = list(yaml.safe_load_all(text))
    for loader in yamlinput.LOADERS:
        assert yamlinput.load_all(text.encode(), DUMP, source="x", loader=loader) == expected


def test_both_loaders_agree_on_scalars_anchors_and_merge_keys(loader: type) -> None:
    text = (
        "base: &base {labels: {a: '1'}, n: 0x1F, f: 1.5e3, t: yes, z: ~, d: 2024-01-02}\n"
        "node: {<<: *base, name: n1, seq: [*base, 1:20]}\n"
        "---\n"
        "second: [1, '2', !!str 3]\n"
    )
    assert yamlinput.load_all(text, DUMP, source="x", loader=loader) == list(
        yaml.safe_load_all(text)
    )


def test_a_dump_with_an_anchor_or_two_still_works(loader: type) -> None:
    # An anchor nobody uses is harmless; a label map shared by two nodes is what a person
    # writing a dump by hand might do.
    text = EXAMPLE_DUMP.read_text().replace("  metadata:\n", "  metadata: &shared\n", 1)
    assert text != EXAMPLE_DUMP.read_text()
    labels = "labels: &labels {topology.kubernetes.io/region: gcp}\n"
    small = (
        labels + "items:\n"
        "- {kind: Node, apiVersion: v1, metadata: {name: a, labels: *labels}}\n"
        "- {kind: Node, apiVersion: v1, metadata: {name: b, labels: *labels}}\n"
    )
    (documents,) = yamlinput.load_all(small, DUMP, source="x", loader=loader)
    assert [n["metadata"]["labels"] for n in documents["items"]] == [
        {"topology.kubernetes.io/region": "gcp"}
    ] * 2
    assert yamlinput.load_all(text, DUMP, source="x", loader=loader)


def test_the_alias_bomb_is_refused_before_it_is_built(loader: type) -> None:
    assert len(BOMB) < 400
    message = refusal(BOMB, loader=loader, source="bomb.yaml")
    # The limit is ten times the values written (1 mapping, 9 keys, 9 sequences of 9) plus
    # the allowance: the bomb's 387 million values were counted, never built.
    limit = yamlinput.ALIAS_FACTOR * 100 + yamlinput.ALIAS_ALLOWANCE
    assert message == (
        f"cluster dump bomb.yaml: YAML aliases expand to more than {limit} values; refusing it "
        "(a cluster dump needs no aliases)"
    )


def test_the_alias_bomb_through_read_dump_is_one_error_not_millions_of_warnings(
    tmp_path: Path,
) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    with pytest.raises(BackendError, match=f"^cluster dump {bomb}: YAML aliases expand"):
        file_backend.read_dump(str(bomb))


def test_aliases_just_under_the_limit_are_accepted(loader: type) -> None:
    # 1 anchor of 1000 scalars, aliased 110 times: 111 000 values from ~1100 written.
    anchor = "a: &a [" + ",".join(["x"] * 1000) + "]\n"
    ok = anchor + "b: [" + ",".join(["*a"] * 110) + "]\n"
    (data,) = yamlinput.load_all(ok, DUMP, source="x", loader=loader)
    assert len(data["b"]) == 110
    too_many = anchor + "b: [" + ",".join(["*a"] * 200) + "]\n"
    assert "YAML aliases expand to more than" in refusal(too_many, loader=loader)


def test_anchors_are_counted_per_document(loader: type) -> None:
    # An alias in the second document cannot use the first one's anchor: the loader says so.
    message = refusal("a: &a [1]\n---\nb: *a\n", loader=loader)
    assert message.startswith("cluster dump dump.yaml is not valid YAML or JSON at line 3")
    assert "undefined alias" in message


def test_a_recursive_alias_is_refused(loader: type) -> None:
    message = refusal("a: &a [1, *a]\n", loader=loader)
    assert message == (
        "cluster dump dump.yaml: the YAML alias *a at line 1, column 11 is inside its own "
        "anchor (a recursive structure); refusing it"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[" * 100_000 + "]" * 100_000, "line 1, column 101"),  # crashes libyaml's composer
        ("a:\n" + "".join(" " * i + "- \n" for i in range(1, 200)), "line 101, column 101"),
        ("- " * 150 + "x\n", "line 1, column 201"),
        ("{a: " * 101 + "1" + "}" * 101, "line 1, column 401"),
    ],
    ids=["flow", "block", "compact", "mappings"],
)
def test_deep_nesting_is_refused_without_recursion(loader: type, text: str, where: str) -> None:
    assert refusal(text, loader=loader) == (
        f"cluster dump dump.yaml is nested more than 100 levels deep at {where}; refusing it"
    )


def test_nesting_up_to_the_limit_is_accepted(loader: type) -> None:
    text = "[" * 100 + "]" * 100
    assert yamlinput.load_all(text, DUMP, source="x", loader=loader) == list(
        yaml.safe_load_all(text)
    )


def test_input_over_the_size_cap_is_refused_after_reading_one_byte_more(tmp_path: Path) -> None:
    small = dataclasses.replace(DUMP, max_bytes=1000)
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * 997 + b"\n")  # exactly 1000 bytes
    assert yamlinput.read(str(path), small) == path.read_bytes()
    path.write_bytes(b"# " + b"x" * 998 + b"\n")
    with pytest.raises(BackendError) as caught:
        yamlinput.read(str(path), small)
    assert str(caught.value) == f"cluster dump {path} is larger than 1000 bytes; refusing it"


def test_standard_input_is_capped_too() -> None:
    small = dataclasses.replace(DUMP, max_bytes=10)

    class Endless(io.RawIOBase):
        """An input that never ends: only a bounded read can finish."""

        def __init__(self) -> None:
            self.read_sizes: list[int] = []

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            assert size >= 0, "an unbounded read of an endless input"
            self.read_sizes.append(size)
            return b"x" * size

    stdin = Endless()
    with pytest.raises(BackendError, match=r"^cluster dump - is larger than 10 bytes; refusing"):
        yamlinput.read("-", small, stdin=stdin)  # type: ignore[arg-type]
    assert stdin.read_sizes == [11]


def test_the_caps_fit_real_inputs() -> None:
    # A dump of 5000 nodes is 20 to 30 MB; a kubeconfig with inline certificates a few kB.
    assert yamlinput.CLUSTER_DUMP.max_bytes == 256 * 1024 * 1024
    assert yamlinput.KUBECONFIG.max_bytes == 16 * 1024 * 1024


def test_binary_input_is_refused_naming_the_byte(loader: type) -> None:
    assert refusal(b"apiVersion: v1\n\xff\xfe\x00", loader=loader) == (
        "cluster dump dump.yaml is not UTF-8 text (invalid start byte at byte 15)"
    )


def test_control_characters_are_refused_with_a_line_and_column(loader: type) -> None:
    assert refusal(b"kind: List\nitems: [\x00\x01]\n", loader=loader) == (
        "cluster dump dump.yaml is not valid YAML or JSON at line 2, column 9: it holds the "
        "control character #x0000 (is it a binary file?)"
    )


@pytest.mark.parametrize("other", ["", "name: caf\u00e9\n"], ids=["ascii", "utf-8"])
@pytest.mark.parametrize("char", ["\x7f", "\x0c", "\x1b", "\x08"])
def test_every_forbidden_control_character_is_found_in_ascii_and_other_text(
    loader: type, other: str, char: str
) -> None:
    # ASCII text is checked by a translate, other text by the pattern: the same refusal.
    text = f"{other}kind: List\nitems: [a{char}]\n"
    line = 2 + bool(other)
    for data in (text, text.encode()):
        assert refusal(data, loader=loader) == (
            f"cluster dump dump.yaml is not valid YAML or JSON at line {line}, column 10: it "
            f"holds the control character #x{ord(char):04x} (is it a binary file?)"
        )


def test_syntax_errors_are_one_line_with_a_line_and_column(loader: type) -> None:
    message = refusal("kind: List\nitems: [1, 2\n", loader=loader)
    assert message.startswith("cluster dump dump.yaml is not valid YAML or JSON at line 3")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: 2001-13-45\n", "month must be in 1..12"),
        ("a: " + "1" * 5000 + "\n", "Exceeds the limit (4300 digits)"),
        ("a: !!int x\n", "invalid literal for int()"),
        ("a: !!timestamp x\n", "'NoneType' object has no attribute 'groupdict'"),
    ],
)
def test_values_pyyaml_cannot_construct_are_yaml_errors(
    loader: type, text: str, problem: str
) -> None:
    message = refusal(text, loader=loader)
    assert message.startswith("cluster dump dump.yaml is not valid YAML or JSON: ")
    assert problem in message


def test_long_base60_integers_are_refused_before_the_quadratic_conversion(loader: type) -> None:
    # PyYAML turns 1:1:1:... into an integer by repeated multiplication: 200 kB of it take
    # seconds, a 16 MiB kubeconfig hours.
    assert yamlinput.load_all("a: 1:20:30\n", DUMP, source="x", loader=loader) == [{"a": 4830}]
    message = refusal("a: 1" + ":1" * 100_000 + "\n", loader=loader)
    assert message == (
        "cluster dump dump.yaml is not valid YAML or JSON at line 1, column 4: a base-60 "
        "integer longer than 64 characters; quote it if it is a string"
    )


def test_echoed_input_is_cut() -> None:
    name = "x" * 500
    message = refusal(f"a: &{name} [*{name}]\n")
    assert len(message) < 250
    assert "…" in message


def test_load_single_wants_one_document() -> None:
    kind = yamlinput.KUBECONFIG
    assert yamlinput.load_single("", kind, source="k") is None
    assert yamlinput.load_single("a: 1\n", kind, source="k") == {"a": 1}
    with pytest.raises(BackendError, match=r"^kubeconfig k holds 2 YAML documents; expected one$"):
        yamlinput.load_single("a: 1\n---\nb: 2\n", kind, source="k")


# --- the one-pass builder -------------------------------------------------------------------
#
# load_all checks and builds values from one parse (yamlinput._build) and gives up to PyYAML's
# composer and constructor (yamlinput._load_all_pyyaml, after the same checks) on what it does
# not build itself. Either way, a user must see exactly what the PyYAML path gives.


def outcome(load: Callable[[], list[Any]]) -> str:
    """The values (as repr: NaN equals NaN, sets and dates compare) or the one-line error."""
    try:
        return repr(load())
    except BackendError as exc:
        return f"error: {exc}"


def both_paths(text: str, loader: type) -> tuple[str, str]:
    one_pass = outcome(lambda: yamlinput.load_all(text, DUMP, source="x", loader=loader))
    pyyaml = outcome(lambda: yamlinput._load_all_pyyaml(text, DUMP, "x", loader))
    return one_pass, pyyaml


_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
)
_TREES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(), children, max_size=4)
    ),
    max_leaves=25,
)


@pytest.mark.fuzz
@FUZZ
@given(
    trees=st.lists(_TREES, min_size=1, max_size=3),
    shared=st.booleans(),
    flow=st.sampled_from([None, True, False]),
)
def test_the_one_pass_builder_reads_what_pyyaml_dumps_as_pyyaml_does(
    trees: list[Any], shared: bool, flow: bool | None
) -> None:
    # Shared subtrees make the dumper write anchors and aliases.
    documents = [{"a": tree, "b": tree if shared else None} for tree in trees]
    text = yaml.safe_dump_all(documents, default_flow_style=flow, allow_unicode=True)
    for loader in yamlinput.LOADERS:
        built = yamlinput._build(text, DUMP, "x", loader)  # no fallback: it builds these
        assert repr(built) == repr(list(yaml.load_all(text, Loader=loader)))


@pytest.mark.fuzz
@FUZZ
@given(st.text(alphabet="ab1:-[]{},&*!|>'\"#%@?<=~.0x \n\t", max_size=60))
def test_any_text_gives_what_the_pyyaml_path_gives(text: str) -> None:
    # An object or array of plain JSON is read as JSON, as Go reads it, where PyYAML's
    # YAML 1.1 may not (its pure scanner refuses the tab of "[\t]", which libyaml takes).
    plain_json = (
        yamlinput._json(text, DUMP.max_depth)
        if text.lstrip()[:1] in ("{", "[")
        else yamlinput._NOT_JSON
    )
    for loader in yamlinput.LOADERS:
        if plain_json is not yamlinput._NOT_JSON:
            assert yamlinput.load_all(text, DUMP, source="x", loader=loader) == [plain_json]
            continue
        one_pass, pyyaml = both_paths(text, loader)
        assert one_pass == pyyaml


@pytest.mark.parametrize(
    "text",
    [
        "base: &b {x: 1}\nnode: {<<: *b, y: 2}\n",  # a merge key
        "a: =\n",  # the value tag: no constructor
        "s: !!set {a, b}\no: !!omap [{a: 1}]\n",
        "? [a, b]\n: 1\n",  # a collection as a key: unhashable
        "a: &k key\n*k : 1\n",  # an alias as a key
        "a: *nowhere\n",  # an undefined alias
        "a: !mine x\n",  # a local tag
        "a: 2001-13-45\n",  # a date that is no date
        "a: !!binary aGVsbG8=\nb: !!timestamp 2001-12-14\n",
        "a: !!map [1]\n",
        "!!int ''\n",  # PyYAML's int constructor indexes the empty value: IndexError
        "a: !!float '-'\n",
        "!!int ]",  # ... and the syntax error after it is what the PyYAML path reports
        "a: &x 1\nb: &x 2\nc: *x\n",  # a duplicate anchor
        "&x [ &x 1 ]",  # ... inside the collection it names
    ],
)
def test_what_the_builder_leaves_to_pyyaml_reads_as_before(loader: type, text: str) -> None:
    one_pass, pyyaml = both_paths(text, loader)
    assert one_pass == pyyaml


def test_an_alias_is_the_same_value_as_its_anchor_as_in_pyyaml(loader: type) -> None:
    text = "a: &x {b: [1]}\nc: *x\n"
    [value] = yamlinput._build(text, DUMP, "x", loader)
    assert value == {"a": {"b": [1]}, "c": {"b": [1]}}
    assert value["a"] is value["c"]


def test_a_problem_is_reported_where_pyyaml_reports_it_first(loader: type) -> None:
    # A value no constructor takes (line 1) comes before a syntax error (line 2) in the
    # input; the PyYAML path checks the whole input first, so the syntax error is what a
    # user sees, on both paths.
    text = "a: !mine x\nb: [\n"
    one_pass, pyyaml = both_paths(text, loader)
    assert one_pass == pyyaml
    assert one_pass.startswith("error: cluster dump x is not valid YAML or JSON at line 3,")


# --- JSON -----------------------------------------------------------------------------------
#
# A cluster dump that is JSON (kubectl -o json) is read by the json module; anything that is
# not plain JSON is read as YAML, as before.


def test_a_json_dump_reads_as_its_yaml_twin() -> None:
    documents = list(yaml.safe_load_all(EXAMPLE_DUMP.read_text()))
    for document in documents:
        text = json.dumps(document, indent=2)
        assert yamlinput.load_all(text, DUMP, source="x") == [document]
        assert file_backend.parse_dump(text) == file_backend.parse_dump(yaml.safe_dump(document))


_JSON_TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), max_codepoint=0xFFFF), max_size=8
)  # PyYAML refuses the surrogate-pair escapes of astral characters: see below
_JSON_TREES = st.recursive(
    st.none() | st.booleans() | st.integers() | _JSON_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_JSON_TEXT, children, max_size=4)
    ),
    max_leaves=25,
).map(lambda tree: {"items": tree})


@pytest.mark.fuzz
@FUZZ
@given(tree=_JSON_TREES, indent=st.sampled_from([None, 2]), ascii_only=st.booleans())
def test_plain_json_reads_as_the_yaml_path_reads_it(
    tree: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(tree, indent=indent, ensure_ascii=ascii_only)
    assert yamlinput._json(text, DUMP.max_depth) == tree
    assert yamlinput.load_all(text, DUMP, source="x") == [tree]
    if not any(brk in text for brk in YAML_ONLY_BREAKS):
        assert yamlinput._load_all_pyyaml(text, DUMP, "x", yamlinput.LOADER) == [tree]


# Line breaks in YAML 1.1, not in JSON: inside a quoted scalar PyYAML folds them (NEL into a
# space), where a JSON string keeps them, and so does the JSON path.
YAML_ONLY_BREAKS = ("\x85", "\u2028", "\u2029")


@pytest.mark.parametrize("brk", YAML_ONLY_BREAKS)
def test_a_yaml_line_break_in_a_json_string_is_kept_as_json_keeps_it(brk: str) -> None:
    text = json.dumps({"a": f"x{brk}y", f"k{brk}": [f"{brk}"]}, ensure_ascii=False)
    assert yamlinput.load_all(text, DUMP, source="x") == [{"a": f"x{brk}y", f"k{brk}": [brk]}]


@pytest.mark.parametrize(
    "text",
    [
        '{"a": NaN}',  # YAML reads the string "NaN"
        '{"a": 1}\n{"b": 2}',  # two JSON documents: not YAML either
        "[" * 101 + "]" * 101,  # deeper than the limit: refused where it gets too deep
        "[" * 5000 + "]" * 5000,  # deeper than the json module goes
        '{"a": ' + "1" * 5000 + "}",  # an integer Python will not convert
        '{"a": [1, 2}',  # a syntax error: YAML's message, with a line and column
        '{"a": 1, }',  # not JSON, but YAML
    ],
)
def test_what_is_not_plain_json_reads_as_yaml(text: str) -> None:
    assert yamlinput._json(text, DUMP.max_depth) is yamlinput._NOT_JSON
    one_pass, pyyaml = both_paths(text, yamlinput.LOADER)
    assert one_pass == pyyaml


def test_many_documents_cost_the_builder_no_more_memory_than_pyyaml(loader: type) -> None:
    # Every non-string scalar goes through PyYAML's constructor, which remembers the node it
    # built: 150000 one-number documents once held 47 MB there (the PyYAML path: 2 MB).
    text = "--- 1\n" * 20_000
    peaks = []
    loads: tuple[Callable[[], list[Any]], ...] = (
        lambda: yamlinput.load_all(text, DUMP, source="x", loader=loader),
        lambda: yamlinput._load_all_pyyaml(text, DUMP, "x", loader),
    )
    for load in loads:
        tracemalloc.start()
        try:
            assert load() == [1] * 20_000
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[0] < 2 * peaks[1]


def test_a_duplicate_anchor_is_named_with_where_it_was_first(loader: type) -> None:
    message = refusal("a: &x 1\nb: &x 2\n", loader=loader)
    assert message.startswith(
        "cluster dump dump.yaml is not valid YAML or JSON at line 2, column 4: "
        "found duplicate anchor"
    )
    assert message.endswith("(first defined at line 1, column 4)")


@pytest.mark.parametrize(
    "text",
    [
        '["\\ud800"]',  # a lone surrogate: no UTF-8 string can hold it
        "[1e400]",  # out of a float's range (Go refuses it too)
    ],
)
def test_json_that_no_string_or_number_can_hold_reads_as_yaml(text: str) -> None:
    assert yamlinput._json(text, DUMP.max_depth) is yamlinput._NOT_JSON
    one_pass, pyyaml = both_paths(text, yamlinput.LOADER)
    assert one_pass == pyyaml


def test_json_after_a_byte_order_mark_is_json() -> None:
    assert yamlinput.load_all('\ufeff{"a": 1e3}', DUMP, source="x") == [{"a": 1000.0}]


def test_nesting_up_to_the_limit_is_json_too() -> None:
    text = "[" * DUMP.max_depth + "]" * DUMP.max_depth
    assert yamlinput._json(text, DUMP.max_depth) is not yamlinput._NOT_JSON
    assert yamlinput._json("[" + text + "]", DUMP.max_depth) is yamlinput._NOT_JSON


def test_json_numbers_and_escapes_read_as_json(loader: type) -> None:
    # YAML 1.1 reads 1e3 as a string and PyYAML refuses a surrogate-pair escape; JSON (and
    # Go, reading kubectl's JSON) reads a number and one character.
    assert yamlinput.load_all('[1e3, "\\ud83d\\ude00"]', DUMP, source="x") == [
        [1000.0, "\U0001f600"]
    ]
    assert yamlinput.load_all("[1e3]", yamlinput.KUBECONFIG, source="x", loader=loader) == [["1e3"]]


@pytest.mark.parametrize(
    "text",
    [
        *("1", "1.5", "0x1F", "0o7", "1:20", "1_000", "2001-12-14", "2001-12-14t21:59:43.10-05:00"),
        *("10.0.0.1", "10.0.0.0/24", "1e3", "1.0e+3", "null", "Null", "no", "NO", "node-1", "n"),
        *("true", "True", "tRue", "~", ".inf", ".NaN", ".5", "-1", "-x", "+", "+.inf", "<<"),
        *("=", "yes", "Off", "on", "y", "0b101", "09", "190:20:30", "1_0:2"),
    ],
)
def test_the_builder_resolves_plain_scalars_as_pyyaml_does(loader: type, text: str) -> None:
    # The builder asks one pattern for a scalar's first character before PyYAML's resolver.
    instance = loader("")
    resolvers = instance.yaml_implicit_resolvers.get(text[:1], [])
    instance.dispose()
    claimed = yamlinput._any_of(resolvers).match(text) is not None if resolvers else False
    assert claimed == any(pattern.match(text) for _, pattern in resolvers)
    document = f"a: {text}\nb: [{text}]\n"
    try:
        expected = yaml.load(document, Loader=loader)
    except yaml.YAMLError:
        refusal(document, loader=loader)
    else:
        assert yamlinput.load_all(document, DUMP, source="x", loader=loader) == [expected]
