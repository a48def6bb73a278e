"""JSON dumps decoded into what kgctl reads (kilo.adapters.dumpjson): the same Nodes,
Peers and warnings as the json module's documents give, less what kgctl never reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kilo.adapters import dumpjson
from kilo.adapters import file as file_backend
from kilo.errors import BackendError
from tests.examples import DUMP_PEER as PEER
from tests.examples import kubelet_node

READ = ("apiVersion", "kind", "metadata", "spec")


def read(obj: dict[str, Any]) -> dict[str, Any]:
    return {name: obj[name] for name in READ if name in obj}


def as_kgctl_reads(text: str, *, whole: bool) -> tuple[list[Any], list[Any], list[str]]:
    """The Nodes, Peers (the fields kgctl reads) and warnings of a dump; ``whole``: read
    without the struct decoder or the YAML cut, as before."""
    if whole:
        previous = file_backend.NODE_STATUS
        file_backend.NODE_STATUS = None  # type: ignore[assignment]
        try:
            dump = file_backend.parse_dump(text)
        finally:
            file_backend.NODE_STATUS = previous
    else:
        dump = file_backend.parse_dump(text)
    return [read(n) for n in dump.nodes], [read(p) for p in dump.peers], dump.warnings


def json_dump(items: list[Any], **extra: Any) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items, **extra}, indent=4)


def test_a_kubelet_json_dump_is_decoded_into_what_kgctl_reads() -> None:
    items = [kubelet_node(i) for i in range(4)] + [PEER, {"kind": "Pod", "metadata": {"name": "x"}}]
    text = json_dump(items)
    (document,) = dumpjson.read_list(text, file_backend._is_node) or [None]
    assert document == {
        "apiVersion": "v1",
        "kind": "List",
        "items": [read(item) for item in items],
    }
    assert as_kgctl_reads(text, whole=False) == as_kgctl_reads(text, whole=True)
    nodes = file_backend.parse_dump(text).nodes
    assert len(nodes) == 4 and all("status" not in node for node in nodes)


def test_a_field_absent_stays_absent_and_null_stays_null() -> None:
    text = json_dump([{"kind": "Node", "metadata": {"name": "a"}, "spec": None}])
    assert dumpjson.read_list(text, file_backend._is_node) == [
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [{"kind": "Node", "metadata": {"name": "a"}, "spec": None}],
        }
    ]


NODE = '{"kind": "Node", "metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.0.0/24"}'


@pytest.mark.parametrize(
    "text",
    [
        NODE + "}",  # one object, not a List
        "[" + NODE + "}]",
        '{"kind": "List", "items": [{"kind": "List", "items": [' + NODE + "}]}]}",
        '{"kind": "List", "items": 5}',
        '{"kind": "List"}',
        '{"kind": "List", "items": [' + NODE + ', "status": "\\ud800"}]}',  # a lone surrogate
        '{"kind": "List", "items": [' + NODE + ', "status": 1e400}]}',  # out of range
        '{"kind": "List", "items": [' + NODE + ', "status": NaN}]}',
        '{"kind": "List", "items": [' + NODE.replace('"a"', "[" * 120 + "]" * 120) + "}]}",
        '{"kind": "List", "items": [' + NODE.replace('"a"', "1" * 4400) + "}]}",
        '{"kind": "List", "items": [' + NODE + "}]} x",
        '{"kind": "List", "items": [' + NODE + ', "kind": "Peer"}]}',  # the last one counts
        # What is not a Node's status is checked as before, wherever it is: a field kubectl
        # does not write, the List's own metadata, another kind's status ...
        '{"kind": "List", "items": [' + NODE + ', "extra": ' + "[" * 120 + "]" * 120 + "}]}",
        '{"kind": "List", "metadata": {"x": ' + "1" * 4400 + '}, "items": [' + NODE + "}]}",
        '{"kind": "List", "items": [{"kind": "Pod", "status": ' + "[" * 120 + "]" * 120 + "}]}",
        '{"kind": "List", "items": [' + NODE.replace('"Node"', '"Peer"') + ', "status": 1}]}',
        # ... and one the json module refuses makes the whole text YAML, with YAML's
        # values (1e3 is a string in YAML 1.1).
        '{"kind": "List", "items": [' + NODE.replace('"a"}', '"a", "x": 1e3}') + "}], "
        '"extra": 1e400}',
        # ... as does a Node's status it refuses (a float elsewhere reads the text whole).
        '{"kind": "List", "items": ['
        + NODE.replace('"a"}', '"a", "x": 1e3}')
        + ', "status": 1e400}]}',
        '{"kind": "List", "items": [' + NODE.replace('"a"}', '"a", "x": 1.5}') + "}]}",
    ],
)
def test_other_json_reads_as_before(text: str) -> None:
    try:
        expected = as_kgctl_reads(text, whole=True)
    except BackendError as exc:
        with pytest.raises(BackendError) as caught:
            as_kgctl_reads(text, whole=False)
        assert str(caught.value) == str(exc)
    else:
        assert as_kgctl_reads(text, whole=False) == expected


def test_deep_or_huge_values_kgctl_reads_are_refused_as_before() -> None:
    deep = '{"kind": "List", "items": [' + NODE.replace('"a"', "[" * 120 + "]" * 120) + "}]}"
    huge = '{"kind": "List", "items": [' + NODE.replace('"a"', "1" * 4400) + "}]}"
    assert (
        dumpjson.read_list(deep, file_backend._is_node) is not None
    )  # msgspec reads it, the checks do not
    for text in (deep, huge):
        with pytest.raises(BackendError) as caught:
            file_backend.parse_dump(text)
        with pytest.raises(BackendError) as before:
            as_kgctl_reads(text, whole=True)
        assert str(caught.value) == str(before.value)


def test_a_status_kgctl_never_reads_is_not_checked() -> None:
    """As in a YAML dump (test_yamlcut): what is skipped is neither built nor refused."""
    text = '{"kind": "List", "items": [' + NODE + ', "status": ' + "[" * 200 + "]" * 200 + "}]}"
    with pytest.raises(BackendError):
        as_kgctl_reads(text, whole=True)
    nodes, _, _ = as_kgctl_reads(text, whole=False)
    assert nodes == [json.loads(NODE + "}")]
