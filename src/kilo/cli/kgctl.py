"""``kgctl``: inspect a Kilo mesh (graph, WireGuard configs, what a node would program).

Composition root: this module is kgctl's command line (every command's flags, their
pflag-compatible value types, shell completion of the tree) and ``main``; the commands
themselves, which read the cluster through a backend, hand plain values to the pure core
and print what it returns, are :mod:`kilo.cli.commands`. Exit status: 0 on success, 1 when
the command fails, 2 when the command line is wrong. It is over 500 lines because the
command tree is one concept, read top to bottom as cobra declares it (``kgctl --help``
and the completion scripts are generated from this one tree); its parts are small.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from kilo import __version__, completion
from kilo.cli import arguments, commands, connect, multicluster
from kilo.cli.arguments import quote
from kilo.errors import KiloError
from kilo.mesh import gosyntax, ip
from kilo.mesh import multicluster as multicluster_core
from kilo.mesh.cluster import AUTO, GRANULARITY_CHOICES
from kilo.mesh.model import (
    DEFAULT_CNI_PATH,
    DEFAULT_PORT,
    DEFAULT_TOPOLOGY_LABEL,
    Compatibility,
    Encapsulation,
    ready_nodes,
    ready_peers,
)
from kilo.mesh.text import printable

PROG = commands.PROG
PRIVATE_PLACEHOLDER = "<private>"
BACKENDS = ("kubernetes", "file")
OUTPUTS = ("wireguard", "yaml", "json")

EPILOG = """\
exit status:
  0  success (also when "showconf node" names a node that is not a leader: Kilo
     prints a note on stderr and nothing on stdout)
  1  the command failed (unreadable dump, unknown node or peer, no ready node, ...)
  2  the command line is wrong (unknown flag, bad flag value, missing argument)
