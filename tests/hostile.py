"""Hostile Kubernetes objects: Hypothesis strategies for Nodes and Peers of any shape.

Every annotation, label, spec field and name may hold anything a careless or hostile user
(or a hand-written dump) can put there: the right thing, a near miss (IPv6, a mapped
address, a port out of range, a key of the wrong length), the wrong JSON type, unicode
(lone surrogates and control characters included), huge strings and deep nesting. Most
objects stay close to a working cluster so that the topology, the renderers and the plans
are really reached, not only the parsers.

``CORPUS`` holds the concrete cases of issue 11 and the worst examples the fuzz suite
shrank to; the regression tests and the end-to-end chaos test write them into a cluster.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kilo.mesh import translate as tr
from tests.strategies import key_for

_EXAMPLES = int(os.environ.get("KILO_FUZZ_EXAMPLES", "0") or 0)
# The fuzz suites' profile (tests marked ``fuzz``).
FUZZ = settings(
    max_examples=_EXAMPLES or 120,
    # CI explores the same examples on every run; `make fuzz` explores new ones each time.
    derandomize=not _EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# --- leaves -------------------------------------------------------------------------------

# Every code point, lone surrogates and control characters included (JSON can carry them
# as \ud800 escapes, YAML as "\ud800"); Kubernetes names and labels cannot, dumps can.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)

HUGE = ("x" * 100_000, "[" * 5000, "{" * 5000, '{"a":' * 3000, "," * 20_000, "1" * 5000)
huge_text = st.sampled_from(HUGE)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from((2**63, -(2**63) - 1, 10**30))
    # Built when drawn: Hypothesis' own repr of a 5000-digit literal would fail.
    | st.integers(4400, 5000).map(lambda digits: 10**digits)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def _nested(depth: int, kind: str) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


deep_values = st.sampled_from(
    (_nested(50, "list"), _nested(50, "dict"), _nested(3000, "list"), _nested(3000, "dict"))
)
anything = json_values | deep_values | huge_text | any_text

# --- addresses ----------------------------------------------------------------------------


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` four times in five, so that most objects still reach the topology."""
    return st.integers(0, 4).flatmap(lambda i: bad if i == 0 else good)


V4 = ("203.0.113.1", "198.51.100.7", "10.0.0.5", "192.168.1.2", "172.16.0.9", "100.64.0.1")
V6 = ("2001:db8::1", "fd00::5", "2001:db8:1::7")
EDGE = ("127.0.0.1", "0.0.0.0", "255.255.255.255", "::", "::1", "fe80::1")
MAPPED = ("::ffff:203.0.113.9", "::ffff:10.0.0.7")
ips = st.sampled_from(V4) | st.sampled_from(V6) | st.sampled_from(EDGE + MAPPED)
bad_ips = st.sampled_from(("", "1.2.3", "1.2.3.4.5", "256.0.0.1", "::g", "fe80::1%eth0", " "))
prefixes = st.sampled_from((24, 32, 16, 8, 64, 128, 0, 1, 31, 96, 120, 127))
bad_prefixes = st.sampled_from(("129", "999", "", "-1", "24 ", "0x10"))


@st.composite
def cidrs(draw: st.DrawFn) -> str:
    return f"{draw(ips)}/{draw(prefixes)}"


@st.composite
def bad_cidrs(draw: st.DrawFn) -> str:
    form = draw(st.integers(0, 3))
    if form == 0:
        return f"{draw(ips)}/{draw(bad_prefixes)}"
    if form == 1:
        return f"{draw(bad_ips)}/24"
    if form == 2:
        return draw(ips)  # no prefix
    return draw(any_text)


cidr_text = mostly(cidrs(), bad_cidrs())
good_ports = st.sampled_from((51820, 51821, 1, 65535))
bad_ports = st.sampled_from((0, 65536, -1, 99999))


@st.composite
def host_ports(draw: st.DrawFn) -> str:
    port = draw(good_ports)
    form = draw(st.integers(0, 3))
    if form == 0:
        return f"node-{draw(st.integers(0, 3))}.example.com:{port}"
    address = draw(ips)
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@st.composite
def bad_host_ports(draw: st.DrawFn) -> str:
    form = draw(st.integers(0, 4))
    if form == 0:
        return f"{draw(st.sampled_from(V4))}:{draw(bad_ports)}"
    if form == 1:
        return f"{draw(st.sampled_from(V6))}:51820"  # an IPv6 address without brackets
    if form == 2:
        return ":51820"
    if form == 3:
        return f"{'a' * 300}.example.com:51820"
    return draw(any_text)


