"""The ``kg`` command line: Kilo's flags, defaults and start-up validation, as values.

Pure apart from the ``hostname_fallback`` the caller passes in and ``/etc/services``, read
for a service name in a listen address. The command line is read
the way Kilo's Go binary reads it (cobra and pflag), so existing manifests keep working:

* long flags only (``-h`` is the one shorthand); ``--flag value`` and ``--flag=value``;
  the last occurrence of a flag wins;
* a bool flag is ``--flag`` or ``--flag=VALUE`` with Go's ``strconv.ParseBool`` syntax
  (``1 t T TRUE true True 0 f F FALSE false False``); ``--flag false`` leaves the flag true
  and makes ``false`` a positional argument, which the root command rejects as an unknown
  command;
* ``--service-cidr`` and ``--internal-cidr`` are repeatable and comma-separated;
* ``--port`` is a Go integer (``0x`` prefixes and ``_`` separators included) and
  ``--resync-period`` a Go duration (``30s``, ``1m30s``, ``500ms``).

Then the checks of Kilo's start-up run in Kilo's order with Kilo's messages (reference
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
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Literal, TypeVar

from kilo import __version__, completion
from kilo.agent import listen
from kilo.mesh import flags, ip
from kilo.mesh.endpoint import is_dns1123_subdomain
from kilo.mesh.gosyntax import (
    go_quote,
    parse_bool,
    parse_duration,
    parse_int,
    parse_uint32,
)
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import (
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    DEFAULT_SUBNET,
    DEFAULT_TOPOLOGY_LABEL,
    Compatibility,
    Encapsulation,
    Granularity,
)
from kilo.mesh.text import printable

PROG = "kg"
BACKEND_KUBERNETES = "kubernetes"
DEFAULT_CNI_PATH = "/etc/cni/net.d/10-kilo.conflist"
DEFAULT_LISTEN = ":1107"
DEFAULT_RESYNC_PERIOD = "30s"
DEFAULT_WEBHOOK_LISTEN = ":8443"
DEFAULT_WEBHOOK_LISTEN_METRICS = ":1107"
# What Kilo's --mtu=auto falls back to when the underlay's MTU cannot be detected.
DEFAULT_MTU = 1420
MTU_AUTO = "auto"

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
    iptables_forward_rules: bool = False
    resync_period: float = 30.0  # seconds (Kilo: a Go duration, any sign)
    clean_up: bool = True


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


# --- outcomes other than settings -------------------------------------------------------------


class CommandLineExit(Exception):
    """The command line ends ``kg`` before the agent runs."""


class SettingsError(CommandLineExit):
    """A command line Kilo rejects; ``str()`` is Kilo's one-line message (exit status 1).

    Kilo repeats some values as given (``log level %v unknown``); control characters in
    them are escaped, so that the message stays one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


class ShowText(CommandLineExit):
    """Help or the version was asked for: print ``text`` on stdout and exit 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class WebhookRequested(CommandLineExit):
    """``kg webhook`` with valid flags."""

    def __init__(self, settings: WebhookSettings) -> None:
        super().__init__("webhook")
        self.settings = settings


def _read_csv(text: str) -> list[str]:
    """pflag's string-slice syntax: one CSV record; an empty value is an empty list."""
    if text == "":
        return []
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise ValueError(str(exc)) from None


# --- flags and commands (cobra and pflag) ---------------------------------------------------

FlagKind = Literal["bool", "string", "int", "duration", "strings"]
FlagValue = bool | str | int | list[str]


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    kind: FlagKind
    default: FlagValue
    help: str
    shorthand: str = ""

    def convert(self, text: str) -> FlagValue:
        if self.kind == "bool":
            return parse_bool(text)
        if self.kind == "int":
            return parse_int(text)
        if self.kind == "duration":
            return parse_duration(text)
        if self.kind == "strings":
            return _read_csv(text)
        return text

    def shown_default(self) -> str:
        if isinstance(self.default, list):
            return "[" + ",".join(self.default) + "]" if self.default else ""
        if self.kind == "duration":
            return DEFAULT_RESYNC_PERIOD
        if self.kind == "string":
            return go_quote(str(self.default)) if self.default else ""
        if self.default is False:
            return ""
        return str(self.default).lower()


