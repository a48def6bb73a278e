"""The Node status blocks cut from a dump before it is parsed (kilo.adapters.yamlcut): the
cut parse must read every dump as the whole parse does, less the Nodes' status."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kilo.adapters import file as file_backend
from kilo.adapters import yamlcut, yamlinput
from kilo.errors import BackendError
from tests.examples import DUMP_PEER, kubelet_node
from tests.hostile import FUZZ

DUMP = yamlinput.CLUSTER_DUMP


@pytest.fixture(params=yamlinput.LOADERS, ids=lambda loader: loader.__name__)
def loader(request: pytest.FixtureRequest) -> type:
    return request.param  # type: ignore[no-any-return]


def cut_load(text: str, loader: type | None = None) -> list[Any]:
    return yamlinput.load_all(
        text, DUMP, source="dump.yaml", loader=loader, unread=file_backend.NODE_STATUS
    )


def unshared(value: Any) -> Any:
    """A copy of ``value`` in which no collection is shared (deepcopy keeps what aliases
    share: dropping a status from a copy of a Node would drop it where an alias put it)."""
    if isinstance(value, dict):
        return {key: unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unshared(item) for item in value]
    return copy.copy(value)


def without_node_status(documents: list[Any]) -> list[Any]:
    """What the whole parse gives, less the status of each Node object."""
    documents = unshared(documents)
    for document in documents:
        for obj, _ in file_backend._objects(document, ""):
            if isinstance(obj, dict) and file_backend._is_node(obj):
                obj.pop("status", None)
    return documents


def whole_load(text: str, loader: type | None = None) -> list[Any]:
    return yamlinput.load_all(text, DUMP, source="dump.yaml", loader=loader)


def assert_as_whole(text: str, loader: type) -> None:
    """The cut parse gives the whole parse's documents, with or without the Nodes' status
    (it falls back on the whole text when it cannot cut exactly), nothing else."""
    whole = whole_load(text, loader)
    assert cut_load(text, loader) in (whole, without_node_status(whole)), text


PEER = DUMP_PEER


def kubelet_dump(nodes: int, *, dumper: type = yaml.SafeDumper, indent: int = 2) -> str:
    items: list[Any] = [kubelet_node(i) for i in range(nodes)]
    items += [PEER, {**PEER, "metadata": {"name": "q"}}]
    document = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {}}
    return yaml.dump(document, Dumper=dumper, default_flow_style=False, indent=indent)


def test_a_kubelet_dump_reads_as_the_whole_parse_less_the_node_status(loader: type) -> None:
    text = kubelet_dump(6)
    cut = yamlcut.cut(text, "status")
    assert cut is not None and len(cut.keys) == 6  # every Node's status is cut ...
    assert len(cut.text) < len(text) / 3  # ... and it is most of the dump
    expected = without_node_status(whole_load(text, loader))
    assert cut_load(text, loader) == expected
    assert all("status" not in node for node in expected[0]["items"])


def test_the_cut_follows_the_indentation_of_the_list(loader: type) -> None:
    text = kubelet_dump(3, indent=4)
    assert yamlcut.cut(text, "status") is not None
    assert cut_load(text, loader) == without_node_status(whole_load(text, loader))


def test_bare_node_documents_are_cut_too(loader: type) -> None:
    nodes = [kubelet_node(i) for i in range(3)]
    text = yaml.safe_dump_all(nodes, default_flow_style=False)
    cut = yamlcut.cut(text, "status")
    assert cut is not None and {column for _, column in cut.keys} == {0}
    assert cut_load(text, loader) == without_node_status(whole_load(text, loader))


def test_the_positions_are_those_of_the_keys_in_the_cut_text() -> None:
    text = "a: 1\nstatus:\n  x: 1\n  y:\n  - 2\nb: 2\n---\nstatus:\n- 1\n- 2\n"
    cut = yamlcut.cut(text, "status")
    assert cut is not None
    assert cut.text == "a: 1\nstatus:\nb: 2\n---\nstatus:\n"
    assert cut.keys == {(1, 0), (4, 0)}


NODE = "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: a\n"


@pytest.mark.parametrize(
    "text",
    [
        # A double-quoted scalar of the status goes on at the Node's indentation: the
        # lines after it are the status's, not the Node's spec.
        NODE + '  status:\n    message: "x\n  spec:\n    podCIDR: 10.0.0.0/24\n  z: a\\"b"\n',
        NODE + "  status:\n    message: 'x\n  spec:\n    podCIDR: 10.0.0.0/24\n  z: a'\n",
        # A flow collection that goes on over lines.
        NODE + "  status:\n    list: [a,\n  spec: b]\n",
        # A comment at the key's indentation, the status going on after it.
        NODE + "  status:\n    a: 1\n  # a comment\n    b: 2\n  spec: {}\n",
        # "status:" inside a block scalar of an annotation: not a key at all.
        NODE.replace("    name: a\n", "    name: a\n    annotations:\n      note: |\n")
        + "        status:\n          x: 1\n        y\n",
        # ... inside a quoted scalar.
        NODE + "  spec:\n    note: 'a\n  status:\n    x: 1\n    b'\n",
        # A status key in a flow mapping: a value on the next line is not a block.
        "- {kind: Node, metadata: {name: a},\n  status:\n    x,\n  spec: {}}\n",
        # An anchor defined in the status and used outside it.
        NODE + "  status:\n    a: &x 1\n  spec:\n    podCIDR: *x\n",
        # A Node (or a collection holding it) with an anchor: an alias puts it elsewhere
        # (an annotation, a Peer's spec), where its status must stay.
        "- &n\n  kind: Node\n  metadata:\n    name: a\n  status:\n    x: 1\n"
        "- kind: Node\n  metadata:\n    name: b\n    annotations:\n      k: *n\n",
        "- &n\n  kind: Node\n  metadata:\n    name: a\n  status:\n    x: 1\n"
        "- kind: Peer\n  metadata:\n    name: p\n  spec: *n\n",
        "kind: List\nitems: &i\n" + NODE + "  status:\n    x: 1\nmetadata:\n  x: *i\n",
        # The status key twice, the second time with a value.
        NODE + "  status:\n    a: 1\n  status: {b: 2}\n",
        # An object that is not a Node: its status is read whole.
        "- apiVersion: kilo.squat.ai/v1alpha1\n  kind: Peer\n  metadata:\n    name: p\n"
        "  status:\n    a: 1\n",
        "- kind: Node\n  spec:\n    status:\n      a: 1\n",  # not an object's key
        # The last line without a line break: spaces only, or more of the status.
        NODE + "  status:\n    a: 1\n  ",
        NODE + "  status:\n    a: 1\n    b: 2",
        # Line breaks YAML counts that "\n" does not.
        NODE + "  status:\n    a: 1\r\n  spec: {}\n",
        NODE + "  status:\n    a: 1\u2028  b: 2\n  spec: {}\n",
    ],
)
def test_what_cannot_be_cut_exactly_reads_as_the_whole_parse(loader: type, text: str) -> None:
    assert_as_whole(text, loader)


def test_a_node_an_alias_puts_elsewhere_keeps_its_status_there(loader: type) -> None:
    text = (
        "- &n\n  kind: Node\n  metadata:\n    name: a\n  status:\n    x: 1\n"
        "- kind: Node\n  metadata:\n    name: b\n    annotations:\n      k: *n\n"
    )
    annotation = cut_load(text, loader)[0][1]["metadata"]["annotations"]["k"]
    assert annotation["status"] == {"x": 1}  # kgctl's warning about it shows it


@pytest.mark.parametrize("column", [0, 2])
def test_an_entry_at_the_key_column_after_its_value_is_refused_as_before(
    loader: type, column: int
) -> None:
    """``- b`` at the status key's column is its value only when the value is that
    sequence; after a mapping indented more it is an error of the whole text."""
    pad = " " * column
    node = "kind: Node\nmetadata:\n  name: a\n" if column == 0 else NODE
    text = node + f"{pad}status:\n{pad}  x: 1\n{pad}- b\n"
    with pytest.raises(BackendError) as whole:
        whole_load(text, loader)
    with pytest.raises(BackendError) as cut:
        cut_load(text, loader)
    assert str(cut.value) == str(whole.value)
    # ... and a sequence at the key's column is a value the cut takes whole.
    text = node + f"{pad}status:\n\n{pad}- a\n{pad}  - b\n{pad}-\n{pad}spec: {{}}\n"
    assert yamlcut.cut(text, "status") is not None
    assert_as_whole(text, loader)


@pytest.mark.parametrize(
    "text",
    [
        NODE + "  status:\n    a: &x 1\n  spec:\n    b: &x 2\n",
        NODE + "  spec:\n    b: &x 2\n  status:\n    a: &x 1\n",
    ],
)
def test_an_anchor_in_a_status_defined_twice_is_refused_as_before(loader: type, text: str) -> None:
    with pytest.raises(BackendError) as whole:
        whole_load(text, loader)
    with pytest.raises(BackendError) as cut:
        cut_load(text, loader)
    assert str(cut.value) == str(whole.value)
    assert "duplicate anchor" in str(cut.value)


def test_a_multi_line_quoted_status_keeps_the_node_without_spec(loader: type) -> None:
    text = NODE + '  status:\n    message: "x\n  spec:\n    podCIDR: 10.0.0.0/24\n  z: a\\"b"\n'
    (node,) = cut_load(text, loader)[0]
    assert "spec" not in node and "z" not in node


def test_errors_outside_the_status_are_reported_as_before(loader: type) -> None:
    text = kubelet_dump(2) + "  bad: [\n"
    with pytest.raises(BackendError) as whole:
        whole_load(text, loader)
    with pytest.raises(BackendError) as cut:
        cut_load(text, loader)
    assert str(cut.value) == str(whole.value)


def test_a_status_nobody_reads_is_not_checked(loader: type) -> None:
    """The documented price: what is never parsed is never refused (nor built)."""
    deep = "".join(" " * (4 + i) + "k:\n" for i in range(150))  # nested 150 deep
    for status in ("    a: b: c\n", deep):
        text = NODE + "  status:\n" + status + "  spec: {}\n"
        with pytest.raises(BackendError):
            whole_load(text, loader)
        (node,) = cut_load(text, loader)[0]
        assert node == {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"}, "spec": {}}


def test_read_dump_cuts_the_status_of_nodes(tmp_path: Any) -> None:
    path = tmp_path / "dump.yaml"
    path.write_text(kubelet_dump(3))
    dump = file_backend.read_dump(str(path))
    assert len(dump.nodes) == 3 and len(dump.peers) == 2
    assert all("status" not in node for node in dump.nodes)
    assert dump.nodes[0]["spec"]["podCIDR"]


_LINES = st.sampled_from(
    [
        "  status:",
        "status:",
        "    status:",
        "  kind: Node",
        "- kind: Node",
        "kind: Node",
        "  spec: {}",
        "  spec:",
        "    a: 1",
        "      b: 'x'",
        '    c: "y',
        "  z'",
        '  z"',
        "    - 1",
        "  - 2",
        "- 3",
        "    d: [1,",
        "  2]",
        "    e: |",
        "      text",
        "  # c",
        "    f: &a 1",
        "  g: *a",
        "- &n",
        "  h: *n",
        "---",
        "",
        "  ",
    ]
)


@pytest.mark.fuzz
@FUZZ
@given(st.lists(_LINES, max_size=14), st.sampled_from(["\n", "", "  "]))
def test_any_text_reads_as_the_whole_parse_less_the_node_status(
    lines: list[str], ending: str
) -> None:
    assert_as_whole_or_refused_in_a_status("\n".join(lines) + ending)


# Lines after a Node's "status:" key, relative to the key's column.
_STATUS_LINES = st.sampled_from(
    [
        "  a: 1",
        "   b: 2",
        "    - c",
        "- d",
        "-",
        "-\te",
        "  - f",
        "spec: {}",
        "spec:",
        "  podCIDR: 10.0.0.0/24",
        "  g: 'x'",
        '  h: "y',
        'i"',
        "  j: |",
        "    text",
        " k",
        "# c",
        "  # c",
        "",
        "  ",
        "\t",
        "  l: &a 1",
        "m: *a",
        "---",
        "...",
        "? n",
        ": o",
        "status:",
        "  status:",
    ]
)
# A Node whose keys are at column 0, 2 or 4.
_HEADS = {
    0: "kind: Node\nmetadata:\n  name: a\n",
    2: NODE,
    4: "-   apiVersion: v1\n    kind: Node\n    metadata:\n        name: a\n",
}


@pytest.mark.fuzz
@FUZZ
@given(
    st.sampled_from(sorted(_HEADS)),
    st.lists(_STATUS_LINES, max_size=10),
    st.sampled_from(["\n", "", "  "]),
)
def test_any_status_block_reads_as_the_whole_parse_less_the_node_status(
    column: int, lines: list[str], ending: str
) -> None:
    pad = " " * column
    body = "\n".join(pad + line for line in ["status:", *lines])
    assert_as_whole_or_refused_in_a_status(_HEADS[column] + body + ending)


def assert_as_whole_or_refused_in_a_status(text: str) -> None:
    """The cut parse reads ``text`` as the whole parse does (less the Nodes' status), or
    refuses it with the same message, or reads what the whole parse refuses for an error
    inside a cut status."""
    for loader in yamlinput.LOADERS:
        try:
            whole_load(text, loader)
        except BackendError as exc:
            try:
                cut_load(text, loader)
            except BackendError as cut_exc:
                assert str(cut_exc) == str(exc)
            else:
                assert_inside_a_status(text, str(exc))
            continue
        assert_as_whole(text, loader)


_AT = re.compile(r" at line (\d+), column \d+")


def assert_inside_a_status(text: str, error: str) -> None:
    """An error the cut parse does not report is inside a cut status: on a line of it
    indented more than its key, or of a sequence at the key's column that is its value."""
    cut = yamlcut.cut(text, "status")
    where = _AT.search(error)
    assert cut is not None and where is not None, (text, error)
    line = int(where.group(1)) - 1
    original, kept = text.split("\n"), cut.text.split("\n")
    columns = dict(cut.keys)
    i = 0
    for j, kept_line in enumerate(kept):
        assert original[i] == kept_line
        i += 1
        if j not in columns:
            continue
        # The removed lines: up to the next kept line (never blank), or the text's end.
        last = kept[j + 1 :] == [""]
        end = len(original) - 1 if last else original.index(kept[j + 1], i)
        if last and line == end:
            return  # the end of the text, where the parser found the status unfinished
        if i <= line < end:
            column = columns[j]
            first = next(b for b in original[i:end] if b.strip())
            sequence = first.startswith(" " * column + "-")
            indent = len(original[line]) - len(original[line].lstrip(" "))
            assert indent > column or sequence, (text, error)
            return
        i = end
    raise AssertionError((text, error))