KEYS = tuple(str(key_for(i)) for i in range(6))
ZERO = "A" * 43 + "="
bad_keys = st.sampled_from(
    (ZERO, "", "not-a-key", "A" * 44, KEYS[0][:-1], KEYS[0] + "AAAA", "\n".join(KEYS[0]))
)
keys = mostly(st.sampled_from(KEYS), bad_keys)

# --- annotations --------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value)
    except ValueError:  # an integer too long to format
        return "1" * 5000


@st.composite
def discovered(draw: st.DrawFn) -> str:
    entries: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        entries[key] = draw(
            st.none()
            | st.fixed_dictionaries(
                {"IP": ips, "Port": st.integers(1024, 1030), "Zone": st.just("")}
            )
        )
    return _dumps(entries)


@st.composite
def bad_discovered(draw: st.DrawFn) -> str:
    form = draw(st.integers(0, 3))
    if form == 0:
        entry = st.fixed_dictionaries(
            {"IP": ips | bad_ips, "Port": st.integers(-1, 70000), "Zone": any_text}
        )
        return _dumps({draw(st.sampled_from(KEYS)): draw(entry | json_values)})
    if form == 1:
        return _dumps(draw(json_values))
    if form == 2:
        return draw(huge_text)
    return draw(any_text)


ints = st.integers(min_value=0, max_value=30).map(str)
bad_ints = st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.sampled_from(
    ("", "abc", "1e3", "0x10", " 5", "+5", "-5", "65536", "1" * 5000)
)
LOCATIONS = ("aws", "gcp", "azure", "")
odd_locations = st.sampled_from(('q"uote', "back\\slash", "new\nline", "\x00", "é")) | any_text

ANNOTATION_VALUES: dict[str, st.SearchStrategy[str]] = {
    tr.KEY: keys,
    tr.ENDPOINT: mostly(host_ports(), bad_host_ports()),
    tr.FORCE_ENDPOINT: mostly(host_ports(), bad_host_ports()),
    tr.FORCE_EXTERNAL_IP: cidr_text,
    tr.INTERNAL_IP: cidr_text,
    tr.FORCE_INTERNAL_IP: cidr_text | st.sampled_from(("", "-")),
    tr.WIREGUARD_IP: mostly(st.sampled_from(("10.4.0.1/16", "10.4.0.2/16")), cidr_text),
    tr.CNI_COMPATIBILITY_IP: cidr_text,
    tr.LAST_SEEN: mostly(st.just(str(1_700_000_000)), bad_ints),
    tr.PERSISTENT_KEEPALIVE: mostly(ints, bad_ints),
    tr.DISCOVERED_ENDPOINTS: mostly(discovered(), bad_discovered()),
    tr.ALLOWED_LOCATION_IPS: mostly(
        st.lists(cidrs(), min_size=1, max_size=3).map(",".join),
        st.lists(cidr_text, max_size=4).map(",".join)
        | st.sampled_from(("0.0.0.0/0", "::/0,0.0.0.0/0", ",", "10.0.0.0/8, 10.1.0.0/16")),
    ),
    tr.GRANULARITY: mostly(
        st.sampled_from(("location", "full", "cross")), st.sampled_from(("", "Full")) | any_text
    ),
    tr.LEADER: mostly(st.sampled_from(("", "true")), st.just("false") | any_text),
    tr.LOCATION: mostly(st.sampled_from(LOCATIONS), odd_locations),
}
annotation_keys = st.sampled_from(sorted(ANNOTATION_VALUES))


@st.composite
def annotation_maps(draw: st.DrawFn) -> Any:
    """Mostly well-formed values; sometimes any JSON, huge or deeply nested (dumps can hold
    those; the API server only strings, which ``any_text`` and ``huge_text`` cover)."""
    if draw(st.integers(0, 40)) == 0:
        return draw(anything)  # not a map at all
    result: dict[Any, Any] = {}
    for key in draw(st.lists(annotation_keys, max_size=8, unique=True)):
        choice = draw(st.integers(0, 30))
        if choice == 0:
            result[key] = draw(anything)
        elif choice == 1:
            result[key] = draw(huge_text)
        else:
            result[key] = draw(ANNOTATION_VALUES[key])
    if draw(st.integers(0, 20)) == 0:
        result[draw(st.integers() | st.booleans() | any_text)] = draw(anything)
    return result