_LOG_LEVELS = ", ".join(level.value for level in LogLevel)
_ENCAPSULATIONS = ", ".join(
    e.value for e in (Encapsulation.NEVER, Encapsulation.CROSSSUBNET, Encapsulation.ALWAYS)
)
_GRANULARITIES = ", ".join(g.value for g in (Granularity.LOCATION, Granularity.FULL))
_COMPATIBILITIES = ", ".join(c.value for c in (Compatibility.FLANNEL, Compatibility.CILIUM))

PERSISTENT_FLAGS = (
    Flag("version", "bool", False, "Print version and exit."),
    Flag(
        "log-level",
        "string",
        LogLevel.INFO.value,
        f"Log level to use. Possible values: {_LOG_LEVELS}",
    ),
)

ROOT_FLAGS = (
    Flag(
        "backend",
        "string",
        BACKEND_KUBERNETES,
        "The backend for the mesh. Possible values: kubernetes",
    ),
    Flag("clean-up", "bool", True, "Should kilo clean up network modifications on shutdown?"),
    Flag(
        "clean-up-interface", "bool", False, "Should Kilo delete its interface when it shuts down?"
    ),
    Flag("create-interface", "bool", True, "Should kilo create an interface on startup?"),
    Flag("cni", "bool", True, "Should Kilo manage the node's CNI configuration?"),
    Flag("cni-path", "string", DEFAULT_CNI_PATH, "Path to CNI config."),
    Flag(
        "compatibility",
        "string",
        "",
        f"Should Kilo run in compatibility mode? Possible values: {_COMPATIBILITIES}",
    ),
    Flag(
        "encapsulate",
        "string",
        Encapsulation.ALWAYS.value,
        "When should Kilo encapsulate packets within a location? "
        f"Possible values: {_ENCAPSULATIONS}",
    ),
    Flag(
        "mesh-granularity",
        "string",
        Granularity.LOCATION.value,
        f"The granularity of the network mesh to create. Possible values: {_GRANULARITIES}",
    ),
    Flag("kubeconfig", "string", "", "Path to kubeconfig."),
    Flag("hostname", "string", "", "Hostname of the node on which this process is running."),
    Flag(
        "interface",
        "string",
        DEFAULT_INTERFACE,
        "Name of the Kilo interface to use; if it does not exist, it will be created.",
    ),
    Flag(
        "listen", "string", DEFAULT_LISTEN, "The address at which to listen for health and metrics."
    ),
    Flag("local", "bool", True, "Should Kilo manage routes within a location?"),
    Flag(
        "master",
        "string",
        "",
        "The address of the Kubernetes API server (overrides any value in kubeconfig).",
    ),
    Flag(
        "mtu",
        "string",
        MTU_AUTO,
        "The MTU of the WireGuard interface created by Kilo. "
        "Set to 'auto' to detect from the underlay interface.",
    ),
    Flag(
        "topology-label",
        "string",
        DEFAULT_TOPOLOGY_LABEL,
        "Kubernetes node label used to group nodes into logical locations.",
    ),
    Flag("port", "int", DEFAULT_PORT, "The port over which WireGuard peers should communicate."),
    Flag(
        "service-cidr",
        "strings",
        [],
        "The service CIDR for the Kubernetes cluster. Can be provided optionally to avoid "
        "masquerading packets sent to service IPs. Can be specified multiple times.",
    ),
    Flag(
        "internal-cidr",
        "strings",
        [],
        "CIDRs to consider for internal IP auto-detection. If specified, only IPs within "
        "these CIDRs will be used. Can be specified multiple times.",
    ),
    Flag(
        "subnet",
        "string",
        DEFAULT_SUBNET,
        "CIDR from which to allocate addresses for WireGuard interfaces.",
    ),
    Flag(
        "resync-period",
        "duration",
        parse_duration(DEFAULT_RESYNC_PERIOD),
        "How often should the Kilo controllers reconcile?",
    ),
    Flag(
        "iptables-forward-rules",
        "bool",
        False,
        "Add default accept rules to the FORWARD chain in iptables. Warning: this may break "
        "firewalls with a deny all policy and is potentially insecure!",
    ),
    Flag(
        "prioritise-private-addresses",
        "bool",
        False,
        "Prefer to assign a private IP address to the node's endpoint.",
    ),
)

