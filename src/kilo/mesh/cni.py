"""The CNI conflist: which pod CIDR it hands out, and the text that makes it hand out ours.

Pure: functions over the file's text. Reading the file, writing it (mode 0644) and
deciding when to do so (startup and every resync, only with ``--cni``; Kilo never creates
the file) belong to an adapter.

Two readings of the file exist in Kilo and both are reproduced:

* :func:`current_cidr` is what Kilo reads through libcni and the host-local IPAM loader:
  the subnet of the first range of the first plugin whose ``ipam.type`` is not empty.
  Anything that makes those libraries fail gives ``None`` (Kilo logs a warning and then
  rewrites the file).
* :func:`rewrite` is Kilo's ``setCIDRInCNI``: the file is decoded as generic JSON,
  every plugin with an ``ipam`` key gets ``ipam.ranges = [[{"subnet": <pod CIDR>}]]``,
  and the result is re-encoded as Go's ``encoding/json`` would: compact, object keys
  sorted, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, and every number decoded to a
  float64 and printed as Go prints it (see :mod:`kilo.mesh.gojson`).

Validation in :func:`current_cidr` follows libcni v1.3.0 and host-local v1.1.1 (the
versions Kilo vendors): the list's ``name``/``cniVersion``/``plugins``/boolean flags
(exact keys), each plugin's ``type`` and field types, and the IPAM config (struct fields
matched case-insensitively as Go does): the old single-range form, ``runtimeConfig``
ranges, ``subnet``/``rangeStart``/``rangeEnd``/``gateway``, host bits, size, families,
overlaps, the one-range-per-family limit before CNI 0.3.0, route ``dst``/``gw``. It does not
validate ``cniVersions``, ``dns``, ``args``, ``prevResult`` or the integer route fields
(numbers are all floats here), and it never loads plugin files from the directory, since
Kilo's shipped conflist inlines its plugins.
"""

from __future__ import annotations

import re
from typing import Any

from kilo.errors import KiloError
from kilo.mesh import gojson
from kilo.mesh import ip as ipmod
from kilo.mesh.ip import IPAddress, IPNetwork


class CNIConfigError(KiloError, ValueError):
    """The CNI conflist cannot be rewritten; nothing must be written."""


# --- Reading the current CIDR (libcni + host-local IPAM) ------------------------------------


class _Invalid(Exception):
    """The conflist does not load through libcni/host-local; the current CIDR is unknown."""


def current_cidr(conflist_text: str) -> IPNetwork | None:
    """The subnet of the first IPAM range of the first plugin with a non-empty ``ipam.type``.

    ``None`` when the text is not a loadable conflist, when no plugin has an IPAM type,
    or when that plugin's IPAM config is invalid or has no ranges (Kilo logs these).
    """
    try:
        return _current_cidr(conflist_text)
    except _Invalid:
        return None


def _current_cidr(text: str) -> IPNetwork | None:
    try:
        raw = gojson.loads(text)
    except ValueError as exc:
        raise _Invalid(str(exc)) from exc
    if not isinstance(raw, dict):
        raise _Invalid("not a JSON object")
    # libcni reads the list as a map: its keys match exactly.
    if not isinstance(raw.get("name"), str):
        raise _Invalid("no name")
    if "cniVersion" in raw and not isinstance(raw["cniVersion"], str):
        raise _Invalid("invalid cniVersion type")
    for flag in ("disableCheck", "disableGC", "loadOnlyInlinedPlugins"):
        value = raw.get(flag, False)
        if not isinstance(value, bool) and (
            not isinstance(value, str) or value.lower() not in ("true", "false")
        ):
            raise _Invalid(f"invalid {flag}")
    plugins = raw.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise _Invalid("no plugins")
    for plugin in plugins:
        _check_plugin(plugin)
    for plugin in plugins:
        ipam = _field(plugin, "ipam")
        if isinstance(ipam, dict) and _field(ipam, "type"):
            return _first_subnet(plugin)
    return None


def _has(obj: dict[str, Any], name: str) -> bool:
    folded = name.casefold()
    return any(key.casefold() == folded for key in obj)


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...] = object) -> Any:
    """A struct field as Go decodes it: the key matches case-insensitively, the last wins.

    libcni hands each plugin to the decoder re-encoded from a map, so "last" is in
    sorted key order. Null (or absence) gives ``None``; any other value must be of ``kind``.
    """
    folded = name.casefold()
    value = None
    for key in sorted(obj):
        if key.casefold() == folded:
            value = obj[key]
    if value is not None and not isinstance(value, kind):
        raise _Invalid(f"invalid type for {name}")
    return value