names = st.sampled_from(tuple(f"n{i}" for i in range(6)))
odd_names = st.sampled_from(("", None, 5, ["n0"], "N-Upper", "n" * 300, "é")) | any_text


@st.composite
def node_objects(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 60)) == 0:
        return draw(anything)
    index = draw(st.integers(0, 5))
    name = draw(names) if draw(st.integers(0, 20)) else draw(odd_names)
    notes = draw(annotation_maps())
    if isinstance(notes, dict) and draw(st.integers(0, 5)):
        # Usually enough for a ready node, so that topologies are really built.
        notes.setdefault(tr.KEY, KEYS[index])
        address = draw(st.sampled_from((f"203.0.113.{index + 1}", f"10.1.0.{index + 1}")))
        notes.setdefault(tr.ENDPOINT, f"{address}:51820")
        notes.setdefault(tr.INTERNAL_IP, f"10.0.0.{index + 1}/24")
    labels: Any = {"topology.kubernetes.io/region": draw(st.sampled_from(LOCATIONS))}
    if draw(st.integers(0, 20)) == 0:
        labels = draw(anything)
    pod_cidr: Any = draw(
        mostly(
            st.sampled_from((f"10.42.{index}.0/24", f"fd00:42:{index}::/64")),
            st.sampled_from(("10.42.0.0/16", "10.42.0.1/32", "0.0.0.0/0")) | cidr_text | anything,
        )
    )
    spec: Any = {"podCIDR": pod_cidr}
    if draw(st.integers(0, 30)) == 0:
        spec = draw(anything)
    metadata: Any = {"name": name, "annotations": notes, "labels": labels}
    if draw(st.integers(0, 40)) == 0:
        metadata = draw(anything)
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": spec}


@st.composite
def peer_specs(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 40)) == 0:
        return draw(anything)
    spec: dict[str, Any] = {}
    spec["allowedIPs"] = draw(
        mostly(
            st.lists(
                st.builds(lambda i: f"10.5.0.{i}/32", st.integers(0, 9)) | cidrs(),
                min_size=1,
                max_size=3,
            ),
            st.lists(cidr_text | anything, max_size=3) | anything,
        )
    )
    spec["publicKey"] = draw(mostly(st.sampled_from(KEYS[3:]), keys | anything))
    if draw(st.booleans()):
        spec["persistentKeepalive"] = draw(
            mostly(
                st.sampled_from((0, 10, 25)),
                st.sampled_from((-1, 65535, 65536, 10**12, 2**63, True, 1.5, "10"))
                | st.integers(4400, 5000).map(lambda digits: 10**digits),
            )
        )
    if draw(st.booleans()):
        spec["presharedKey"] = draw(mostly(st.sampled_from(KEYS), keys | anything))
    if draw(st.booleans()):
        dns_or_ip: Any = {}
        if draw(st.booleans()):
            dns_or_ip["ip"] = draw(mostly(ips, bad_ips | anything))
        else:
            dns_or_ip["dns"] = draw(
                mostly(
                    st.just("peer.example.com"),
                    st.sampled_from(("Bad_Name", "a" * 300, "")) | anything,
                )
            )
        spec["endpoint"] = {"dnsOrIP": dns_or_ip, "port": draw(mostly(good_ports, bad_ports))}
        if draw(st.integers(0, 10)) == 0:
            spec["endpoint"] = draw(anything)
    return spec


@st.composite
def peer_objects(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 60)) == 0:
        return draw(anything)
    name: Any = draw(st.sampled_from(("p0", "p1", "p2")))
    if draw(st.integers(0, 20)) == 0:
        name = draw(odd_names)
    return {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": draw(peer_specs()),
    }


clusters = st.tuples(
    st.lists(node_objects(), min_size=1, max_size=6), st.lists(peer_objects(), max_size=3)
)

# --- the corpus: concrete hostile objects -------------------------------------------------