WEBHOOK_FLAGS = (
    Flag("cert-file", "string", "", "The path to a certificate file"),
    Flag("key-file", "string", "", "The path to a key file"),
    Flag(
        "kubeconfig",
        "string",
        "",
        "Path to kubeconfig. Nodes and peers are read from the cluster to deny peers whose "
        "allowed IPs overlap other peers' allowed IPs or nodes' pod CIDRs.",
    ),
    Flag(
        "listen-metrics",
        "string",
        DEFAULT_WEBHOOK_LISTEN_METRICS,
        "The metrics server will be listening to that address",
    ),
    Flag(
        "listen",
        "string",
        DEFAULT_WEBHOOK_LISTEN,
        "The webhook server will be listening to that address",
    ),
    Flag(
        "master",
        "string",
        "",
        "The address of the Kubernetes API server (overrides any value in kubeconfig).",
    ),
)


@dataclass(frozen=True, slots=True)
class _Command:
    name: str
    short: str
    flags: tuple[Flag, ...]

    def all_flags(self) -> dict[str, Flag]:
        help_flag = Flag("help", "bool", False, f"help for {self.name}", shorthand="h")
        return {f.name: f for f in (*self.flags, *PERSISTENT_FLAGS, help_flag)}


_ROOT = _Command(PROG, "kg is the Kilo agent", ROOT_FLAGS)
_SUBCOMMANDS = {
    c.name: c
    for c in (
        _Command(
            "completion",
            "Generate the autocompletion script for the specified shell",
            (
                Flag(
                    completion.NO_DESCRIPTIONS_FLAG[2:],
                    "bool",
                    False,
                    "disable completion descriptions",
                ),
            ),
        ),
        _Command("help", "Help about any command", ()),
        _Command("version", "Print the version and exit.", ()),
        _Command(
            "webhook",
            "webhook starts a HTTPS server to validate updates and creations of Kilo peers.",
            WEBHOOK_FLAGS,
        ),
    )
}


def _takes_value(arg: str, flags: Mapping[str, Flag]) -> bool:
    """Whether cobra thinks the flag ``arg`` (no ``=``) consumes the next argument."""
    if arg.startswith("--"):
        flag = flags.get(arg[2:])
    elif len(arg) == 2:
        flag = next((f for f in flags.values() if f.shorthand == arg[1]), None)
    else:
        return False
    return flag is None or flag.kind != "bool"


def _strip_flags(args: Sequence[str], flags: Mapping[str, Flag]) -> list[str]:
    """cobra's ``stripFlags``: the arguments that are neither flags nor flag values."""
    commands: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            break
        if arg.startswith("-") and "=" not in arg and _takes_value(arg, flags):
            if len(rest) <= 1:
                break
            rest.pop(0)
        elif arg and not arg.startswith("-"):
            commands.append(arg)
    return commands


def _without_first(args: Sequence[str], name: str, flags: Mapping[str, Flag]) -> list[str]:
    """cobra's ``argsMinusFirstX``: ``args`` without the subcommand's name."""
    position = 0
    while position < len(args):
        arg = args[position]
        if arg == "--":
            break
        if arg.startswith("-") and "=" not in arg and _takes_value(arg, flags):
            position += 2
            continue
        if not arg.startswith("-") and arg == name:
            return [*args[:position], *args[position + 1 :]]
        position += 1
    return list(args)


