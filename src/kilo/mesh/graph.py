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

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kilo.mesh.endpoint import endpoint_string
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
    """The DOT text of ``t``, ending with ``"\\n}\\n"`` (kgctl prints one more newline).

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

    for i, src in enumerate(leaders):
        for j in range(i + 1, len(leaders)):
            if node_locations[i] and node_locations[i] == node_locations[j]:
                continue
            g.edges.append((src, leaders[j], _SEGMENT_EDGE))

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

    return g.write()


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

    def write(self) -> str:
        stmts = [f"{k}={v}" for k, v in sorted(self.attrs.items())]
        stmts.extend(f"{src}->{dst}{_attr_list(attrs)}" for src, dst, attrs in self.edges)
        root = self.children.get(GRAPH_NAME, set())
        stmts.extend(self._subgraph(name) for name in sorted(self.subgraph_attrs) if name in root)
        # gographviz then writes the nodes outside any subgraph; Kilo has none.
        return "digraph " + GRAPH_NAME + " {\n" + _stmt_list(stmts) + "\n}\n"

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