def _check_plugin(plugin: object) -> None:
    """libcni's ``ConfFromBytes``: a plugin decodes into ``PluginConf`` and has a type."""
    if not isinstance(plugin, dict):
        raise _Invalid("a plugin is not an object")
    if not _field(plugin, "type", str):
        raise _Invalid("missing 'type'")
    _field(plugin, "name", str)
    _field(plugin, "cniVersion", str)
    capabilities = _field(plugin, "capabilities", dict)
    if capabilities is not None and not all(
        v is None or isinstance(v, bool) for v in capabilities.values()
    ):
        raise _Invalid("invalid capabilities")
    ipam = _field(plugin, "ipam", dict)
    if ipam is not None:
        _field(ipam, "type", str)


class _Range:
    """A host-local ``Range`` after ``Canonicalize``."""

    def __init__(self, obj: object) -> None:
        if not isinstance(obj, dict):
            raise _Invalid("a range is not an object")
        subnet_text = _field(obj, "subnet", str)
        if subnet_text is None:
            raise _Invalid("IP <nil> not v4 nor v6")
        subnet = _parse_subnet(subnet_text)
        if subnet.prefixlen > subnet.max_prefixlen - 2:
            raise _Invalid(f"Network {subnet} too small to allocate from")
        self.subnet = subnet
        _range_ip(obj, "gateway")
        self.start = _range_ip(obj, "rangeStart")
        self.end = _range_ip(obj, "rangeEnd")
        if self.start is not None and not self.contains(self.start):
            raise _Invalid(f"RangeStart {self.start} not in network {subnet}")
        if self.end is not None and not self.contains(self.end):
            raise _Invalid(f"RangeEnd {self.end} not in network {subnet}")
        network = int(subnet.network_address)
        family = type(subnet.network_address)
        if self.start is None:
            self.start = family(network + 1)
        if self.end is None:
            last = int(subnet.broadcast_address)
            self.end = family(last - 1 if subnet.version == 4 else last)

    def contains(self, address: IPAddress) -> bool:
        if address.version != self.subnet.version or address not in self.subnet:
            return False
        # The family is checked above, so the integer values compare like the addresses.
        if self.start is not None and int(address) < int(self.start):
            return False
        return not (self.end is not None and int(address) > int(self.end))

    def overlaps(self, other: _Range) -> bool:
        if self.subnet.version != other.subnet.version:
            return False
        assert self.start is not None and self.end is not None
        assert other.start is not None and other.end is not None
        return (
            self.contains(other.start)
            or self.contains(other.end)
            or other.contains(self.start)
            or other.contains(self.end)
        )


def _parse_subnet(text: str) -> IPNetwork:
    iface = ipmod.parse_interface(text)
    if iface is None:
        raise _Invalid(f"invalid CIDR address: {text}")
    if iface.version == 4 and ":" in text:
        # An IPv4-mapped IPv6 CIDR keeps a 16-byte mask in Go: "IP and Mask version mismatch".
        raise _Invalid("IPNet IP and Mask version mismatch")
    if iface.ip != iface.network.network_address:
        raise _Invalid(f"Network has host bits set: {text}")
    return iface.network


def _range_ip(obj: dict[str, Any], key: str) -> IPAddress | None:
    text = _field(obj, key, str)
    if not text:
        return None  # Go's net.IP reads "" as nil
    address = ipmod.parse_ip(text)
    if address is None:
        raise _Invalid(f"invalid IP address: {text}")
    return address


def _check_routes(routes: list[Any] | None) -> None:
    for route in routes or ():
        if route is None:
            continue
        if not isinstance(route, dict):
            raise _Invalid("a route is not an object")
        if _has(route, "dst"):
            dst = _field(route, "dst", str)
            if dst is None or ipmod.parse_interface(dst) is None:
                raise _Invalid(f"invalid route destination {dst!r}")
        _range_ip(route, "gw")


