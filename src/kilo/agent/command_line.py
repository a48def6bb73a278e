"""The ``kg`` command line: Kilo's commands and flags, read as Kilo's Go binary reads them.

Pure apart from the ``hostname_fallback`` the caller passes in and ``/etc/services``, read
for a service name in a listen address. The syntax is cobra's and pflag's
(:mod:`kilo.agent.cobra`), so existing manifests keep working; the values are checked and
turned into settings by :mod:`kilo.agent.settings`, in Kilo's order with Kilo's messages.

:func:`read` returns what the command line asks for, as a value: the agent's settings, the
webhook's settings, or text to print (help, the version, a completion script). Only a
command line that is refused raises (:class:`~kilo.agent.cobra.CommandLineError`, exit
status 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kilo import __version__, completion
from kilo.agent import settings
from kilo.agent.cobra import (
    Command,
    CommandLineError,
    Flag,
    FlagValue,
    find,
    flag_rows,
    parse_flags,
    strip_flags,
)
from kilo.agent.settings import (
    BACKEND_KUBERNETES,
    COMPATIBILITIES,
    DEFAULT_LISTEN,
    DEFAULT_RESYNC_PERIOD,
    DEFAULT_WEBHOOK_LISTEN,
    DEFAULT_WEBHOOK_LISTEN_METRICS,
    ENCAPSULATIONS,
    GRANULARITIES,
    LOG_LEVELS,
    MTU_AUTO,
    PROG,
    AgentSettings,
    LogLevel,
    WebhookSettings,
)
from kilo.mesh import model
from kilo.mesh.gosyntax import go_quote, parse_duration


@dataclass(frozen=True, slots=True)
class Show:
    """Help, the version or a completion script was asked for: print ``text``, exit 0."""

    text: str


Outcome = AgentSettings | WebhookSettings | Show


# --- flags and commands -----------------------------------------------------------------------

PERSISTENT_FLAGS = (
    Flag("version", "bool", False, "Print version and exit."),
    Flag(
        "log-level",
        "string",
        LogLevel.INFO.value,
        f"Log level to use. Possible values: {LOG_LEVELS}",
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
    Flag("cni-path", "string", model.DEFAULT_CNI_PATH, "Path to CNI config."),
    Flag(
        "compatibility",
        "string",
        "",
        f"Should Kilo run in compatibility mode? Possible values: {COMPATIBILITIES}",
    ),
    Flag(
        "encapsulate",
        "string",
        model.Encapsulation.ALWAYS.value,
        "When should Kilo encapsulate packets within a location? "
        f"Possible values: {ENCAPSULATIONS}",
    ),
    Flag(
        "mesh-granularity",
        "string",
        model.Granularity.LOCATION.value,
        f"The granularity of the network mesh to create. Possible values: {GRANULARITIES}",
    ),
    Flag("kubeconfig", "string", "", "Path to kubeconfig."),
    Flag("hostname", "string", "", "Hostname of the node on which this process is running."),
    Flag(
        "interface",
        "string",
        model.DEFAULT_INTERFACE,
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
        model.DEFAULT_TOPOLOGY_LABEL,
        "Kubernetes node label used to group nodes into logical locations.",
    ),
    Flag(
        "port", "int", model.DEFAULT_PORT, "The port over which WireGuard peers should communicate."
    ),
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
        model.DEFAULT_SUBNET,
        "CIDR from which to allocate addresses for WireGuard interfaces.",
    ),
    Flag(
        "resync-period",
        "duration",
        parse_duration(DEFAULT_RESYNC_PERIOD),
        "How often should the Kilo controllers reconcile?",
        shown=DEFAULT_RESYNC_PERIOD,
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
    Flag(
        "leader-election",
        "string",
        "",
        "Not in Kilo; off when empty. 'lease': a coordination.k8s.io Lease per location, in "
        "kg's namespace, held by the leader while its WireGuard path and forwarding work, "
        "moves leadership to the next node within seconds; every node must run kg with it "
        "(while any ready node does not, leaders are Kilo's). Possible values: lease",
    ),
    Flag(
        "same-nat-internal-endpoints",
        "bool",
        False,
        "Dial nodes that other nodes see at this node's public IP (behind the same NAT) at "
        "their internal IP rather than through the NAT, which needs hairpin NAT. Not in Kilo.",
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


_ROOT = Command(PROG, "kg is the Kilo agent", ROOT_FLAGS, PERSISTENT_FLAGS)
_SUBCOMMANDS = {
    c.name: c
    for c in (
        Command(
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
            PERSISTENT_FLAGS,
        ),
        Command("help", "Help about any command", (), PERSISTENT_FLAGS),
        Command("version", "Print the version and exit.", (), PERSISTENT_FLAGS),
        Command(
            "webhook",
            "webhook starts a HTTPS server to validate updates and creations of Kilo peers.",
            WEBHOOK_FLAGS,
            PERSISTENT_FLAGS,
        ),
    )
}


def read(argv: Sequence[str], *, hostname_fallback: Callable[[], str | None]) -> Outcome:
    """Read ``kg``'s command line (without the program name) as Kilo does.

    ``hostname_fallback`` is called only when ``--hostname`` is empty, at the point where
    Kilo asks the operating system; ``None`` or ``""`` means the host name is unknown.
    """
    command, args = find(_ROOT, _SUBCOMMANDS, argv)
    flags = command.all_flags()
    values, positionals = parse_flags(args, flags)
    if values["help"]:
        return Show(help_text(command.name))
    if command.name == "help":
        # cobra's help command: help for the command it names, else for kg.
        named = strip_flags(args, flags)
        return Show(help_text(named[0] if named and named[0] in _SUBCOMMANDS else PROG))
    if command.name == "version":
        return Show(f"{__version__}\n")
    if command.name == "completion":
        return _completion(values, positionals)
    # The log level first (cobra's pre-run), then --version, as in Kilo.
    settings.log_level(values)
    if values["version"]:
        return Show(f"{__version__}\n")
    if command.name == "webhook":
        return settings.webhook_settings(values)
    return settings.agent_settings(values, hostname_fallback)


# --- shell completion -----------------------------------------------------------------------

_CHOICES: dict[str, tuple[str, ...]] = {
    "backend": (BACKEND_KUBERNETES,),
    "compatibility": (model.Compatibility.FLANNEL.value, model.Compatibility.CILIUM.value),
    "encapsulate": tuple(ENCAPSULATIONS.split(", ")),
    "log-level": tuple(level.value for level in LogLevel),
    "mesh-granularity": tuple(GRANULARITIES.split(", ")),
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
    root_options = (
        *(_option(f) for f in ROOT_FLAGS),
        *(_option(f, persistent=True) for f in PERSISTENT_FLAGS),
        _option(_ROOT.help_flag),
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
                _option(sub.help_flag),
            )
            commands.append(completion.Command(name=sub.name, help=sub.short, options=options))
    return completion.Command(
        name=PROG, help="kg is the Kilo agent", options=root_options, commands=tuple(commands)
    )


def complete(words: Sequence[str]) -> tuple[list[str], int]:
    """The answer to ``kg __complete WORDS...``: cobra's candidates and directive."""
    return completion.complete(completion_tree(), list(words) or [""])


def _completion(values: Mapping[str, FlagValue], positionals: Sequence[str]) -> Show:
    """``kg completion [SHELL]``: the script on stdout, or the command's help."""
    if not positionals:
        return Show(help_text("completion"))
    shell = positionals[0]
    if shell not in completion.SHELLS:
        raise CommandLineError(
            f"unknown command {go_quote(shell)} for {go_quote(PROG + ' completion')}"
        )
    if len(positionals) > 1:
        path = f"{PROG} completion {shell}"
        raise CommandLineError(f"unknown command {go_quote(positionals[1])} for {go_quote(path)}")
    descriptions = not bool(values[completion.NO_DESCRIPTIONS_FLAG[2:]])
    return Show(completion.script(shell, PROG, descriptions=descriptions))


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
        lines += [title, *flag_rows(group), ""]
    if command is _ROOT:
        lines.append(f'Use "{PROG} [command] --help" for more information about a command.')
    return "\n".join(lines).rstrip("\n") + "\n"