"""


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit with status 2.

    Abbreviated long options are refused: ``--p 1`` must not silently mean ``--port 1``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise commands.UsageError(message)


def _port(text: str) -> int:
    """pflag's int syntax (``51820``, ``0xca6c``, ``+51820``), then Kilo's range check."""
    value = _read_port(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"invalid port: port must be in range [1:65535], but got {value}"
        )
    return value


_read_port = arguments.go_value("--port", gosyntax.parse_int)


def _choice(what: str, choices: Sequence[str]) -> arguments.Value[str]:
    shown = ", ".join(c if c else '"" (none)' for c in choices)

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{what} {text} unknown; possible values are: {shown}")
        return text

    return arguments.Value(parse, choices=tuple(c for c in choices if c))


def _cidr_list(what: str, *, masked: bool) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        result = []
        for item in text.split(","):
            parsed = ip.parse_network(item) if masked else ip.parse_interface(item)
            if parsed is None:
                raise argparse.ArgumentTypeError(
                    f"{what} must contain only valid CIDRs; got {quote(item)}"
                )
            result.append(str(parsed))
        return result

    return parse


def _subnet(text: str) -> str:
    parsed = ip.parse_network(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"failed to parse {quote(text)} as CIDR")
    return str(parsed)


def _seconds(text: str) -> float:
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid duration {quote(text)}: not a number of seconds"
        ) from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(
            f"invalid duration {quote(text)}: must be between 0 and 86400 s"
        )
    return value


def _private_interface(text: str) -> str:
    if text == PRIVATE_PLACEHOLDER:
        return text
    return arguments.interface_name("--private-interface")(text)


def _check_plan(args: argparse.Namespace) -> str | None:
    if args.cni and not args.cni_path.strip():
        return (
            f"invalid --cni-path {quote(args.cni_path)}: give the CNI configuration file, "
            "or --cni=false"
        )
    return None


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted before and after the command, like Kilo's persistent flags."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--backend",
        type=_choice("backend", BACKENDS),
        default=default("kubernetes"),
        metavar="{kubernetes,file}",
        help="where to read the cluster from: kubernetes or file (default: kubernetes)",
    )
    parser.add_argument(
        "--file",
        type=arguments.FILE,
        default=default(None),
        metavar="PATH",
        help="cluster dump for --backend file: the output of "
        "'kubectl get nodes,peers.kilo.squat.ai -o yaml' ('-' for stdin)",
    )
    parser.add_argument(
        "--kubeconfig",
        type=arguments.FILE,
        default=default(None),
        help="kubeconfig for --backend kubernetes",
    )
    parser.add_argument(
        "--mesh-granularity",
        type=_choice("mesh granularity", GRANULARITY_CHOICES),
        default=default(AUTO),
        metavar="{location,full,cross,auto}",
        help="location, full, cross or auto (read from the nodes' annotations; default: auto)",
    )
    parser.add_argument(
        "--port", type=_port, default=default(DEFAULT_PORT), help="WireGuard port (default: 51820)"
    )
    parser.add_argument(
        "--topology-label",
        type=arguments.label_key("--topology-label"),
        default=default(DEFAULT_TOPOLOGY_LABEL),
        help=f"node label that names the location (default: {DEFAULT_TOPOLOGY_LABEL})",
    )
    parser.add_argument(
        "--subnet",
        type=_subnet,
        default=default(None),
        help="Kilo WireGuard subnet (default: inferred from the nodes' wireguard-ip annotations, "
        "else 10.4.0.0/16)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=default(10.0),
        metavar="SECONDS",
        help="give up on the Kubernetes API server after this long (default: 10)",
    )
    parser.add_argument(
        "--respect-last-seen",
        type=arguments.go_bool("--respect-last-seen"),
        nargs="?",
        const=True,
        default=default(False),
        metavar="BOOL",
        help="with --backend file, treat nodes whose last-seen is older than 60 s as not ready "
        "(by default a dump's nodes are judged as of when it was taken)",
    )


SHOWCONF_DEFAULTS: dict[str, object] = {"as_peer": False, "output": "wireguard", "allowed_ips": []}


def _showconf_options(parser: argparse.ArgumentParser, *, kind: str) -> None:
    """Options of ``showconf``; defaults are filled in after parsing (see ``main``)."""
    parser.add_argument(
        "--as-peer",
        type=arguments.go_bool("--as-peer"),
        nargs="?",
        const=True,
        default=argparse.SUPPRESS,
        metavar="BOOL",
        help=f"print the {kind} as a peer of some other WireGuard interface",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=_choice("output format", OUTPUTS),
        default=argparse.SUPPRESS,
        metavar="{wireguard,yaml,json}",
        help="wireguard, yaml or json (yaml and json need --as-peer; default: wireguard)",
    )
    parser.add_argument(
        "--allowed-ips",
        type=_cidr_list("allowed-ips", masked=True),
        action="extend",
        default=argparse.SUPPRESS,
        metavar="CIDR[,CIDR...]",
        help="extra allowed IPs to add with --as-peer (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Inspect a Kilo network mesh.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, suppress=False)
    parser.add_argument(
        "--version", "-v", action="version", version=f"{PROG} version {__version__}"
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    graph_parser = subcommands.add_parser("graph", help="print the mesh as a Graphviz DOT graph")
    _global_options(graph_parser, suppress=True)
    graph_parser.add_argument(
        "--remote-kubeconfig",
        type=arguments.FILE,
        metavar="PATH",
        help="also draw the cluster of this kubeconfig, and the link kgctl multicluster "
        "link keeps between the two (--backend kubernetes)",
    )
    graph_parser.add_argument(
        "--link",
        metavar="NAME",
        help=f"with --remote-kubeconfig: the link's --name (default {multicluster.DEFAULT_LINK})",
    )
    graph_parser.set_defaults(run=commands.run_graph, check=commands.check_graph)

    showconf = subcommands.add_parser(
        "showconf", help="print the WireGuard configuration of a node or peer"
    )
    showconf.set_defaults(help_parser=showconf)
    showconf_kinds = showconf.add_subparsers(dest="kind", metavar="node|peer", parser_class=_Parser)
    # Like Kilo's persistent flags, showconf's options may come before or after node|peer.
    _showconf_options(showconf, kind="node or peer")
    _global_options(showconf, suppress=True)
    for kind in ("node", "peer"):
        sub = showconf_kinds.add_parser(kind, help=f"print the WireGuard configuration of a {kind}")
        sub.add_argument("name", metavar="NAME", type=arguments.object_name(kind))
        _showconf_options(sub, kind=kind)
        _global_options(sub, suppress=True)
        sub.set_defaults(run=commands.run_showconf)

    plan_parser = subcommands.add_parser(
        "plan", help="print everything the agent on a node would program"
    )
    plan_parser.set_defaults(help_parser=plan_parser)
    _global_options(plan_parser, suppress=True)
    plan_kinds = plan_parser.add_subparsers(dest="kind", metavar="node", parser_class=_Parser)
    plan_node = plan_kinds.add_parser("node", help="print the plan of the kg agent on NAME")
    plan_node.add_argument("name", metavar="NAME", type=arguments.object_name("node"))
    plan_node.add_argument(
        "--output",
        "-o",
        type=_choice("output format", ("text", "json")),
        default="text",
        help="text or json (default: text)",
    )
    plan_node.add_argument(
        "--interface",
        type=arguments.interface_name("--interface"),
        default="kilo0",
        help="WireGuard interface (default: kilo0)",
    )
    plan_node.add_argument(
        "--private-interface",
        type=_private_interface,
        default=PRIVATE_PLACEHOLDER,
        help="name to print for the interface holding the node's private IP "
        f"(default: {PRIVATE_PLACEHOLDER})",
    )
    plan_node.add_argument(
        "--encapsulate",
        type=_choice("encapsulation", [e.value for e in Encapsulation]),
        default=Encapsulation.ALWAYS.value,
        help="never, crosssubnet or always, as the agent's flag (default: always)",
    )
    plan_node.add_argument(
        "--compatibility",
        type=_choice(
            "compatibility", [Compatibility.FLANNEL, Compatibility.CILIUM, Compatibility.NONE]
        ),
        default=Compatibility.NONE.value,
        help="flannel or cilium, as the agent's flag (default: none)",
    )
    for flag, default_value, text in (
        ("--local", True, "manage routes within the location"),
        ("--cni", True, "manage the CNI config"),
        ("--iptables-forward-rules", False, "add ACCEPT rules to FORWARD"),
    ):
        arguments.add_go_bool(
            plan_node, flag, default=default_value, help=f"{text}, as the agent's flag"
        )
    plan_node.add_argument(
        "--service-cidr",
        type=_cidr_list("service-cidr", masked=True),
        action="extend",
        default=[],
        metavar="CIDR",
        help="service CIDRs, as the agent's flag (repeatable)",
    )
    plan_node.add_argument(
        "--cni-path",
        type=arguments.FILE,
        default=DEFAULT_CNI_PATH,
        help="CNI conflist the agent manages",
    )
    _global_options(plan_node, suppress=True)
    plan_node.set_defaults(run=commands.run_plan, check=_check_plan)

    list_parser = subcommands.add_parser("list", help="list the nodes and peers of the mesh")
    list_parser.add_argument(
        "--output",
        "-o",
        type=_choice("output format", ("table", "wide", "json")),
        default="table",
        metavar="{wide,json}",
        help="wide (more columns) or json (default: a table)",
    )
    _global_options(list_parser, suppress=True)
    list_parser.set_defaults(run=commands.run_list)

    connect_parser = subcommands.add_parser(
        "connect",
        help="join this Linux machine to the mesh as a Peer and keep it connected",
        description="Join this Linux machine to the mesh as the Kilo Peer NAME: create the "
        "Peer (or use it if it holds this machine's key), configure the WireGuard interface "
        "and routes, follow the cluster until SIGINT/SIGTERM, then clean up.",
    )
    connect.add_arguments(connect_parser)
    _global_options(connect_parser, suppress=True)
    connect_parser.set_defaults(run=commands.run_connect, check=connect.check_arguments)

    multi = subcommands.add_parser(
        "multicluster",
        help="join this cluster and another as Kilo documents, and keep them joined",
    )
    multi.set_defaults(help_parser=multi)
    _global_options(multi, suppress=True)
    multi_kinds = multi.add_subparsers(dest="kind", metavar="link|unlink", parser_class=_Parser)
    link = multi_kinds.add_parser(
        "link",
        help="mirror each cluster's nodes into the other as Peers (--watch: keep them current)",
        description="Write, in each cluster, one Peer per segment leader of the other (what "
        "'kgctl showconf node LEADER --as-peer' prints), named NAME-LEADER and labelled "
        f"{multicluster_core.LINK_LABEL}=NAME; with --watch, rewrite them whenever either "
        "cluster changes.",
    )
    unlink = multi_kinds.add_parser(
        "unlink", help="delete, in both clusters, exactly the Peers the link wrote"
    )
    multicluster.add_arguments(link, unlink)
    for sub, run in ((link, commands.run_link), (unlink, commands.run_unlink)):
        _global_options(sub, suppress=True)
        sub.set_defaults(run=run, check=multicluster.check_arguments)

    version = subcommands.add_parser("version", help="print the version")
    version.set_defaults(run=commands.run_version)

    completion_parser = subcommands.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh, fish or powershell",
        description=f"Print the script that makes {PROG} complete its commands, flags and "
        "names (of nodes and peers) in SHELL.",
    )
    completion_parser.set_defaults(help_parser=completion_parser)
    shells = completion_parser.add_subparsers(dest="shell", metavar="SHELL", parser_class=_Parser)
    for shell in completion.SHELLS:
        shell_parser = shells.add_parser(
            shell,
            help=f"print the completion script for {shell}",
            description=_COMPLETION_HOWTO[shell].format(prog=PROG),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        shell_parser.add_argument(
            completion.NO_DESCRIPTIONS_FLAG,
            type=arguments.go_bool(completion.NO_DESCRIPTIONS_FLAG),
            nargs="?",
            const=True,
            default=False,
            metavar="BOOL",
            help=completion.NO_DESCRIPTIONS_HELP,
        )
        _global_options(shell_parser, suppress=True)
        shell_parser.set_defaults(run=commands.run_completion)

    help_parser = subcommands.add_parser("help", help="print the help of a command")
    help_parser.add_argument(
        "topics",
        nargs="*",
        metavar="COMMAND",
        type=arguments.Value(str, completes=completion.HELP_TOPICS),
        help="the command, e.g. showconf node",
    )
    help_parser.set_defaults(run=commands.run_help, root_parser=parser)
    return parser


# Bool flags read as pflag reads them: --flag is true, --flag=VALUE is VALUE (Go's syntax),
# and the next word is never the flag's value.
GO_BOOLS = ("--as-peer", "--respect-last-seen", "--watch", completion.NO_DESCRIPTIONS_FLAG)

_COMPLETION_HOWTO = {
    "bash": """\