def _range_sets(value: object) -> list[list[_Range]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid("ranges is not a list")
    sets: list[list[_Range]] = []
    for range_set in value:
        ranges = [] if range_set is None else range_set
        if not isinstance(ranges, list):
            raise _Invalid("a range set is not a list")
        sets.append([_Range(r) for r in ranges])
    return sets


def _first_subnet(plugin: dict[str, Any]) -> IPNetwork:
    """host-local's ``LoadIPAMConfig`` on one plugin: the first range's subnet."""
    ipam: dict[str, Any] = _field(plugin, "ipam")
    _field(plugin, "name", str)
    for key in ("dataDir", "resolvConf"):
        _field(ipam, key, str)
    _check_routes(_field(ipam, "routes", list))
    sets = _range_sets(_field(ipam, "ranges"))
    if _has(ipam, "subnet"):
        sets.insert(0, [_Range(ipam)])  # the old single-range form comes first
    else:
        for key in ("gateway", "rangeStart", "rangeEnd"):
            _range_ip(ipam, key)
    runtime_config = _field(plugin, "runtimeConfig", dict)
    if runtime_config is not None:
        sets[:0] = _range_sets(_field(runtime_config, "ipRanges"))
    if not sets:
        raise _Invalid("no IP ranges specified")
    v4 = v6 = 0
    for index, range_set in enumerate(sets):
        if not range_set:
            raise _Invalid(f"invalid range set {index}: empty range set")
        families = {r.subnet.version for r in range_set}
        if len(families) > 1:
            raise _Invalid(f"invalid range set {index}: mixed address families")
        for i, first in enumerate(range_set):
            if any(first.overlaps(second) for second in range_set[i + 1 :]):
                raise _Invalid(f"invalid range set {index}: subnets overlap")
        if range_set[0].subnet.version == 4:
            v4 += 1
        else:
            v6 += 1
    if (v4 > 1 or v6 > 1) and not _version_at_least(_field(plugin, "cniVersion"), (0, 3, 0)):
        raise _Invalid("CNI version does not support more than 1 address per family")
    for i, first_set in enumerate(sets):
        for second_set in sets[i + 1 :]:
            if any(a.overlaps(b) for a in first_set for b in second_set):
                raise _Invalid("range sets overlap")
    return sets[0][0].subnet


_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def _version_at_least(text: object, wanted: tuple[int, int, int]) -> bool:
    match = _VERSION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return False  # Go fails to parse the version and treats the answer as "no"
    major, minor, patch = (int(g) for g in match.groups())
    return (major, minor, patch) >= wanted


# --- Rewriting ------------------------------------------------------------------------------


def set_cidr(conflist_text: str, pod_cidr: IPNetwork) -> str:
    """Kilo's ``setCIDRInCNI``: the conflist with every plugin's IPAM set to ``pod_cidr``.

    Raises :class:`CNIConfigError` when the text is not JSON, ``plugins`` is missing or
    not a list, a plugin or an ``ipam`` value is not an object, or no plugin has ``ipam``.
    """
    try:
        raw = gojson.loads(conflist_text)
    except ValueError as exc:
        raise CNIConfigError(f"failed to parse CNI config file: {exc}") from exc
    if not isinstance(raw, dict):
        raise CNIConfigError("failed to parse CNI config file: it is not a JSON object")
    if "plugins" not in raw:
        raise CNIConfigError("failed to find plugins in CNI config file")
    plugins = raw["plugins"]
    if not isinstance(plugins, list):
        raise CNIConfigError("failed to parse plugins in CNI config file: it is not a list")
    found = False
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise CNIConfigError(
                f"failed to parse plugin {index} in CNI config file: it is not an object"
            )
        if "ipam" not in plugin:
            continue
        ipam = plugin["ipam"]
        if not isinstance(ipam, dict):
            raise CNIConfigError(
                f"failed to parse IPAM configuration of plugin {index} in CNI config file: "
                "it is not an object"
            )
        ipam["ranges"] = [[{"subnet": str(pod_cidr)}]]
        found = True
    if not found:
        raise CNIConfigError(
            "failed to set subnet CIDR in CNI config file; file appears invalid: "
            "no plugin has an ipam section"
        )
    return gojson.dumps(raw)


def rewrite(conflist_text: str, pod_cidr: IPNetwork) -> str | None:
    """The new conflist text, or ``None`` when it already hands out ``pod_cidr``.

    The current CIDR is read as :func:`current_cidr` does; when it is unknown or
    different, the result of :func:`set_cidr` is returned (and its errors raised).
    """
    if current_cidr(conflist_text) == pod_cidr:
        return None
    return set_cidr(conflist_text, pod_cidr)


__all__ = [
    "CNIConfigError",
    "current_cidr",
    "rewrite",
    "set_cidr",
]