def _find(argv: Sequence[str]) -> tuple[_Command, list[str]]:
    """cobra's ``Find``: the command named on the command line, and its arguments.

    As in cobra, the help flag is not defined yet at this point, so ``-h``/``--help`` count
    as flags that take a value (``kg --help version`` is help for ``kg``).
    """
    flags = {name: f for name, f in _ROOT.all_flags().items() if name != "help"}
    commands = _strip_flags(argv, flags)
    if not commands:
        return _ROOT, list(argv)
    sub = _SUBCOMMANDS.get(commands[0])
    if sub is None:
        # Kilo's root command takes no positional arguments (cobra's "legacyArgs").
        raise SettingsError(f"unknown command {go_quote(commands[0])} for {go_quote(PROG)}")
    return sub, _without_first(argv, sub.name, flags)


def _flag_label(flag: Flag) -> str:
    return f"-{flag.shorthand}, --{flag.name}" if flag.shorthand else f"--{flag.name}"


def _parse_flags(
    args: Sequence[str], flags: Mapping[str, Flag]
) -> tuple[dict[str, FlagValue], list[str]]:
    """pflag's ``Parse``: the value of every flag (defaults included) and the positionals."""
    values: dict[str, FlagValue] = {name: f.default for name, f in flags.items()}
    seen: set[str] = set()
    positionals: list[str] = []

    def set_value(flag: Flag, text: str) -> None:
        try:
            value = flag.convert(text)
        except ValueError as exc:
            raise SettingsError(
                f"invalid argument {go_quote(text)} for {go_quote(_flag_label(flag))} flag: {exc}"
            ) from None
        if flag.kind == "strings" and flag.name in seen:
            previous = values[flag.name]
            assert isinstance(previous, list) and isinstance(value, list)
            value = previous + value
        values[flag.name] = value
        seen.add(flag.name)

    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if len(arg) < 2 or not arg.startswith("-"):
            positionals.append(arg)
            continue
        if arg == "--":
            positionals.extend(rest)
            break
        if arg.startswith("--"):
            if arg[2] in "-=":
                raise SettingsError(f"bad flag syntax: {arg}")
            name, eq, text = arg[2:].partition("=")
            flag = flags.get(name)
            if flag is None:
                raise SettingsError(f"unknown flag: --{name}")
            if eq:
                set_value(flag, text)
            elif flag.kind == "bool":
                set_value(flag, "true")
            elif rest:
                set_value(flag, rest.pop(0))
            else:
                raise SettingsError(f"flag needs an argument: --{name}")
            continue
        shorthands = arg[1:]
        while shorthands:
            char = shorthands[0]
            flag = next((f for f in flags.values() if f.shorthand == char), None)
            if flag is None:
                raise SettingsError(f"unknown shorthand flag: {_go_rune(char)} in -{shorthands}")
            if len(shorthands) > 2 and shorthands[1] == "=":
                set_value(flag, shorthands[2:])
                shorthands = ""
            else:  # the only shorthand, -h, is a bool flag
                set_value(flag, "true")
                shorthands = shorthands[1:]
    return values, positionals


def _go_rune(char: str) -> str:
    """Go's ``%q`` of a rune."""
    if char == "'":
        return "'\\''"
    return "'" + go_quote(char)[1:-1].replace('\\"', '"') + "'"


def _check_log_level(values: Mapping[str, FlagValue]) -> LogLevel:
    text = str(values["log-level"])
    try:
        return LogLevel(text)
    except ValueError:
        raise SettingsError(
            f"log level {text} unknown; possible values are: {_LOG_LEVELS}"
        ) from None


