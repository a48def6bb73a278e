"""The mesh as a Graphviz DOT graph (Kilo's ``Topology.Dot``).

Pure. No I/O, no clock, no logging. The text is byte-exact with what Kilo prints: Kilo
builds a ``gographviz`` v2.0.3 graph and writes it with ``Graph.String()``, so this module
keeps a tiny model of that library (nodes whose attributes merge when a name is added
twice, parent -> children relations, edges in insertion order) and its writer:

* every statement is ``"\\t" + stmt + ";\\n"``; the graph ends with ``"\\n}\\n"``;
* graph and subgraph attributes are sorted by name, then come all edges in insertion
  order, then the subgraphs sorted by their (quoted) ID, each with its children sorted by
  (quoted) name;
* a subgraph is itself a statement, so ``subgraph … {\\n … \\n}\\n`` is followed by a lone
  ``;`` line;
* an attribute list is ``[ k=v, k2=v2 ]`` (sorted); an edge has no space before it.

Kilo's quirks that are part of the output format are kept: a peer's label ends with a
real newline character, and the leader's endpoint is printed DNS-first.

Escaping: Kilo writes names and labels between double quotes without escaping them. Node
and peer names are Kubernetes names and endpoints are IPs or DNS names, so none of them
can contain ``"`` or ``\\``; the one free-form value is the location (the
``kilo.squat.ai/location`` annotation). Every interpolated value is therefore escaped
here (``\\`` -> ``\\\\``, ``"`` -> ``\\"``). For any value without those two characters,
i.e. always in practice, the output is identical to Kilo's; otherwise Kilo's output is
broken DOT (an unbalanced quote) or a Graphviz escape sequence the user never wrote.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kilo.mesh.endpoint import endpoint_string
from kilo.mesh.model import Peer
from kilo.mesh.topology import Segment, Topology

GRAPH_NAME = "kilo"
PEERS_SUBGRAPH = "cluster_peers"
SUBGRAPH_STYLE = '"dashed,rounded"'
_SEGMENT_EDGE = MappingProxyType({"dir": "both"})
_PEER_EDGE = MappingProxyType({"dir": "both", "style": "dashed"})
# Nodes of one location in a cross mesh: reached over the underlay, not WireGuard.
_PLAIN_EDGE = MappingProxyType(
    {"arrowhead": "none", "arrowtail": "none", "dir": "both", "style": "dotted"}
)
_NODE_ATTRS = MappingProxyType({"shape": "ellipse"})


def dot(t: Topology) -> str:
    """The DOT text of ``t``, ending with ``"\\n}\\n"`` (kgctl prints one more newline)."""
    return "".join(dot_chunks(t))


def dot_chunks(t: Topology) -> Iterator[str]:
    """:func:`dot`'s text in pieces, to be written as they come.

    A full mesh of N nodes has N(N-1)/2 leader-to-leader edges: 12.5 million lines, 500 MB
    of text at 5000 nodes, more than the rest of the graph by far. They are written one
    source leader at a time rather than held as edges and then as one string.

    ``t`` must be built from ready nodes: a segment member without a pod CIDR raises
    ``ValueError`` (Kilo would print ``<nil>``). The output
    does not depend on the perspective (``t.hostname``): the title is the Kilo subnet,
    which is what a leader's masked WireGuard CIDR and a non-leader's placeholder both are.
    """
    g = _Graph()
    g.attrs["label"] = _quote(str(t.wireguard_cidr.network))
    g.attrs["labelloc"] = "t"
    g.attrs["outputorder"] = "nodesfirst"
    g.attrs["overlap"] = "false"

    leaders: list[str] = []
    node_locations: list[str] = []  # per segment; "" unless the mesh is cross
    for segment in t.segments:
        # In a cross mesh (#328) each node is drawn inside its location, whose nodes are
        # linked by plain (dotted) edges below: they are not WireGuard peers.
        node_location = t.node_locations.get(segment.location, "")
        location = node_location or segment.location
        subgraph = _quote("cluster_location_" + location)
        g.add_subgraph(subgraph)
        g.subgraph_attrs[subgraph]["label"] = _quote(location)
        g.subgraph_attrs[subgraph]["style"] = SUBGRAPH_STYLE
        for j, label in enumerate(_node_labels(segment, location)):
            name = _quote(segment.hostnames[j])
            g.add_node(subgraph, name, _NODE_ATTRS)
            if j == segment.leader:
                g.nodes[name]["rank"] = "1"
            g.nodes[name]["label"] = label
        if not node_location:
            # Kilo indexes the sorted children with the leader's index into the hostnames,
            # which are sorted the same way (Kubernetes names sort alike with and without
            # quotes).
            members = g.sorted_children(subgraph)
            for i, member in enumerate(members):
                if i != segment.leader:
                    g.edges.append((members[segment.leader], member, _SEGMENT_EDGE))
        node_locations.append(node_location)
        leaders.append(_quote(segment.leader_name))

    seen: set[str] = set()
    for node_location in node_locations:
        if node_location and node_location not in seen:
            seen.add(node_location)
            members = g.sorted_children(_quote("cluster_location_" + node_location))
            for i, src in enumerate(members):
                for dst in members[i + 1 :]:
                    g.edges.append((src, dst, _PLAIN_EDGE))

    g.edge_runs.append(_leader_edges(leaders, node_locations))
    before_peers = len(g.edges)

    peers = _quote(PEERS_SUBGRAPH)
    g.add_subgraph(peers)
    g.subgraph_attrs[peers]["label"] = _quote("peers")
    g.subgraph_attrs[peers]["style"] = SUBGRAPH_STYLE
    for peer in t.peers:
        name = _quote(peer.name)
        g.add_node(peers, name, _NODE_ATTRS)
        # The real newline before the closing quote is Kilo's (peerLabel's "%s\\n%s\n").
        g.nodes[name]["label"] = _quote(
            _escape(peer.name) + "\\n" + _escape(endpoint_string(peer.endpoint)) + "\n",
            escaped=True,
        )
    for leader in leaders:
        for peer_name in g.sorted_children(peers):
            g.edges.append((leader, peer_name, _PEER_EDGE))

    return g.write(runs_at=[before_peers])


def _leader_edges(leaders: list[str], node_locations: list[str]) -> Iterator[str]:
    """The statements of the edges between every two leaders, in Kilo's order, in pieces;
    in a cross mesh none between two nodes of one location (``node_locations``: each
    leader's location there, empty otherwise)."""
    suffix = _attr_list(_SEGMENT_EDGE) + ";\n"
    count = len(leaders)
    for i, src in enumerate(leaders):
        prefix = "\t" + src + "->"
        here = node_locations[i]
        if not here:
            yield "".join([prefix + dst + suffix for dst in leaders[i + 1 :]])
            continue
        yield "".join(
            [prefix + leaders[j] + suffix for j in range(i + 1, count) if node_locations[j] != here]
        )


def _node_labels(segment: Segment, location: str) -> list[str]:
    """One label per member: location, name, pod CIDR, private IP; WG IP and endpoint if leader.

    ``location`` is the segment key, or in a cross mesh the node's location.

    Kilo takes the private IP by member index when the segment has any (``privateIPs[j]``);
    a segment always has either none or one per member (a node without an internal IP gets
    its own segment), and if that ever did not hold no private IP is shown rather than
    someone else's.
    """
    with_private = len(segment.private_ips) == len(segment.hostnames)
    labels: list[str] = []
    for j, (hostname, cidr) in enumerate(zip(segment.hostnames, segment.cidrs, strict=True)):
        parts = [location, hostname, str(cidr)]
        if with_private:
            parts.append(str(segment.private_ips[j]))
        if j == segment.leader:
            parts.append(str(segment.wireguard_ip))
            endpoint = endpoint_string(segment.endpoint)
            if endpoint:
                parts.append(endpoint)
        labels.append(_quote("\\n".join(_escape(p) for p in parts), escaped=True))
    return labels


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote(text: str, *, escaped: bool = False) -> str:
    """Kilo's ``graphEscape``: wrap in double quotes (escaping, see the module docstring)."""
    return '"' + (text if escaped else _escape(text)) + '"'


_Attrs = dict[str, str]
_Edge = tuple[str, str, Mapping[str, str]]


@dataclass
class _Graph:
    """The part of a gographviz ``Graph`` that Kilo uses, with its writer."""

    attrs: _Attrs = field(default_factory=dict)
    subgraph_attrs: dict[str, _Attrs] = field(default_factory=dict)
    nodes: dict[str, _Attrs] = field(default_factory=dict)
    children: dict[str, set[str]] = field(default_factory=dict)
    edges: list[_Edge] = field(default_factory=list)
    # Edge statements written as they are generated (see dot_chunks); ``write`` puts the
    # i-th run after the first ``runs_at[i]`` edges.
    edge_runs: list[Iterator[str]] = field(default_factory=list)

    def add_subgraph(self, name: str) -> None:
        self.children.setdefault(GRAPH_NAME, set()).add(name)
        self.subgraph_attrs.setdefault(name, {})
        self.children.setdefault(name, set())

    def add_node(self, parent: str, name: str, attrs: Mapping[str, str]) -> None:
        # gographviz merges the attributes of a node added twice (a peer named like a node).
        self.nodes.setdefault(name, {}).update(attrs)
        self.children.setdefault(parent, set()).add(name)

    def sorted_children(self, parent: str) -> list[str]:
        return sorted(self.children.get(parent, ()))

    def write(self, *, runs_at: list[int]) -> Iterator[str]:
        yield "digraph " + GRAPH_NAME + " {\n"
        yield _stmt_list([f"{k}={v}" for k, v in sorted(self.attrs.items())])
        start = 0
        ends = [*runs_at, len(self.edges)]
        for end, run in zip(ends, [*self.edge_runs, iter(())], strict=True):
            yield _stmt_list([f"{s}->{d}{_attr_list(a)}" for s, d, a in self.edges[start:end]])
            yield from run
            start = end
        root = self.children.get(GRAPH_NAME, set())
        subgraphs = [self._subgraph(name) for name in sorted(self.subgraph_attrs) if name in root]
        yield _stmt_list(subgraphs)
        # gographviz then writes the nodes outside any subgraph; Kilo has none.
        yield "\n}\n"

    def _subgraph(self, name: str) -> str:
        stmts = [f"{k}={v}" for k, v in sorted(self.subgraph_attrs[name].items())]
        # Every Kilo node has attributes, so no statement needs gographviz's trimming.
        stmts.extend(
            f"{child} {_attr_list(self.nodes[child])}" for child in self.sorted_children(name)
        )
        return "subgraph " + name + " {\n" + _stmt_list(stmts) + "\n}\n"


def _attr_list(attrs: Mapping[str, str]) -> str:
    return "[ " + ", ".join(f"{k}={v}" for k, v in sorted(attrs.items())) + " ]"


def _stmt_list(stmts: list[str]) -> str:
    return "".join("\t" + s + ";\n" for s in stmts)


# --- two clusters and the link between them (kgctl graph --remote-kubeconfig) --------------------

_LINK_EDGE = MappingProxyType({"dir": "both", "style": "bold", "color": "blue"})
# A Peer in one cluster only: the link has not caught up (or is gone).
_HALF_LINK_EDGE = MappingProxyType({"dir": "forward", "style": "dashed", "color": "red"})


def linked_dot(local: Topology, remote: Topology, *, link: str, titles: tuple[str, str]) -> str:
    """Both clusters, each drawn as :func:`dot` draws one, side by side in a box of its own,
    and the link between their leaders.

    Kilo has no such view, so there is no format to match; the pieces are :func:`dot`'s. Node
    IDs are prefixed with the cluster's index (``1/aws-1``): two clusters may name nodes
    alike. A leader L of one cluster is joined to a leader M of the other by a bold blue edge
    when each cluster holds the other's mirror Peer (``<link>-M`` and ``<link>-L``, as
    :mod:`kilo.mesh.multicluster` names them), by a dashed red arrow from the cluster holding
    it when only one does. Those mirror Peers are drawn as the edges, not in the clusters'
    peers boxes; any other Peer (a stale mirror included) stays there.
    """
    sides = (local, remote)
    leaders = [{s.leader_name for s in t.segments} for t in sides]
    # mirrored[i]: the other cluster's leaders that cluster i holds a Peer of the link for.
    mirrored = [
        {p.name.removeprefix(f"{link}-") for p in t.peers if p.name.startswith(f"{link}-")}
        & leaders[1 - i]
        for i, t in enumerate(sides)
    ]
    stmts = [
        f"{k}={v}"
        for k, v in sorted(
            {
                "label": _quote(
                    f"{local.wireguard_cidr.network} + {remote.wireguard_cidr.network}"
                    f" (link {link})"
                ),
                "labelloc": "t",
                "outputorder": "nodesfirst",
                "overlap": "false",
            }.items()
        )
    ]
    boxes = []
    for i, t in enumerate(sides):
        prefix = f"{i + 1}/"
        own_peers = [p for p in t.peers if p.name.removeprefix(f"{link}-") not in mirrored[i]]
        edges, box = _cluster_box(t, prefix=prefix, title=titles[i], peers=own_peers)
        stmts.extend(edges)
        boxes.append(box)
    for a in sorted(leaders[0]):
        for b in sorted(leaders[1]):
            there, back = b in mirrored[0], a in mirrored[1]
            ends = (_quote(f"1/{a}"), _quote(f"2/{b}"))
            if there and back:
                stmts.append(f"{ends[0]}->{ends[1]}{_attr_list(_LINK_EDGE)}")
            elif there:  # only cluster 1 holds b's Peer: 1 -> 2
                stmts.append(f"{ends[0]}->{ends[1]}{_attr_list(_HALF_LINK_EDGE)}")
            elif back:
                stmts.append(f"{ends[1]}->{ends[0]}{_attr_list(_HALF_LINK_EDGE)}")
    stmts.extend(boxes)
    return "digraph " + GRAPH_NAME + " {\n" + _stmt_list(stmts) + "\n}\n"


def _cluster_box(
    t: Topology, *, prefix: str, title: str, peers: list[Peer]
) -> tuple[list[str], str]:
    """One cluster as a subgraph of its segments and Peers, with :func:`dot`'s labels and
    edges (IDs prefixed): (the edges, the subgraph statement)."""
    edges: list[str] = []
    # location -> its nodes' statements, in the order the segments come (one box each).
    boxes: dict[str, list[str]] = {}
    leaders: list[str] = []
    node_locations: list[str] = []  # per segment; "" unless the mesh is cross
    for segment in t.segments:
        # In a cross mesh each node is its own segment, drawn in its location's box as
        # :func:`dot` draws it: the nodes of one location are no WireGuard peers.
        node_location = t.node_locations.get(segment.location, "")
        location = node_location or segment.location
        members = [_quote(prefix + h) for h in segment.hostnames]
        boxes.setdefault(location, []).extend(
            f"{name} {_attr_list({**_NODE_ATTRS, 'label': label, **rank})}"
            for j, (name, label) in enumerate(
                zip(members, _node_labels(segment, location), strict=True)
            )
            for rank in [{"rank": "1"} if j == segment.leader else {}]
        )
        leader = members[segment.leader]
        edges.extend(f"{leader}->{m}{_attr_list(_SEGMENT_EDGE)}" for m in members if m != leader)
        leaders.append(leader)
        node_locations.append(node_location)
    inner = [
        _box(f"cluster_{prefix}location_{location}", location, nodes)
        for location, nodes in boxes.items()
    ]
    for i, src in enumerate(leaders):
        here = node_locations[i]
        for j in range(i + 1, len(leaders)):
            same = bool(here) and node_locations[j] == here
            edges.append(f"{src}->{leaders[j]}{_attr_list(_PLAIN_EDGE if same else _SEGMENT_EDGE)}")
    peer_nodes = []
    for peer in sorted(peers, key=lambda p: p.name):
        name = _quote(prefix + peer.name)
        label = _quote(
            _escape(peer.name) + "\\n" + _escape(endpoint_string(peer.endpoint)), escaped=True
        )
        peer_nodes.append(f"{name} {_attr_list({**_NODE_ATTRS, 'label': label})}")
        edges.extend(f"{leader}->{name}{_attr_list(_PEER_EDGE)}" for leader in leaders)
    if peer_nodes:
        inner.append(_box(f"cluster_{prefix}peers", "peers", peer_nodes))
    return edges, _box(f"cluster_{prefix}", title, inner)


def _box(name: str, label: str, stmts: list[str]) -> str:
    attrs = [f"label={_quote(label)}", f"style={SUBGRAPH_STYLE}"]
    return f"subgraph {_quote(name)} {{\n" + _stmt_list([*attrs, *stmts]) + "\n}\n"
