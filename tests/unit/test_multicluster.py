"""The multi-cluster mirror (kilo.mesh.multicluster): Kilo's recipe as a plan, ownership."""

from __future__ import annotations

import copy
import io
import ipaddress
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kilo.cli import kgctl
from kilo.mesh import cluster as cluster_mod
from kilo.mesh import multicluster
from kilo.mesh.multicluster import LINK_LABEL, SOURCE_ANNOTATION
from tests.examples import EXAMPLE_DUMP, reference_objects

SERVICE_CIDR = ipaddress.ip_network("10.43.0.0/16")


def reference() -> cluster_mod.Cluster:
    objects = reference_objects()
    nodes = [o for o in objects if o["kind"] == "Node"]
    peers = [o for o in objects if o["kind"] == "Peer"]
    return cluster_mod.translate_cluster(nodes, peers)


def showconf_as_peer(node: str) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    argv = ["--backend", "file", "--file", str(EXAMPLE_DUMP), "showconf", "node", node]
    argv += ["--as-peer", "-o", "yaml", "--allowed-ips", str(SERVICE_CIDR)]
    assert kgctl.main(argv, out=out, err=err) == 0, err.getvalue()
    loaded: dict[str, Any] = yaml.safe_load(out.getvalue())
    return loaded


def test_a_mirror_is_the_recipe_with_the_links_name_label_and_source() -> None:
    mirror = multicluster.mirror(reference(), link="east", allowed_ips=[SERVICE_CIDR], now=None)
    assert mirror.diagnostics == ()
    leaders = [p["metadata"]["annotations"][SOURCE_ANNOTATION] for p in mirror.peers]
    assert leaders, "the reference cluster has segments"
    for peer, leader in zip(mirror.peers, leaders, strict=True):
        recipe = showconf_as_peer(leader)
        assert peer["apiVersion"] == recipe["apiVersion"] and peer["kind"] == recipe["kind"]
        assert peer["spec"] == recipe["spec"], leader
        assert peer["metadata"] == {
            "name": f"east-{leader}",
            "labels": {LINK_LABEL: "east"},
            "annotations": {SOURCE_ANNOTATION: leader},
        }


def test_a_mirror_leaves_out_the_clusters_own_peers() -> None:
    names = {
        p["metadata"]["name"] for p in multicluster.mirror(reference(), link="l", now=None).peers
    }
    assert not any("laptop" in n for n in names)


def test_nothing_to_mirror_is_said_not_raised() -> None:
    empty = cluster_mod.translate_cluster([], [])
    mirror = multicluster.mirror(empty, link="l", now=None)
    assert mirror.peers == () and "nothing to mirror" in mirror.diagnostics[0]


def test_changes_create_replace_and_delete_only_owned_peers() -> None:
    desired = multicluster.mirror(reference(), link="east", now=None).peers
    first, *rest = desired
    stale = copy.deepcopy(first)
    stale["spec"]["allowedIPs"] = ["10.0.0.0/8"]
    gone = copy.deepcopy(first)
    gone["metadata"]["name"] = "east-departed"
    other_link = copy.deepcopy(first)
    other_link["metadata"]["name"] = "east-departed-too"
    other_link["metadata"]["labels"] = {LINK_LABEL: "west"}
    own = {"apiVersion": "kilo.squat.ai/v1alpha1", "kind": "Peer", "metadata": {"name": "laptop"}}
    existing = [stale, gone, other_link, own, *rest]
    changes = multicluster.changes(desired, existing, link="east")
    assert [p["metadata"]["name"] for p in changes.apply] == [first["metadata"]["name"]]
    assert changes.delete == ("east-departed",)
    assert changes.conflicts == ()
    assert multicluster.changes(desired, [*desired, own], link="east") == multicluster.Changes()
    assert not multicluster.changes(desired, desired, link="east")


def test_a_name_taken_by_a_peer_the_link_does_not_own_is_a_conflict() -> None:
    desired = multicluster.mirror(reference(), link="east", now=None).peers
    squatter = copy.deepcopy(desired[0])
    del squatter["metadata"]["labels"]
    changes = multicluster.changes(desired, [squatter], link="east")
    assert changes.conflicts == (desired[0]["metadata"]["name"],)
    assert squatter["metadata"]["name"] not in [p["metadata"]["name"] for p in changes.apply]
    assert changes.delete == ()


def test_extra_metadata_of_an_owned_peer_is_not_a_change() -> None:
    desired = multicluster.mirror(reference(), link="east", now=None).peers
    current = copy.deepcopy(list(desired))
    for obj in current:
        obj["metadata"]["labels"]["team"] = "net"
        obj["metadata"]["resourceVersion"] = "7"
    assert not multicluster.changes(desired, current, link="east")
    del current[0]["metadata"]["annotations"]
    assert len(multicluster.changes(desired, current, link="east").apply) == 1


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.text(max_size=5),
            st.dictionaries(
                st.sampled_from(["metadata", "spec"]),
                st.one_of(
                    st.none(),
                    st.text(max_size=5),
                    st.dictionaries(
                        st.sampled_from(["name", "labels", "annotations"]),
                        st.one_of(st.none(), st.text(max_size=5), st.just({LINK_LABEL: "east"})),
                    ),
                ),
            ),
        ),
        max_size=5,
    )
)
def test_hostile_peers_never_break_the_plan(existing: list[Any]) -> None:
    desired = multicluster.mirror(reference(), link="east", now=None).peers
    objects = [o for o in existing if isinstance(o, dict)]
    changes = multicluster.changes(desired, objects, link="east")
    # Whatever was read, every desired Peer is written, conflicted, or already there.
    names = {p["metadata"]["name"] for p in changes.apply} | set(changes.conflicts)
    assert names <= {p["metadata"]["name"] for p in desired}
    for name in changes.delete:
        assert any(multicluster.owned_by(o, "east") for o in objects if _name(o) == name)


def _name(obj: dict[str, Any]) -> object:
    """The object's name, or None for an object without one (hostile input)."""
    metadata = obj.get("metadata")
    return metadata.get("name") if isinstance(metadata, dict) else None


@pytest.mark.parametrize(
    ("name", "ok"),
    [("east", True), ("a", True), ("a-b9", True), ("", False), ("-a", False), ("A", False),
     ("a" * 40, True), ("a" * 41, False), ("a_b", False), ("a\nb", False)],
)  # fmt: skip
def test_link_names(name: str, ok: bool) -> None:
    assert (multicluster.check_link_name(name) is None) is ok