def _cidr(text: str) -> IPNetwork:
    network = ip.parse_network(text)
    if network is None:
        raise SettingsError(
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
        raise SettingsError(f"{what} {text} unknown; possible values are: {possible}") from None


def parse_args(
    argv: Sequence[str], *, hostname_fallback: Callable[[], str | None]
) -> AgentSettings:
    """Read ``kg``'s command line (without the program name) as Kilo does.

    Returns the settings of the agent. Raises ``SettingsError`` (Kilo's one-line message,
    exit status 1), ``ShowText`` (help or version: print it, exit 0) or ``WebhookRequested``.
    ``hostname_fallback`` is called only when ``--hostname`` is empty, at the point where
    Kilo asks the operating system; ``None`` or ``""`` means the host name is unknown.
    """
    command, args = _find(argv)
    flags = command.all_flags()
    values, _positionals = _parse_flags(args, flags)
    if values["help"]:
        raise ShowText(help_text(command.name))
    if command.name == "help":
        # cobra's help command: help for the command it names, else for kg.
        named = _strip_flags(args, flags)
        raise ShowText(help_text(named[0] if named and named[0] in _SUBCOMMANDS else PROG))
    if command.name == "version":
        raise ShowText(f"{__version__}\n")
    if command.name == "completion":
        _completion(values, _positionals)
    if command.name == "webhook":
        level = _check_log_level(values)
        if values["version"]:
            raise ShowText(f"{__version__}\n")
        _check_webhook(values)
        raise WebhookRequested(
            WebhookSettings(
                cert_file=str(values["cert-file"]),
                key_file=str(values["key-file"]),
                listen=str(values["listen"]),
                listen_metrics=str(values["listen-metrics"]),
                log=LogSettings(level=level),
                kubeconfig=str(values["kubeconfig"]),
                master=str(values["master"]),
            )
        )
    return _validate(values, hostname_fallback)


def _check_webhook(values: Mapping[str, FlagValue]) -> None:
    """``kg webhook``'s flags that can be checked before anything runs: the addresses, in
    the order the servers start (metrics first, as in Kilo), then ``--master``."""
    for flag in ("listen-metrics", "listen"):
        problem = listen.listen_error(str(values[flag]))
        if problem:
            raise SettingsError(problem)
    _master(values)


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
        raise SettingsError(
            f"failed to create Kubernetes config: invalid --master {go_quote(master)}: {problem}"
        )
    return url


def _validate(
    values: Mapping[str, FlagValue], hostname_fallback: Callable[[], str | None]
) -> AgentSettings:
    """Kilo's start-up checks (reference §3.3), in Kilo's order."""
    # 1. The log level, checked before anything else (cobra's pre-run).
    level = _check_log_level(values)
    # 2. --version.
    if values["version"]:
        raise ShowText(f"{__version__}\n")
    # 3. --subnet.
    subnet = _cidr(str(values["subnet"]))
    # 4. The host name.
    hostname = str(values["hostname"])
    if not hostname:
        # Lower-cased as the kubelet lower-cases it to name the Node (Kilo does not, and
        # never finds its Node on a host named "MyHost").
        hostname = (hostname_fallback() or "").strip().lower()
        if not hostname:
            raise SettingsError("failed to determine hostname")
    # 5. --encapsulate.
    encapsulation = _choice(Encapsulation, values["encapsulate"], "encapsulation", _ENCAPSULATIONS)
    # 5b. --compatibility, where Kilo picks the encapsulator. Kilo silently falls back to
    # IPIP for an unknown value; a typo would then change the data plane (deliberate fix).
    compatibility = _choice(
        Compatibility, values["compatibility"], "compatibility", _COMPATIBILITIES
    )
    # 6. --mesh-granularity (no "auto" in kg).
    granularity = _choice(
        Granularity, values["mesh-granularity"], "mesh granularity", _GRANULARITIES
    )
    # 7. --backend. (Building the Kubernetes client config is the caller's.)
    backend = str(values["backend"])
    if backend != BACKEND_KUBERNETES:
        raise SettingsError(f"backend {backend} unknown; possible values are: {BACKEND_KUBERNETES}")
    # 8. --port (Kilo's message says "mus be": deliberate fix).
    port = _int(values["port"])
    if not 1 <= port <= 65535:
        raise SettingsError(f"invalid port: port must be in range [1:65535], but got {port}")
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
            raise SettingsError(f"failed to parse MTU {go_quote(mtu_text)}: {exc}") from None

    # Checks Kilo does not make (docs/compatibility.md), after all of Kilo's, so that a
    # command line Kilo refuses gets Kilo's message. Each refuses a value that would fail
    # only after the key and the interface exist, or would silently break the agent.
    # The host name must be able to name this node's Node object.
    if not is_dns1123_subdomain(hostname):
        given = "--hostname" if values["hostname"] else "the host name (--hostname is empty)"
        raise SettingsError(
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
            raise SettingsError(f"invalid MTU: {problem}")
    # --interface: a name the kernel accepts.
    interface = str(values["interface"])
    problem = flags.interface_name_problem(interface)
    if problem:
        raise SettingsError(f"invalid interface name {go_quote(interface)}: {problem}")
    # --topology-label: empty (no label) or a label key some node could carry.
    topology_label = str(values["topology-label"])
    problem = topology_label and flags.label_key_problem(topology_label)
    if problem:
        raise SettingsError(f"invalid topology label {go_quote(topology_label)}: {problem}")
    # --cni-path: the file to write when Kilo manages the CNI configuration.
    cni = _bool(values["cni"])
    cni_path = str(values["cni-path"])
    if cni and not cni_path.strip():
        raise SettingsError(
            f"invalid CNI path {go_quote(cni_path)}: give the CNI configuration file to "
            "manage, or --cni=false"
        )
    # 12. --listen, last as in Kilo (the socket is bound before anything is created).
    listen_address = str(values["listen"])
    problem = listen.listen_error(listen_address)
    if problem:
        raise SettingsError(problem)

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
            iptables_forward_rules=_bool(values["iptables-forward-rules"]),
            resync_period=_int(values["resync-period"]) / _NS_PER_SECOND,
            clean_up=_bool(values["clean-up"]),
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


# --- shell completion -----------------------------------------------------------------------

_CHOICES: dict[str, tuple[str, ...]] = {
    "backend": (BACKEND_KUBERNETES,),
    "compatibility": (Compatibility.FLANNEL.value, Compatibility.CILIUM.value),
    "encapsulate": tuple(_ENCAPSULATIONS.split(", ")),
    "log-level": tuple(level.value for level in LogLevel),
    "mesh-granularity": (Granularity.LOCATION.value, Granularity.FULL.value),
}
_PATHS = frozenset({"kubeconfig", "cni-path", "cert-file", "key-file"})


def _option(flag: Flag, *, persistent: bool = False) -> completion.Option:
    names = (f"--{flag.name}", f"-{flag.shorthand}") if flag.shorthand else (f"--{flag.name}",)
    return completion.Option(
        names=names,
        help=flag.help,
        takes_value=flag.kind != "bool",
        choices=_CHOICES.get(flag.name, ()),
        path=flag.name in _PATHS,
        repeatable=flag.kind == "strings",
        persistent=persistent,
    )


def completion_tree() -> completion.Command:
    """kg's commands and flags, for shell completion (``kg __complete``)."""
    help_flag = Flag("help", "bool", False, "help for kg", shorthand="h")
    root_options = (
        *(_option(f) for f in ROOT_FLAGS),
        *(_option(f, persistent=True) for f in PERSISTENT_FLAGS),
        _option(help_flag),
    )
    commands = []
    for sub in _SUBCOMMANDS.values():
        if sub.name == "completion":
            commands.append(completion.completion_command(PROG))
        elif sub.name == "help":
            commands.append(
                completion.Command(
                    name="help", help=sub.short, max_args=1, arguments=completion.HELP_TOPICS
                )
            )
        else:
            options = (
                *(_option(f) for f in sub.flags),
                _option(Flag("help", "bool", False, f"help for {sub.name}", shorthand="h")),
            )
            commands.append(completion.Command(name=sub.name, help=sub.short, options=options))
    return completion.Command(
        name=PROG, help="kg is the Kilo agent", options=root_options, commands=tuple(commands)
    )


def complete(words: Sequence[str]) -> tuple[list[str], int]:
    """The answer to ``kg __complete WORDS...``: cobra's candidates and directive."""
    return completion.complete(completion_tree(), list(words) or [""])


def _completion(values: Mapping[str, FlagValue], positionals: Sequence[str]) -> None:
    """``kg completion [SHELL]``: the script on stdout, or the command's help."""
    if not positionals:
        raise ShowText(help_text("completion"))
    shell = positionals[0]
    if shell not in completion.SHELLS:
        raise SettingsError(
            f"unknown command {go_quote(shell)} for {go_quote(PROG + ' completion')}"
        )
    if len(positionals) > 1:
        path = f"{PROG} completion {shell}"
        raise SettingsError(f"unknown command {go_quote(positionals[1])} for {go_quote(path)}")
    descriptions = not _bool(values[completion.NO_DESCRIPTIONS_FLAG[2:]])
    raise ShowText(completion.script(shell, PROG, descriptions=descriptions))


# --- help -----------------------------------------------------------------------------------

_ROOT_LONG = """\
kg is the Kilo agent.
It runs on every node of a cluster, setting up the public and private keys for the VPN
as well as the necessary rules to route packets between locations."""


def help_text(name: str = PROG) -> str:
    """cobra-style help for ``kg`` or one of its subcommands."""
    command = _ROOT if name == PROG else _SUBCOMMANDS[name]
    lines: list[str] = []
    if command is _ROOT:
        lines += [_ROOT_LONG, "", "Usage:", f"  {PROG} [flags]", f"  {PROG} [command]", ""]
        lines.append("Available Commands:")
        lines += [f"  {c.name:<11} {c.short}" for c in _SUBCOMMANDS.values()]
        lines.append("")
    elif command.name == "completion":
        lines += [
            f"Generate the autocompletion script for {PROG} for the specified shell.",
            "The script asks kg itself what to offer; load it, for example, with",
            f"source <({PROG} completion bash).",
            "",
            "Usage:",
            f"  {PROG} completion SHELL [flags]",
            "",
            "Available Commands:",
        ]
        lines += [
            f"  {shell:<11} Generate the autocompletion script for {shell}"
            for shell in completion.SHELLS
        ]
        lines.append("")
    else:
        lines += [command.short, "", "Usage:", f"  {PROG} {command.name} [flags]", ""]
    flags = command.all_flags()
    local = [flags[f.name] for f in command.flags] + [flags["help"]]
    sections = [("Flags:", local), ("Global Flags:", list(PERSISTENT_FLAGS))]
    if command is _ROOT:
        sections = [("Flags:", sorted([*local, *PERSISTENT_FLAGS], key=lambda f: f.name))]
    for title, group in sections:
        lines.append(title)
        rows = []
        for flag in group:
            kind = {"bool": "", "int": " int", "duration": " duration"}.get(flag.kind, " string")
            kind = " strings" if flag.kind == "strings" else kind
            label = f"-{flag.shorthand}, --{flag.name}" if flag.shorthand else f"    --{flag.name}"
            default = flag.shown_default()
            text = flag.help + (f" (default {default})" if default else "")
            rows.append((f"  {label}{kind}", text))
        width = max(len(left) for left, _ in rows)
        lines += [f"{left:<{width}}   {text}" for left, text in rows]
        lines.append("")
    if command is _ROOT:
        lines.append(f'Use "{PROG} [command] --help" for more information about a command.')
    return "\n".join(lines).rstrip("\n") + "\n"