Print the bash completion script. To load it in this shell:

  source <({prog} completion bash)

and in every new shell:

  {prog} completion bash > /etc/bash_completion.d/{prog}
""",
    "zsh": """\
Print the zsh completion script (compinit must have run). To load it in this shell:

  source <({prog} completion zsh)

and in every new shell:

  {prog} completion zsh > "${{fpath[1]}}/_{prog}"
""",
    "fish": """\
Print the fish completion script. To load it in this shell:

  {prog} completion fish | source

and in every new shell:

  {prog} completion fish > ~/.config/fish/completions/{prog}.fish
""",
    "powershell": """\
Print the PowerShell completion script. To load it in this shell:

  {prog} completion powershell | Out-String | Invoke-Expression

and in every new shell: add that line to your PowerShell profile.
""",
}


def completion_tree(
    parser: argparse.ArgumentParser, name: str = PROG, text: str = ""
) -> completion.Command:
    """kgctl's commands and flags, read from its argparse parser, for shell completion."""
    options: list[completion.Option] = []
    commands: list[completion.Command] = []
    max_args = 0
    completes = ""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            commands += [
                completion_tree(sub, sub_name, helps.get(sub_name, ""))
                for sub_name, sub in action.choices.items()
            ]
            continue
        value = action.type if isinstance(action.type, arguments.Value) else None
        if not action.option_strings:
            max_args += {"?": 1, "*": 8, "+": 8}.get(str(action.nargs), 1)
            completes = completes or (value.completes if value else "")
            continue
        names = sorted(action.option_strings, key=lambda n: not n.startswith("--"))
        takes_value = action.nargs != 0 and not (action.nargs == "?" and action.const is True)
        options.append(
            completion.Option(
                names=tuple(names),
                help=(action.help or "") if action.help != argparse.SUPPRESS else "",
                takes_value=takes_value,
                choices=value.choices if value else (),
                path=value.path if value else False,
                repeatable=isinstance(action, argparse._ExtendAction | argparse._AppendAction),
            )
        )
    return completion.Command(
        name=name,
        help=text or (parser.description or "").split(".")[0],
        options=tuple(options),
        commands=tuple(commands),
        max_args=max_args,
        arguments=completes,
    )