def node(name: str, index: int, **annotations: str) -> dict[str, Any]:
    """A ready node with these extra (hostile) annotations, out of the way of real ones.

    Its pod CIDR (10.99.<index>.0/24), endpoint (198.51.100.<index + 1>) and key are its
    own, and without an internal IP it is a segment of its own (``node:<name>``), which
    sorts after every ``location:`` segment: adding it shifts no real segment's WireGuard
    IP. So in a live mesh it may cost only itself.
    """
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                tr.KEY: str(key_for(100 + index)),
                tr.ENDPOINT: f"198.51.100.{index + 1}:51820",
                tr.LAST_SEEN: str(2**62),
                **{tr.PREFIX + k.replace("_", "-"): v for k, v in annotations.items()},
            },
            "labels": {"topology.kubernetes.io/region": "zzz-hostile"},
        },
        "spec": {"podCIDR": f"10.99.{index}.0/24"},
    }


def peer(name: str, spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": spec,
    }


# Nodes and Peers that the API server accepts (annotations are strings, names are valid),
# each with the problem that issue 11 found or the fuzz suite shrank to; the end-to-end
# chaos test writes them into a live cluster.
CORPUS_NODES: tuple[dict[str, Any], ...] = (
    # RecursionError in the JSON decoder took down every agent and every kgctl command.
    node("hostile-discovered", 0, discovered_endpoints="[" * 1000),
    node("hostile-discovered-deep", 1, discovered_endpoints='{"a":' * 3000 + "1" + "}" * 3000),
    # Echoed in full in every warning.
    node("hostile-huge-location", 2, location="z" * 200_000),
    node("hostile-huge-alip", 3, allowed_location_ips="," * 100_000),
    node("hostile-keepalive", 4, persistent_keepalive="1" * 5000),
    node("hostile-unicode", 5, location="\u202eevil\x1b[31mred\x00", leader="false"),
    node("hostile-wireguard-ip", 6, wireguard_ip="0.0.0.0/0", cni_compatibility_ip="::/0"),
    node("hostile-key", 7, key="A" * 43 + "=" + "\n" * 1000),
    node(
        "hostile-endpoint",
        8,
        force_endpoint="[::ffff:10.0.0.1]:0",
        endpoint="x" * 10_000 + ":51820",
        force_internal_ip="::ffff:203.0.113.1/0",
    ),
    node("hostile-last-seen", 9, last_seen="-" + "9" * 30, granularity="cross"),
)
CORPUS_PEERS: tuple[dict[str, Any], ...] = (
    # Silently clamped to 65535.
    peer(
        "hostile-keepalive",
        {"allowedIPs": ["10.98.0.1/32"], "publicKey": KEYS[5], "persistentKeepalive": 10**12},
    ),
    # A 5 MB CIDR was echoed twice in full by the webhook (the API server takes 3 MiB).
    peer("hostile-cidr", {"allowedIPs": ["9" * 1_000_000], "publicKey": KEYS[5]}),
    peer("hostile-key", {"allowedIPs": ["10.98.0.2/32"], "publicKey": "=" * 100_000}),
    peer(
        "hostile-endpoint",
        {
            "allowedIPs": ["10.98.0.3/32"],
            "publicKey": KEYS[4],
            "endpoint": {"dnsOrIP": {"dns": "a" * 300}, "port": 70000},
        },
    ),
)


def as_api_object(obj: Any, name: str) -> dict[str, Any] | None:
    """``obj`` as the API server could hold it, named ``name``; ``None`` when it cannot.

    A Node's annotations and labels are maps of strings and its spec is typed; a Peer's
    spec can be any JSON when its CRD has no schema (Kilo's own CRD has none).
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        return None
    metadata = dict(obj["metadata"])
    metadata["name"] = name
    metadata["resourceVersion"] = "1"
    for field in ("annotations", "labels"):
        value = metadata.get(field)
        strings = value if isinstance(value, dict) else {}
        metadata[field] = {
            k: v for k, v in strings.items() if isinstance(k, str) and isinstance(v, str)
        }
    result = {**obj, "metadata": metadata}
    if obj.get("kind") == "Node":
        spec = obj.get("spec")
        pod_cidr = spec.get("podCIDR") if isinstance(spec, dict) else None
        result["spec"] = {"podCIDR": pod_cidr} if isinstance(pod_cidr, str) else {}
    return result
