"""``kg``'s settings, as values, and the start-up checks that make them from flag values.

Pure apart from the ``hostname_fallback`` the caller passes in and ``/etc/services``, read
for a service name in a listen address. The flags are read by :mod:`kilo.agent.command_line`;
here the checks of Kilo's start-up run in Kilo's order with Kilo's messages (reference
§3.3), so that, for example, a bad ``--log-level`` is reported before ``--version`` is
honoured. Deliberate differences are listed in ``docs/compatibility.md``: ``port must be``
instead of Kilo's ``port mus be``; an unknown ``--compatibility`` is an error instead of
silently meaning IPIP; and after all of Kilo's checks come checks Kilo does not make, so
that every flag is refused here rather than after the agent has created its key and
interface or, worse, silently breaks it: the host name must be able to name a Node,
``--master`` must be an http(s) URL, ``--mtu`` within 68..65535 (1280.. with an IPv6
subnet), ``--interface`` a name the kernel accepts, ``--topology-label`` a label key,
``--cni-path`` non-empty with ``--cni``, and ``--listen`` (last, as in Kilo) an address
:mod:`kilo.agent.listen` can bind. Building the Kubernetes client config (Kilo's step 7,
``failed to create Kubernetes config``) reads files and is left to the caller.

A value that is refused raises :class:`~kilo.agent.cobra.CommandLineError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TypeVar

from kilo.agent import listen
from kilo.agent.cobra import CommandLineError, FlagValue
from kilo.mesh import flags, ip, leadership
from kilo.mesh.endpoint import is_dns1123_subdomain
from kilo.mesh.gosyntax import go_quote, parse_uint32
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import (
    DEFAULT_CNI_PATH,
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    DEFAULT_SUBNET,
    DEFAULT_TOPOLOGY_LABEL,
    Compatibility,
    Encapsulation,
    Granularity,
)

PROG = "kg"
BACKEND_KUBERNETES = "kubernetes"
DEFAULT_LISTEN = ":1107"
DEFAULT_RESYNC_PERIOD = "30s"
DEFAULT_WEBHOOK_LISTEN = ":8443"
DEFAULT_WEBHOOK_LISTEN_METRICS = ":1107"
MTU_AUTO = "auto"
LEADER_ELECTION_LEASE = leadership.MODE

_NS_PER_SECOND = 1_000_000_000
_DEFAULT_SUBNET: IPNetwork = IPv4Network(DEFAULT_SUBNET)


class LogLevel(enum.StrEnum):
    """``--log-level``: which log lines are written."""

    ALL = "all"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"
    NONE = "none"


# What the error messages (and the help) list as possible values, as Kilo lists them.
LOG_LEVELS = ", ".join(level.value for level in LogLevel)
ENCAPSULATIONS = ", ".join(
    e.value for e in (Encapsulation.NEVER, Encapsulation.CROSSSUBNET, Encapsulation.ALWAYS)
)
# #328's list and order: "location, full, cross".
GRANULARITIES = ", ".join(
    g.value for g in (Granularity.LOCATION, Granularity.FULL, Granularity.CROSS)
)
COMPATIBILITIES = ", ".join(c.value for c in (Compatibility.FLANNEL, Compatibility.CILIUM))

# --- the settings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSettings:
    """Where the mesh is stored: ``--backend``, ``--kubeconfig``, ``--master``."""

    name: str = BACKEND_KUBERNETES
    kubeconfig: str = ""  # empty with an empty master: the in-cluster config
    master: str = ""  # the API server URL, overriding the kubeconfig's
    topology_label: str = DEFAULT_TOPOLOGY_LABEL


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshSettings:
    """How this node takes part in the mesh."""

    hostname: str  # the name of this node's Node object
    granularity: Granularity = Granularity.LOCATION
    subnet: IPNetwork = _DEFAULT_SUBNET
    port: int = DEFAULT_PORT
    local: bool = True
    encapsulation: Encapsulation = Encapsulation.ALWAYS
    compatibility: Compatibility = Compatibility.NONE
    service_cidrs: tuple[IPNetwork, ...] = ()
    internal_cidrs: tuple[IPNetwork, ...] = ()
    prioritise_private_addresses: bool = False
    # New (kilo.mesh.samenat): nodes behind this node's NAT are dialled at their internal IP.
    same_nat_internal_endpoints: bool = False
    iptables_forward_rules: bool = False
    resync_period: float = 30.0  # seconds (Kilo: a Go duration, any sign)
    clean_up: bool = True
    leader_election: str = ""  # "" (Kilo's rule) or "lease" (kilo.mesh.leadership)


@dataclass(frozen=True, slots=True, kw_only=True)
class WireGuardSettings:
    """The WireGuard interface."""

    interface: str = DEFAULT_INTERFACE
    create_interface: bool = True
    clean_up_interface: bool = False
    mtu: int | None = None  # None: auto (the default route's MTU - 80, else DEFAULT_MTU)


@dataclass(frozen=True, slots=True, kw_only=True)
class CNISettings:
    enabled: bool = True
    path: str = DEFAULT_CNI_PATH


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPSettings:
    listen: str = DEFAULT_LISTEN  # health, metrics and graph


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """Everything ``kg`` needs to run the agent, validated."""

    mesh: MeshSettings
    backend: BackendSettings = BackendSettings()
    wireguard: WireGuardSettings = WireGuardSettings()
    cni: CNISettings = CNISettings()
    http: HTTPSettings = HTTPSettings()
    log: LogSettings = LogSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    """``kg webhook``: the peer-validation admission webhook."""

    cert_file: str = ""
    key_file: str = ""
    listen: str = DEFAULT_WEBHOOK_LISTEN
    listen_metrics: str = DEFAULT_WEBHOOK_LISTEN_METRICS
    log: LogSettings = LogSettings()
    # Additions (Kilo's webhook reads nothing from the cluster): where to read Nodes and
    # Peers for the overlap checks, as for the agent.
    kubeconfig: str = ""
    master: str = ""


# --- the checks ------------------------------------------------------------------------------


def log_level(values: Mapping[str, FlagValue]) -> LogLevel:
    """``--log-level``, checked before anything else (cobra's pre-run)."""
    text = str(values["log-level"])
    try:
        return LogLevel(text)
    except ValueError:
        raise CommandLineError(
            f"log level {text} unknown; possible values are: {LOG_LEVELS}"
        ) from None


def _cidr(text: str) -> IPNetwork:
    network = ip.parse_network(text)
    if network is None:
        raise CommandLineError(
            f"failed to parse {go_quote(text)} as CIDR: invalid CIDR address: {text}"
        )
    return network


def _strings(value: FlagValue) -> list[str]:
    assert isinstance(value, list)
    return value


def _bool(value: FlagValue) -> bool:
    assert isinstance(value, bool)
    return value


def _int(value: FlagValue) -> int:
    assert isinstance(value, int) and not isinstance(value, bool)
    return value


E = TypeVar("E", Encapsulation, Compatibility, Granularity)


def _choice(kind: type[E], value: FlagValue, what: str, possible: str) -> E:
    text = str(value)
    try:
        return kind(text)
    except ValueError:
        raise CommandLineError(f"{what} {text} unknown; possible values are: {possible}") from None


def webhook_settings(values: Mapping[str, FlagValue]) -> WebhookSettings:
    """``kg webhook``'s flags that can be checked before anything runs: the addresses, in
    the order the servers start (metrics first, as in Kilo), then ``--master``."""
    for flag in ("listen-metrics", "listen"):
        problem = listen.listen_error(str(values[flag]))
        if problem:
            raise CommandLineError(problem)
    master = _master(values)
    return WebhookSettings(
        cert_file=str(values["cert-file"]),
        key_file=str(values["key-file"]),
        listen=str(values["listen"]),
        listen_metrics=str(values["listen-metrics"]),
        log=LogSettings(level=log_level(values)),
        kubeconfig=str(values["kubeconfig"]),
        master=master,
    )


def _master(values: Mapping[str, FlagValue]) -> str:
    """``--master``, empty or a URL the API client can use.

    A bare ``host:port`` gets ``https://`` in front, as client-go completes it for Kilo
    (its ``DefaultServerURL`` picks https whenever TLS is configured, which it is for
    every API server an agent talks to).
    """
    master = str(values["master"])
    if not master:
        return master
    url = master if "://" in master else "https://" + master
    problem = flags.api_server_url_problem(url)
    if problem:
        raise CommandLineError(
            f"failed to create Kubernetes config: invalid --master {go_quote(master)}: {problem}"
        )
    return url


def agent_settings(
    values: Mapping[str, FlagValue], hostname_fallback: Callable[[], str | None]
) -> AgentSettings:
    """Kilo's start-up checks (reference §3.3), in Kilo's order; the caller has checked the
    log level and ``--version`` (steps 1 and 2)."""
    level = log_level(values)
    # 3. --subnet.
    subnet = _cidr(str(values["subnet"]))
    # 4. The host name.
    hostname = str(values["hostname"])
    if not hostname:
        # Lower-cased as the kubelet lower-cases it to name the Node (Kilo does not, and
        # never finds its Node on a host named "MyHost").
        hostname = (hostname_fallback() or "").strip().lower()
        if not hostname:
            raise CommandLineError("failed to determine hostname")
    # 5. --encapsulate.
    encapsulation = _choice(Encapsulation, values["encapsulate"], "encapsulation", ENCAPSULATIONS)
    # 5b. --compatibility, where Kilo picks the encapsulator. Kilo silently falls back to
    # IPIP for an unknown value; a typo would then change the data plane (deliberate fix).
    compatibility = _choice(
        Compatibility, values["compatibility"], "compatibility", COMPATIBILITIES
    )
    # 6. --mesh-granularity (no "auto" in kg).
    granularity = _choice(
        Granularity, values["mesh-granularity"], "mesh granularity", GRANULARITIES
    )
    # 7. --backend. (Building the Kubernetes client config is the caller's.)
    backend = str(values["backend"])
    if backend != BACKEND_KUBERNETES:
        raise CommandLineError(
            f"backend {backend} unknown; possible values are: {BACKEND_KUBERNETES}"
        )
    # 8. --port (Kilo's message says "mus be": deliberate fix).
    port = _int(values["port"])
    if not 1 <= port <= 65535:
        raise CommandLineError(f"invalid port: port must be in range [1:65535], but got {port}")
    # 9. --service-cidr, then --internal-cidr.
    service_cidrs = tuple(_cidr(text) for text in _strings(values["service-cidr"]))
    internal_cidrs = tuple(_cidr(text) for text in _strings(values["internal-cidr"]))
    # 10. --mtu: "auto" or an unsigned 32-bit integer.
    mtu_text = str(values["mtu"])
    mtu: int | None = None
    if mtu_text != MTU_AUTO:
        try:
            mtu = parse_uint32(mtu_text)
        except ValueError as exc:
            raise CommandLineError(f"failed to parse MTU {go_quote(mtu_text)}: {exc}") from None

    # Checks Kilo does not make (docs/compatibility.md), after all of Kilo's, so that a
    # command line Kilo refuses gets Kilo's message. Each refuses a value that would fail
    # only after the key and the interface exist, or would silently break the agent.
    # The host name must be able to name this node's Node object.
    if not is_dns1123_subdomain(hostname):
        given = "--hostname" if values["hostname"] else "the host name (--hostname is empty)"
        raise CommandLineError(
            f"invalid hostname {go_quote(hostname)}: {given} must be this node's Kubernetes "
            "name, a lower-case RFC 1123 subdomain (lower-case letters, digits, '-' and '.', "
            "at most 253 characters)"
        )
    # --master: a URL the API client can use (Kilo's client-go panics on some).
    master = _master(values)
    # --mtu: what a WireGuard interface can carry (Kilo takes any uint32; 0 or 100 breaks
    # the interface at the first apply).
    if mtu is not None:
        problem = flags.mtu_problem(mtu, ipv6=subnet.version == 6)
        if problem:
            raise CommandLineError(f"invalid MTU: {problem}")
    # --interface: a name the kernel accepts.
    interface = str(values["interface"])
    problem = flags.interface_name_problem(interface)
    if problem:
        raise CommandLineError(f"invalid interface name {go_quote(interface)}: {problem}")
    # --topology-label: empty (no label) or a label key some node could carry.
    topology_label = str(values["topology-label"])
    problem = topology_label and flags.label_key_problem(topology_label)
    if problem:
        raise CommandLineError(f"invalid topology label {go_quote(topology_label)}: {problem}")
    # --cni-path: the file to write when Kilo manages the CNI configuration.
    cni = _bool(values["cni"])
    cni_path = str(values["cni-path"])
    if cni and not cni_path.strip():
        raise CommandLineError(
            f"invalid CNI path {go_quote(cni_path)}: give the CNI configuration file to "
            "manage, or --cni=false"
        )
    # --leader-election: off, or the Lease failover.
    leader_election = str(values["leader-election"])
    if leader_election not in ("", LEADER_ELECTION_LEASE):
        raise CommandLineError(
            f"leader election {go_quote(leader_election)} unknown; possible values are: "
            f"{LEADER_ELECTION_LEASE} (or empty, Kilo's rule)"
        )
    # 12. --listen, last as in Kilo (the socket is bound before anything is created).
    listen_address = str(values["listen"])
    problem = listen.listen_error(listen_address)
    if problem:
        raise CommandLineError(problem)

    return AgentSettings(
        mesh=MeshSettings(
            hostname=hostname,
            granularity=granularity,
            subnet=subnet,
            port=port,
            local=_bool(values["local"]),
            encapsulation=encapsulation,
            compatibility=compatibility,
            service_cidrs=service_cidrs,
            internal_cidrs=internal_cidrs,
            prioritise_private_addresses=_bool(values["prioritise-private-addresses"]),
            same_nat_internal_endpoints=_bool(values["same-nat-internal-endpoints"]),
            iptables_forward_rules=_bool(values["iptables-forward-rules"]),
            resync_period=_int(values["resync-period"]) / _NS_PER_SECOND,
            clean_up=_bool(values["clean-up"]),
            leader_election=leader_election,
        ),
        backend=BackendSettings(
            name=backend,
            kubeconfig=str(values["kubeconfig"]),
            master=master,
            topology_label=topology_label,
        ),
        wireguard=WireGuardSettings(
            interface=interface,
            create_interface=_bool(values["create-interface"]),
            clean_up_interface=_bool(values["clean-up-interface"]),
            mtu=mtu,
        ),
        cni=CNISettings(enabled=cni, path=cni_path),
        http=HTTPSettings(listen=listen_address),
        log=LogSettings(level=level),
    )