# A completion that lists the nodes or peers of a live cluster gives up after this long.
COMPLETION_TIMEOUT = 5.0
# The flags that say where the cluster is, passed on to the listing.
_CLUSTER_FLAGS = (
    "--backend",
    "--file",
    "--kubeconfig",
    "--timeout",
    "--topology-label",
    "--port",
    "--respect-last-seen",
)


def _ready_names(kind: str, err: TextIO) -> completion.Dynamic:
    """The ready nodes or peers of the cluster the command line names (as Kilo's
    ``showconf node|peer`` completion offers; Kilo's crashes, its backend not being set
    up during completion)."""

    def names(request: completion.Request) -> list[str]:
        given = [f"{f}={v}" for f, v in request.values.items() if f in _CLUSTER_FLAGS]
        try:
            args = build_parser().parse_args([*given, "list"])
            args.timeout = min(args.timeout, COMPLETION_TIMEOUT)
            ctx = commands.Context(args, io.StringIO(), io.StringIO())
            cluster = ctx.load()
        except (commands.UsageError, KiloError) as exc:
            print(f"[Error] {printable(str(exc))}", file=err)
            return []
        if kind == "node":
            return [n.name for n in ready_nodes(cluster.nodes, ctx.now())]
        return [p.name for p in ready_peers(cluster.peers)]

    return names


def _complete(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """cobra's hidden ``__complete`` command, which the completion scripts run."""
    tree = completion_tree(build_parser())
    dynamic = {kind: _ready_names(kind, err) for kind in ("node", "peer")}
    candidates, directive = completion.complete(tree, list(argv[1:]) or [""], dynamic)
    descriptions = argv[0] == completion.REQUEST
    for variable in (f"{PROG.upper()}_COMPLETION_DESCRIPTIONS", "COBRA_COMPLETION_DESCRIPTIONS"):
        with contextlib.suppress(ValueError):
            descriptions = descriptions and gosyntax.parse_bool(os.environ.get(variable, ""))
            break
    out.write(completion.answer(candidates, directive, descriptions=descriptions))
    print(f"Completion ended with directive: {completion.directive_name(directive)}", file=err)
    return 0


def _escaping(stream: TextIO) -> TextIO:
    """``stream``, writing what it cannot encode as backslash escapes instead of failing.

    A hand-written or JSON dump can hold lone surrogates (``"\\ud800"``) in a location or
    a name; printing one must not end the command with a ``UnicodeEncodeError``.
    """
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")
    return stream


def _exiting() -> None:
    """The command is done and the process ends: keep the cyclic garbage collector off
    what is left.

    What a command built on a 5000-node dump outlives it in the core's memos (a full
    mesh's plan: some 230 000 objects, the topology's segments, routes and rules), and
    the interpreter's finalization runs full collections over the whole heap before it
    exits: 0.4 s of a full mesh's ``plan`` (1.7 s of CPU against 1.3 s with this, on a
    2-core EPYC). ``gc.freeze`` moves every object to the permanent generation, which no
    collection walks; reference counting still frees what finalization drops. Only for
    kgctl's own process: a caller that runs commands in-process (the tests) keeps
    collecting.
    """
    gc.freeze()


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or _escaping(sys.stdout)
    err = err or _escaping(sys.stderr)
    own_process = argv is None  # kgctl itself, not a caller (a test) running a command
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in completion.REQUESTS:
        return _complete(argv, out, err)
    parser = build_parser()
    try:
        args = parser.parse_args(arguments.explicit_bools(argv, GO_BOOLS))
        if getattr(args, "command", None) == "showconf":
            for name, value in SHOWCONF_DEFAULTS.items():
                if not hasattr(args, name):
                    setattr(args, name, list(value) if isinstance(value, list) else value)
        check = getattr(args, "check", None)
        problem = check(args) if check is not None else None
        if problem:
            raise commands.UsageError(problem)
        if getattr(args, "run", None) is None:
            # Like Kilo's kgctl: a command group without its subcommand prints help.
            getattr(args, "help_parser", parser).print_help(out)
            return 0
        result: int = args.run(commands.Context(args, out, err))
        if own_process:
            _exiting()
        return result
    except commands.UsageError as exc:
        print(f"{PROG}: {printable(str(exc))}", file=err)
        return 2
    except KiloError as exc:
        print(f"{PROG}: {printable(str(exc))}", file=err)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
