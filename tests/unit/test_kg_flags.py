"""``kg``'s command line: Kilo's flags, defaults, syntax and start-up checks (reference §3)."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from ipaddress import ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo import __version__
from kilo.agent import __main__ as kg
from kilo.agent import command_line
from kilo.agent.cobra import CommandLineError
from kilo.agent.command_line import PERSISTENT_FLAGS, ROOT_FLAGS, WEBHOOK_FLAGS, Show, help_text
from kilo.agent.settings import (
    AgentSettings,
    BackendSettings,
    CNISettings,
    HTTPSettings,
    LogLevel,
    LogSettings,
    MeshSettings,
    WebhookSettings,
    WireGuardSettings,
)
from kilo.mesh.gosyntax import go_quote, parse_duration
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import Compatibility, Encapsulation, Granularity


def no_hostname() -> str | None:
    return None


def parse_args(argv: list[str], *, hostname_fallback: Callable[[], str | None]) -> AgentSettings:
    """The agent's settings the command line asks for (anything else fails the test)."""
    outcome = command_line.read(argv, hostname_fallback=hostname_fallback)
    assert isinstance(outcome, AgentSettings), outcome
    return outcome


def parse(*argv: str, hostname: str | None = "os-host") -> AgentSettings:
    return parse_args(list(argv), hostname_fallback=lambda: hostname)


def webhook_of(*argv: str) -> WebhookSettings:
    outcome = command_line.read(["webhook", *argv], hostname_fallback=no_hostname)
    assert isinstance(outcome, WebhookSettings), outcome
    return outcome


def error_of(*argv: str, hostname: str | None = "os-host") -> str:
    with pytest.raises(CommandLineError) as caught:
        parse(*argv, hostname=hostname)
    return str(caught.value)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kg.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# --- defaults -------------------------------------------------------------------------------

DEFAULTS = [
    ("backend.name", "kubernetes"),
    ("backend.kubeconfig", ""),
    ("backend.master", ""),
    ("backend.topology_label", "topology.kubernetes.io/region"),
    ("mesh.hostname", "os-host"),
    ("mesh.granularity", Granularity.LOCATION),
    ("mesh.subnet", ip_network("10.4.0.0/16")),
    ("mesh.port", 51820),
    ("mesh.local", True),
    ("mesh.encapsulation", Encapsulation.ALWAYS),
    ("mesh.compatibility", Compatibility.NONE),
    ("mesh.service_cidrs", ()),
    ("mesh.internal_cidrs", ()),
    ("mesh.prioritise_private_addresses", False),
    ("mesh.iptables_forward_rules", False),
    ("mesh.resync_period", 30.0),
    ("mesh.clean_up", True),
    ("wireguard.interface", "kilo0"),
    ("wireguard.create_interface", True),
    ("wireguard.clean_up_interface", False),
    ("wireguard.mtu", None),
    ("cni.enabled", True),
    ("cni.path", "/etc/cni/net.d/10-kilo.conflist"),
    ("http.listen", ":1107"),
    ("log.level", LogLevel.INFO),
]


def attribute(settings: object, path: str) -> object:
    for name in path.split("."):
        settings = getattr(settings, name)
    return settings


@pytest.mark.parametrize(("path", "expected"), DEFAULTS, ids=[p for p, _ in DEFAULTS])
def test_default(path, expected):
    assert attribute(parse(), path) == expected


def test_dataclass_defaults_are_the_flag_defaults():
    assert parse() == AgentSettings(mesh=MeshSettings(hostname="os-host"))


# Reference §3.2, in its order, plus cobra's help flag.
REFERENCE_FLAGS = [
    *["backend", "clean-up", "clean-up-interface", "create-interface", "cni", "cni-path"],
    *["compatibility", "encapsulate", "mesh-granularity", "kubeconfig", "master", "hostname"],
    *["interface", "listen", "local", "mtu", "topology-label", "port", "service-cidr"],
    *["internal-cidr", "subnet", "resync-period", "iptables-forward-rules"],
    *["prioritise-private-addresses", "version", "log-level", "help"],
]


def test_every_flag_of_the_reference_is_in_the_help():
    text = help_text()
    for flag in REFERENCE_FLAGS:
        assert f"--{flag} " in text
    assert "-h, --help" in text


# --- values of every flag -------------------------------------------------------------------

VALUES = [
    (["--backend=kubernetes"], "backend.name", "kubernetes"),
    (["--kubeconfig", "/k"], "backend.kubeconfig", "/k"),
    (["--master=https://api:6443"], "backend.master", "https://api:6443"),
    (["--topology-label=zone"], "backend.topology_label", "zone"),
    (["--hostname=node-1"], "mesh.hostname", "node-1"),
    (["--mesh-granularity=full"], "mesh.granularity", Granularity.FULL),
    (["--mesh-granularity=cross"], "mesh.granularity", Granularity.CROSS),
    (["--subnet=10.5.0.1/24"], "mesh.subnet", ip_network("10.5.0.0/24")),
    (["--port=51821"], "mesh.port", 51821),
    (["--encapsulate=crosssubnet"], "mesh.encapsulation", Encapsulation.CROSSSUBNET),
    (["--encapsulate=never"], "mesh.encapsulation", Encapsulation.NEVER),
    (["--compatibility=flannel"], "mesh.compatibility", Compatibility.FLANNEL),
    (["--compatibility=cilium"], "mesh.compatibility", Compatibility.CILIUM),
    (["--compatibility="], "mesh.compatibility", Compatibility.NONE),
    (["--resync-period=1m30s"], "mesh.resync_period", 90.0),
    (["--resync-period=500ms"], "mesh.resync_period", 0.5),
    (["--interface=wg0"], "wireguard.interface", "wg0"),
    (["--mtu=1380"], "wireguard.mtu", 1380),
    (["--mtu=1420"], "wireguard.mtu", 1420),
    (["--mtu=576"], "wireguard.mtu", 576),
    (["--mtu=68"], "wireguard.mtu", 68),
    (["--mtu=65535"], "wireguard.mtu", 65535),
    (["--mtu=1280", "--subnet=fd00::/64"], "wireguard.mtu", 1280),
    (["--mtu=auto"], "wireguard.mtu", None),
    (["--cni-path=/x.conflist"], "cni.path", "/x.conflist"),
    (["--cni=false", "--cni-path="], "cni.path", ""),
    (["--listen=127.0.0.1:9000"], "http.listen", "127.0.0.1:9000"),
    (["--listen=[::1]:http"], "http.listen", "[::1]:http"),
    (["--listen=localhost:"], "http.listen", "localhost:"),
    (["--interface=a", "--interface=b"], "wireguard.interface", "b"),
    (["--interface=wg-a.b_c@15byte"], "wireguard.interface", "wg-a.b_c@15byte"),
    (["--master=http://127.0.0.1:8080"], "backend.master", "http://127.0.0.1:8080"),
    (
        ["--master=https://[fd00::1]/k8s/clusters/c-1"],
        "backend.master",
        "https://[fd00::1]/k8s/clusters/c-1",
    ),
    (["--topology-label="], "backend.topology_label", ""),
    (["--topology-label=example.com/site"], "backend.topology_label", "example.com/site"),
    # pflag gives a string flag the next argument, whatever it looks like.
    (["--kubeconfig", "--cni=false"], "backend.kubeconfig", "--cni=false"),
    # An empty --hostname asks the operating system, as Kilo does.
    (["--hostname="], "mesh.hostname", "os-host"),
] + [([f"--log-level={level.value}"], "log.level", level) for level in LogLevel]


@pytest.mark.parametrize(
    ("argv", "path", "expected"), VALUES, ids=[" ".join(a) for a, *_ in VALUES]
)
def test_flag_value(argv, path, expected):
    assert attribute(parse(*argv), path) == expected


# --- Kilo's bool syntax ---------------------------------------------------------------------

BOOL_FLAGS = [
    ("clean-up", "mesh.clean_up", True),
    ("clean-up-interface", "wireguard.clean_up_interface", False),
    ("create-interface", "wireguard.create_interface", True),
    ("cni", "cni.enabled", True),
    ("local", "mesh.local", True),
    ("iptables-forward-rules", "mesh.iptables_forward_rules", False),
    ("prioritise-private-addresses", "mesh.prioritise_private_addresses", False),
]
TRUE_TEXTS = ["1", "t", "T", "TRUE", "true", "True"]
FALSE_TEXTS = ["0", "f", "F", "FALSE", "false", "False"]


@pytest.mark.parametrize(("flag", "path", "default"), BOOL_FLAGS, ids=[f for f, *_ in BOOL_FLAGS])
def test_bool_flag_syntax(flag, path, default):
    assert attribute(parse(), path) is default
    assert attribute(parse(f"--{flag}"), path) is True
    for text in TRUE_TEXTS:
        assert attribute(parse(f"--{flag}={text}"), path) is True
    for text in FALSE_TEXTS:
        assert attribute(parse(f"--{flag}={text}"), path) is False


@pytest.mark.parametrize(("flag", "path", "default"), BOOL_FLAGS, ids=[f for f, *_ in BOOL_FLAGS])
def test_bool_flag_with_a_separate_value_makes_the_value_a_positional_argument(flag, path, default):
    # pflag: "--cni false" is "--cni" (true) followed by the argument "false", which Kilo's
    # root command rejects as an unknown command.
    assert error_of(f"--{flag}", "false") == 'unknown command "false" for "kg"'
    assert error_of(f"--{flag}", "true") == 'unknown command "true" for "kg"'


@pytest.mark.parametrize("text", ["yes", "no", "", "tRUE", "2"])
def test_bool_flag_rejects_other_words(text):
    assert error_of(f"--cni={text}") == (
        f'invalid argument "{text}" for "--cni" flag: '
        f'strconv.ParseBool: parsing "{text}": invalid syntax'
    )


def test_positional_arguments_are_rejected():
    assert error_of("node-1") == 'unknown command "node-1" for "kg"'
    # cobra finds the stray argument before it parses flags: it is reported first.
    assert error_of("--cni", "false", "--bogus") == 'unknown command "false" for "kg"'


def test_arguments_after_double_dash_are_ignored_as_in_kilo():
    assert parse("--hostname=n", "--", "anything") == parse("--hostname=n")


# --- pflag errors (before any start-up check) -----------------------------------------------

PFLAG_ERRORS = [
    (["--bogus"], "unknown flag: --bogus"),
    (["--port"], "flag needs an argument: --port"),
    (["-x"], "unknown shorthand flag: 'x' in -x"),
    (["-hx"], "unknown shorthand flag: 'x' in -x"),
    (["---port=1"], "bad flag syntax: ---port=1"),
    (["--=1"], "bad flag syntax: --=1"),
    (
        ["--port=abc"],
        'invalid argument "abc" for "--port" flag: strconv.ParseInt: parsing "abc": invalid syntax',
    ),
    (
        ["--port= 1"],
        'invalid argument " 1" for "--port" flag: strconv.ParseInt: parsing " 1": invalid syntax',
    ),
    (
        ["--port=99999999999999999999"],
        'invalid argument "99999999999999999999" for "--port" flag: '
        'strconv.ParseInt: parsing "99999999999999999999": value out of range',
    ),
    (
        ["--resync-period=30"],
        'invalid argument "30" for "--resync-period" flag: time: missing unit in duration "30"',
    ),
    (
        ["--help=maybe"],
        'invalid argument "maybe" for "-h, --help" flag: '
        'strconv.ParseBool: parsing "maybe": invalid syntax',
    ),
    # Flag errors come before Kilo's own checks, even the log level's.
    (
        ["--log-level=loud", "--port=x"],
        'invalid argument "x" for "--port" flag: strconv.ParseInt: parsing "x": invalid syntax',
    ),
]


@pytest.mark.parametrize(
    ("argv", "message"), PFLAG_ERRORS, ids=[" ".join(a) for a, _ in PFLAG_ERRORS]
)
def test_pflag_error(argv, message):
    assert error_of(*argv) == message


@pytest.mark.parametrize(
    ("text", "value"),
    [("0x10", 16), ("010", 8), ("0o17", 15), ("0b11", 3), ("1_000", 1000), ("+443", 443)],
)
def test_port_is_a_go_integer(text, value):
    assert parse(f"--port={text}").mesh.port == value


# --- start-up checks: messages and order (reference §3.3) -----------------------------------

# (step, argv, outcome): an error message, or the version text. The hostname step fails
# when no --hostname is given and the operating system cannot name the host.
STEPS: list[tuple[str, list[str], str | Show]] = [
    (
        "log-level",
        ["--log-level=loud"],
        "log level loud unknown; possible values are: all, debug, info, warn, error, none",
    ),
    ("version", ["--version"], Show(f"{__version__}\n")),
    (
        "subnet",
        ["--subnet=10.4.0.0"],
        'failed to parse "10.4.0.0" as CIDR: invalid CIDR address: 10.4.0.0',
    ),
    ("hostname", [], "failed to determine hostname"),
    (
        "encapsulate",
        ["--encapsulate=sometimes"],
        "encapsulation sometimes unknown; possible values are: never, crosssubnet, always",
    ),
    (
        "compatibility",
        ["--compatibility=calico"],
        "compatibility calico unknown; possible values are: flannel, cilium",
    ),
    (
        "mesh-granularity",
        ["--mesh-granularity=auto"],
        "mesh granularity auto unknown; possible values are: location, full, cross",
    ),
    ("backend", ["--backend=file"], "backend file unknown; possible values are: kubernetes"),
    ("port", ["--port=65536"], "invalid port: port must be in range [1:65535], but got 65536"),
    (
        "service-cidr",
        ["--service-cidr=10.96.0.0/33"],
        'failed to parse "10.96.0.0/33" as CIDR: invalid CIDR address: 10.96.0.0/33',
    ),
    (
        "internal-cidr",
        ["--internal-cidr=10.0.0.5"],
        'failed to parse "10.0.0.5" as CIDR: invalid CIDR address: 10.0.0.5',
    ),
    (
        "mtu",
        ["--mtu=big"],
        'failed to parse MTU "big": strconv.ParseUint: parsing "big": invalid syntax',
    ),
    # Checks Kilo does not make, after all of Kilo's (docs/compatibility.md).
    (
        "node-name",
        ["--hostname=Node_1"],
        'invalid hostname "Node_1": --hostname must be this node\'s Kubernetes name, a '
        "lower-case RFC 1123 subdomain (lower-case letters, digits, '-' and '.', at most 253 "
        "characters)",
    ),
    (
        "master",
        ["--master=10.0.0.1:99999"],
        'failed to create Kubernetes config: invalid --master "10.0.0.1:99999": port must be '
        "in range [1:65535], but got 99999",
    ),
    ("mtu-range", ["--mtu=0"], "invalid MTU: MTU must be in range [68:65535], but got 0"),
    (
        "interface",
        ["--interface="],
        'invalid interface name "": it is empty',
    ),
    (
        "topology-label",
        ["--topology-label=topology.kubernetes.io/"],
        'invalid topology label "topology.kubernetes.io/": its name is empty',
    ),
    (
        "cni-path",
        ["--cni-path="],
        'invalid CNI path "": give the CNI configuration file to manage, or --cni=false',
    ),
    (
        "listen",
        ["--listen=::bad"],
        "failed to listen on ::bad: listen tcp: address ::bad: too many colons in address",
    ),
]


def outcome(argv: list[str], *, hostname_known: bool) -> str | Show:
    if hostname_known:
        argv = ["--hostname=n", *argv]
    try:
        result = command_line.read(argv, hostname_fallback=no_hostname)
    except CommandLineError as exc:
        return str(exc)
    if isinstance(result, Show):
        return result
    raise AssertionError(f"{argv} was accepted")


@pytest.mark.parametrize(("step", "argv", "expected"), STEPS, ids=[s for s, *_ in STEPS])
def test_startup_check(step, argv, expected):
    assert outcome(argv, hostname_known=step != "hostname") == expected


def _flags_of(step: tuple[str, list[str], str | Show]) -> set[str]:
    name, argv, _ = step
    named = {arg[2:].partition("=")[0] for arg in argv}
    return named | {"hostname"} if name == "hostname" else named


# Two steps that set the same flag cannot both fail: the last value wins.
PAIRS = [
    (i, j)
    for i, j in itertools.combinations(range(len(STEPS)), 2)
    if not _flags_of(STEPS[i]) & _flags_of(STEPS[j])
]


@pytest.mark.parametrize(
    ("first", "second"), PAIRS, ids=[f"{STEPS[i][0]}-before-{STEPS[j][0]}" for i, j in PAIRS]
)
def test_startup_checks_run_in_kilos_order(first, second):
    first_step, first_argv, expected = STEPS[first]
    second_step, second_argv, _ = STEPS[second]
    hostname_known = "hostname" not in (first_step, second_step)
    for argv in ([*first_argv, *second_argv], [*second_argv, *first_argv]):
        assert outcome(argv, hostname_known=hostname_known) == expected


def test_every_cidr_of_a_list_is_checked_service_cidrs_first():
    assert error_of("--internal-cidr=bad-internal", "--service-cidr=10.0.0.0/8,bad-service") == (
        'failed to parse "bad-service" as CIDR: invalid CIDR address: bad-service'
    )


def test_hostname_fallback_is_only_asked_when_hostname_is_empty():
    calls: list[int] = []

    def fallback() -> str | None:
        calls.append(1)
        return "from-os"

    assert parse_args(["--hostname=n"], hostname_fallback=fallback).mesh.hostname == "n"
    assert calls == []
    assert parse_args([], hostname_fallback=fallback).mesh.hostname == "from-os"
    assert calls == [1]
    # Not asked at all when an earlier check fails.
    with pytest.raises(CommandLineError):
        parse_args(["--subnet=x"], hostname_fallback=fallback)
    assert calls == [1]


def test_empty_hostname_from_the_os_is_no_hostname():
    assert error_of(hostname="") == "failed to determine hostname"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", 'strconv.ParseUint: parsing "": invalid syntax'),
        ("-1", 'strconv.ParseUint: parsing "-1": invalid syntax'),
        ("+1", 'strconv.ParseUint: parsing "+1": invalid syntax'),
        ("0x10", 'strconv.ParseUint: parsing "0x10": invalid syntax'),
        ("Auto", 'strconv.ParseUint: parsing "Auto": invalid syntax'),
        ("4294967296", 'strconv.ParseUint: parsing "4294967296": value out of range'),
    ],
)
def test_mtu_rejected(text, error):
    assert error_of(f"--mtu={text}") == f'failed to parse MTU "{text}": {error}'


@pytest.mark.parametrize("mtu", ["0", "67", "65536", "70000", "4294967295"])
def test_mtu_out_of_range_is_rejected_deviation(mtu):
    # Kilo takes any uint32: 0 makes a kernel WireGuard interface carry nothing (IPv4 is
    # disabled below 68 bytes) at the first apply, and wireguard-go refuses it.
    assert error_of(f"--mtu={mtu}") == (
        f"invalid MTU: MTU must be in range [68:65535], but got {mtu}"
    )


def test_mtu_of_an_ipv6_subnet_is_at_least_1280_deviation():
    # Below 1280 bytes the kernel removes a device's IPv6 addresses.
    assert error_of("--subnet=fd00:4::/64", "--mtu=1279") == (
        "invalid MTU: MTU must be in range [1280:65535] for IPv6, but got 1279"
    )
    assert error_of("--subnet=fd00:4::/64", "--mtu=50") == (
        "invalid MTU: MTU must be in range [1280:65535], but got 50"
    )
    assert parse("--subnet=10.4.0.0/16", "--mtu=1279").wireguard.mtu == 1279


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "it is empty"),
        ("a" * 16, "it is 16 bytes long; Linux allows at most 15"),
        ("a" * 40, "it is 40 bytes long; Linux allows at most 15"),
        ("\u00e9" * 8, "it is 16 bytes long; Linux allows at most 15"),
        (".", '"." and ".." are not interface names'),
        ("..", '"." and ".." are not interface names'),
        ("a/b", 'it contains "/"; interface names cannot contain "/", ":", "%" or white space'),
        ("eth0:1", 'it contains ":"; interface names cannot contain "/", ":", "%" or white space'),
        ("wg%d", 'it contains "%"; interface names cannot contain "/", ":", "%" or white space'),
        (
            "a b",
            'it contains white space; interface names cannot contain "/", ":", "%" or white space',
        ),
        (
            "a\tb",
            'it contains white space; interface names cannot contain "/", ":", "%" or white space',
        ),
        # The kernel's isspace counts 0xA0, the second byte of "\u00e0" in UTF-8.
        (
            "k\u00e0",
            'it contains white space; interface names cannot contain "/", ":", "%" or white space',
        ),
    ],
)
def test_interface_name_is_one_the_kernel_accepts_deviation(name, problem):
    assert error_of(f"--interface={name}") == f"invalid interface name {go_quote(name)}: {problem}"


@pytest.mark.parametrize("name", ["kilo0", "a" * 15, "wg.0", "wg-0_x", "..a", "\u00e9" * 7])
def test_interface_names_the_kernel_accepts(name):
    assert parse(f"--interface={name}").wireguard.interface == name


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("1107", "address 1107: missing port in address"),
        ("::bad", "address ::bad: too many colons in address"),
        ("[::1", "address [::1: missing ']' in address"),
        ("[::1]", "address [::1]: missing port in address"),
        ("[::1]x:1", "address [::1]x:1: missing port in address"),
        ("[::1]:1:2", "address [::1]:1:2: too many colons in address"),
        ("a[b:1", "address a[b:1: unexpected '[' in address"),
        ("a]b:1", "address a]b:1: unexpected ']' in address"),
        (":99999", "address 99999: invalid port"),
        (":-1", "address -1: invalid port"),
        (":99999999999999999999999", "address 99999999999999999999999: invalid port"),
        (":no-such-service", "lookup tcp/no-such-service: unknown port"),
        (":0x50", "lookup tcp/0x50: unknown port"),
        ("bad!host:1107", "lookup bad!host: no such host"),
        ("010.0.0.1:1107", "lookup 010.0.0.1: no such host"),
        ("1.2.3:1107", "lookup 1.2.3: no such host"),
        ("-a:1107", "lookup -a: no such host"),
    ],
)
def test_listen_is_checked_before_anything_is_created(listen, reason):
    # Kilo finds these only when it binds, after creating its key and interface.
    assert error_of(f"--listen={listen}") == f"failed to listen on {listen}: listen tcp: {reason}"


@pytest.mark.parametrize(
    "listen", [":1107", ":", "127.0.0.1:1107", "[::1]:0", ":HTTP", ":+80", "localhost:1107"]
)
def test_listen_addresses_go_accepts(listen):
    assert parse(f"--listen={listen}").http.listen == listen


@pytest.mark.parametrize(
    ("master", "problem"),
    [
        ("::not a url", "it contains white space or control characters"),
        ("::not-a-url", "it has no host"),
        ("api:99999", "port must be in range [1:65535], but got 99999"),
        ("ftp://api", "scheme ftp unknown; possible values are: http, https"),
        ("https://", "it has no host"),
        ("https://:6443", "it has no host"),
        ("https://api:0", "port must be in range [1:65535], but got 0"),
        ("https://api:99999", "port must be in range [1:65535], but got 99999"),
        ("https://api:x", 'port "x" is not a number'),
        ("https://api:", 'port "" is not a number'),
        ("https://bad!host", 'host "bad!host" is not an IP address or a DNS name'),
        ("https://[::1", "it is not a URL: Invalid IPv6 URL"),
        (
            "https://[api]:6443",
            "it is not a URL: 'api' does not appear to be an IPv4 or IPv6 address",
        ),
        ("https://[::1]x", 'it is not a URL: "x" follows the host'),
    ],
)
def test_master_is_a_url_the_client_can_use_deviation(master, problem):
    # Kilo's client-go panics on most of these, after nothing.
    assert error_of(f"--master={master}") == (
        f"failed to create Kubernetes config: invalid --master {go_quote(master)}: {problem}"
    )


@pytest.mark.parametrize("hostname", ["Node-1", "node_1", "-node", "node.", "a" * 254, "n\u00f6de"])
def test_hostname_must_be_able_to_name_a_node_deviation(hostname):
    # Kilo runs on with such a name and never finds its Node: it silently does nothing.
    assert error_of(f"--hostname={hostname}").startswith(
        f"invalid hostname {go_quote(hostname)}: --hostname must be this node's Kubernetes name"
    )


@pytest.mark.parametrize("master", ["api:6443", "10.0.0.1:6443", "[fd00::1]:6443"])
def test_a_bare_host_and_port_is_https_as_client_go_completes_it(master):
    assert parse(f"--master={master}").backend.master == f"https://{master}"


def test_a_host_name_from_the_os_is_lower_cased_as_the_kubelet_does_deviation():
    assert parse(hostname=" MyHost\n").mesh.hostname == "myhost"


def test_a_host_name_from_the_os_that_cannot_name_a_node_says_so():
    assert error_of(hostname="My_Host") == (
        'invalid hostname "my_host": the host name (--hostname is empty) must be this node\'s '
        "Kubernetes name, a lower-case RFC 1123 subdomain (lower-case letters, digits, '-' and "
        "'.', at most 253 characters)"
    )


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        (
            "a b",
            "its name \"a b\" must consist of alphanumeric characters, '-', '_' or '.', and "
            "must start and end with an alphanumeric character",
        ),
        ("/region", "its prefix before '/' is empty"),
        ("example.com/", "its name is empty"),
        ("a/b/c", "it contains more than one '/'"),
        (
            "Example.com/region",
            'its prefix "Example.com" is not a lower-case DNS subdomain of at most 253 characters',
        ),
        ("r" * 64, "its name is 64 characters long; at most 63"),
    ],
)
def test_topology_label_is_a_label_key_deviation(label, problem):
    # Kilo takes any string; one that is no label key can never match, so every node lands
    # in one location without a word.
    assert error_of(f"--topology-label={label}") == (
        f"invalid topology label {go_quote(label)}: {problem}"
    )


def test_cni_path_may_be_empty_only_without_cni_deviation():
    assert error_of("--cni-path=") == (
        'invalid CNI path "": give the CNI configuration file to manage, or --cni=false'
    )
    assert error_of("--cni-path= ").startswith('invalid CNI path " ":')
    assert parse("--cni=false", "--cni-path=").cni == CNISettings(enabled=False, path="")


@pytest.mark.parametrize("port", ["0", "-1", "65536"])
def test_port_out_of_range(port):
    assert error_of(f"--port={port}") == (
        f"invalid port: port must be in range [1:65535], but got {port}"
    )


def test_log_level_is_case_sensitive_and_may_not_be_empty():
    assert error_of("--log-level=INFO").startswith("log level INFO unknown;")
    assert error_of("--log-level=").startswith("log level  unknown;")


# --- Go durations ---------------------------------------------------------------------------

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("30s", 30 * S),
        ("1m30s", 90 * S),
        ("500ms", S // 2),
        ("1.5h", 5400 * S),
        ("1h2m3.5s", 3723 * S + S // 2),
        ("2h45m", 9900 * S),
        ("-2ms", -2_000_000),
        ("+1s", S),
        ("0", 0),
        ("-0", 0),
        ("0s", 0),
        ("1ns", 1),
        ("1us", 1000),
        ("1\u00b5s", 1000),
        ("1\u03bcs", 1000),
        (".5s", S // 2),
        ("1.s", S),
        ("1.0000000001s", S),
        ("2562047h47m16.854775807s", (1 << 63) - 1),
    ],
)
def test_go_duration(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        ("s", 'time: invalid duration "s"'),
        (".s", 'time: invalid duration ".s"'),
        ("1", 'time: missing unit in duration "1"'),
        ("1.5.5s", 'time: missing unit in duration "1.5.5s"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        ("1S", 'time: unknown unit "S" in duration "1S"'),
        ("1 s", 'time: unknown unit " s" in duration "1 s"'),
        ("1é", 'time: unknown unit "\\xc3\\xa9" in duration "1\\xc3\\xa9"'),
        ("2562047h47m16.854775808s", 'time: invalid duration "2562047h47m16.854775808s"'),
        ("9999999999999999999h", 'time: invalid duration "9999999999999999999h"'),
    ],
)
def test_go_duration_errors(text, error):
    with pytest.raises(ValueError, match=r"^time: ") as caught:
        parse_duration(text)
    assert str(caught.value) == error


# --- CIDR lists -----------------------------------------------------------------------------


def nets(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(ip_network(t) for t in texts)


@pytest.mark.parametrize("flag", ["service-cidr", "internal-cidr"])
def test_cidr_lists_are_repeatable_and_comma_separated(flag):
    attr = flag.replace("-", "_") + "s"
    settings = parse(f"--{flag}=10.96.0.0/12,fd00::/108", f"--{flag}", "10.0.0.5/32")
    assert getattr(settings.mesh, attr) == nets("10.96.0.0/12", "fd00::/108", "10.0.0.5/32")
    # Masked, as Go's net.ParseCIDR returns the network.
    assert getattr(parse(f"--{flag}=10.96.0.1/12").mesh, attr) == nets("10.96.0.0/12")
    # An empty value is an empty list; later values are added to it.
    assert getattr(parse(f"--{flag}=").mesh, attr) == ()
    assert getattr(parse(f"--{flag}=", f"--{flag}=10.0.0.0/8").mesh, attr) == nets("10.0.0.0/8")
    # CSV quoting, as pflag reads string slices.
    assert getattr(parse(f'--{flag}="10.0.0.0/8",10.1.0.0/16').mesh, attr) == nets(
        "10.0.0.0/8", "10.1.0.0/16"
    )


def test_cidr_list_items_are_not_trimmed():
    assert error_of("--service-cidr=10.0.0.0/8, 10.1.0.0/16") == (
        'failed to parse " 10.1.0.0/16" as CIDR: invalid CIDR address:  10.1.0.0/16'
    )
    assert error_of("--internal-cidr=10.0.0.0/8,,10.1.0.0/16") == (
        'failed to parse "" as CIDR: invalid CIDR address: '
    )


def test_subnet_is_masked():
    assert parse("--subnet=172.31.254.7/24").mesh.subnet == ip_network("172.31.254.0/24")


# --- deliberate differences -----------------------------------------------------------------


def test_port_message_says_must_deviation():
    # Kilo: "invalid port: port mus be in range [1:65535], but got 0".
    assert error_of("--port=0") == "invalid port: port must be in range [1:65535], but got 0"


@pytest.mark.parametrize("value", ["calico", "Flannel", "flanel", "ipip", "none"])
def test_unknown_compatibility_is_rejected_deviation(value):
    # Kilo silently runs IPIP for any unknown value.
    assert error_of(f"--compatibility={value}") == (
        f"compatibility {value} unknown; possible values are: flannel, cilium"
    )


# --- Kilo's shipped manifests ---------------------------------------------------------------


def test_kubeadm_manifest_args():
    # $(NODE_NAME) is expanded by the kubelet before kg sees it.
    settings = parse("--kubeconfig=/etc/kubernetes/kubeconfig", "--hostname=node-1")
    assert settings.backend == BackendSettings(kubeconfig="/etc/kubernetes/kubeconfig")
    assert settings.mesh == MeshSettings(hostname="node-1")
    assert settings == AgentSettings(
        mesh=MeshSettings(hostname="node-1"),
        backend=BackendSettings(kubeconfig="/etc/kubernetes/kubeconfig"),
    )


def test_flannel_manifest_args():
    settings = parse(
        "--kubeconfig=/etc/kubernetes/kubeconfig",
        "--hostname=node-1",
        "--cni=false",
        "--compatibility=flannel",
        "--local=false",
        "--internal-cidr=10.0.0.5/32",
    )
    assert settings.cni == CNISettings(enabled=False)
    assert settings.mesh.compatibility is Compatibility.FLANNEL
    assert settings.mesh.local is False
    assert settings.mesh.internal_cidrs == nets("10.0.0.5/32")


def test_cilium_manifest_args():
    settings = parse(
        "--kubeconfig=/etc/kubernetes/kubeconfig",
        "--hostname=node-1",
        "--cni=false",
        "--compatibility=cilium",
        "--local=false",
        "--encapsulate=crosssubnet",
        "--clean-up-interface=true",
        "--subnet=172.31.254.0/24",
        "--log-level=all",
        "--internal-cidr=10.0.0.5/32",
    )
    assert settings == AgentSettings(
        mesh=MeshSettings(
            hostname="node-1",
            compatibility=Compatibility.CILIUM,
            local=False,
            encapsulation=Encapsulation.CROSSSUBNET,
            subnet=ip_network("172.31.254.0/24"),
            internal_cidrs=nets("10.0.0.5/32"),
        ),
        backend=BackendSettings(kubeconfig="/etc/kubernetes/kubeconfig"),
        wireguard=WireGuardSettings(clean_up_interface=True),
        cni=CNISettings(enabled=False),
        log=LogSettings(level=LogLevel.ALL),
    )


def test_userspace_manifest_args():
    settings = parse(
        "--kubeconfig=/etc/kubernetes/kubeconfig",
        "--hostname=node-1",
        "--create-interface=false",
        "--interface=kilo0",
    )
    assert settings.wireguard == WireGuardSettings(create_interface=False, interface="kilo0")


def test_e2e_args():
    settings = parse(
        "--hostname=n",
        "--create-interface=false",
        "--mesh-granularity=full",
        "--kubeconfig=/k",
        "--internal-cidr=172.18.0.2/32",
    )
    assert settings == AgentSettings(
        mesh=MeshSettings(
            hostname="n",
            granularity=Granularity.FULL,
            internal_cidrs=nets("172.18.0.2/32"),
        ),
        backend=BackendSettings(kubeconfig="/k"),
        wireguard=WireGuardSettings(create_interface=False),
        http=HTTPSettings(),
    )


def test_webhook_manifest_args():
    settings = webhook_of(
        "--cert-file=/run/secrets/tls/tls.crt",
        "--key-file=/run/secrets/tls/tls.key",
        "--listen-metrics=:1107",
        "--listen=:8443",
    )
    assert settings == WebhookSettings(
        cert_file="/run/secrets/tls/tls.crt", key_file="/run/secrets/tls/tls.key"
    )


# --- subcommands, help and version ----------------------------------------------------------


def shown(*argv: str) -> str:
    result = command_line.read(list(argv), hostname_fallback=no_hostname)
    assert isinstance(result, Show), result
    return result.text


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--version=true"],
        ["version"],
        ["--log-level=debug", "version"],
        # The version command has no pre-run: Kilo does not check the log level there.
        ["version", "--log-level=loud"],
        # --version wins over every check after the log level's.
        ["--version", "--subnet=x", "--port=0", "--mtu=x"],
    ],
)
def test_version(argv):
    assert shown(*argv) == f"{__version__}\n"


def test_version_false_runs_the_checks():
    assert error_of("--version=false", hostname=None) == "failed to determine hostname"


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["help"], ["--port=0", "--help"]])
def test_help(argv):
    assert shown(*argv) == help_text()


def test_help_for_a_subcommand():
    assert shown("webhook", "--help") == help_text("webhook")
    assert shown("help", "webhook") == help_text("webhook")
    assert "--cert-file string" in help_text("webhook")
    assert "--log-level string" in help_text("webhook")


def test_flag_errors_win_over_help():
    assert error_of("--help", "--bogus") == "unknown flag: --bogus"


def test_webhook_cluster_flags_are_additions():
    # Kilo's webhook has no cluster access; these feed the allowed-IP overlap checks.
    settings = webhook_of("--kubeconfig=/etc/kubernetes/kubeconfig", "--master", "https://k:6443")
    assert settings == WebhookSettings(
        kubeconfig="/etc/kubernetes/kubeconfig", master="https://k:6443"
    )
    assert "--kubeconfig string" in help_text("webhook")
    assert "--master string" in help_text("webhook")
    assert error_of("webhook", "--hostname=x") == "unknown flag: --hostname"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--listen=:99999"],
            "failed to listen on :99999: listen tcp: address 99999: invalid port",
        ),
        (
            ["--listen-metrics=metrics"],
            "failed to listen on metrics: listen tcp: address metrics: missing port in address",
        ),
        # The metrics server starts first, as in Kilo.
        (
            ["--listen=x", "--listen-metrics=y"],
            "failed to listen on y: listen tcp: address y: missing port in address",
        ),
        (
            ["--master=api:0"],
            'failed to create Kubernetes config: invalid --master "api:0": port must be in '
            "range [1:65535], but got 0",
        ),
        # The log level comes first, as for kg.
        (
            ["--log-level=x", "--listen=x"],
            "log level x unknown; possible values are: all, debug, info, warn, error, none",
        ),
    ],
)
def test_webhook_flags_are_checked_before_it_starts(argv, message):
    assert error_of("webhook", *argv) == message


def test_webhook_defaults_and_checks():
    settings = webhook_of()
    assert settings == WebhookSettings()
    assert settings.listen == ":8443"
    assert settings.listen_metrics == ":1107"
    assert shown("webhook", "--version") == f"{__version__}\n"
    assert error_of("webhook", "--version", "--log-level=x").startswith("log level x unknown;")
    assert error_of("webhook", "--port=1") == "unknown flag: --port"


# --- main -----------------------------------------------------------------------------------


def test_main_version():
    assert run("--version") == (0, f"{__version__}\n", "")
    assert run("version") == (0, f"{__version__}\n", "")


def test_main_errors_are_one_line_on_stderr_with_status_1():
    for argv in (["--bogus"], ["--cni", "false"], ["--port=0", "--hostname=n"], ["--log-level=x"]):
        code, out, err = run(*argv)
        assert (code, out) == (1, "")
        assert err.count("\n") == 1 and err.endswith("\n")
    assert run("--mtu=x", "--hostname=n")[2] == (
        'failed to parse MTU "x": strconv.ParseUint: parsing "x": invalid syntax\n'
    )


def test_main_start_up_failure_is_one_line_on_stderr_after_the_first_log_line(tmp_path):
    missing = tmp_path / "no-such-kubeconfig"
    code, out, err = run("--hostname=n", f"--kubeconfig={missing}")
    assert code == 1
    first = json.loads(out.splitlines()[0])
    assert first["msg"] == f"Starting Kilo network mesh '{__version__}'."
    # Kilo's main logger: no level, no component.
    assert "level" not in first and "component" not in first
    assert err.startswith("failed to create Kubernetes config: ")
    assert str(missing) in err
    assert err.count("\n") == 1


def test_main_help_and_webhook():
    code, out, err = run("--help")
    assert (code, err) == (0, "")
    assert out.startswith("kg is the Kilo agent.")
    # kg webhook runs the webhook (tests/unit/test_webhook.py); without a certificate it
    # fails at once with one line.
    assert run("webhook") == (1, "", "--cert-file is empty: the webhook serves HTTPS only\n")


def test_kg_module_runs():
    done = subprocess.run(
        [sys.executable, "-m", "kilo.agent", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{__version__}\n", "")


FLAG_NAMES = sorted({f.name for f in (*ROOT_FLAGS, *WEBHOOK_FLAGS, *PERSISTENT_FLAGS)})


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(FLAG_NAMES), st.text(max_size=12)).map(
            lambda pair: f"--{pair[0]}={pair[1]}"
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_no_command_line_crashes_the_parser(argv: list[str], webhook: bool) -> None:
    # Whatever the values: settings, or one of the ways out with a one-line message.
    try:
        command_line.read(["webhook", *argv] if webhook else argv, hostname_fallback=lambda: "n")
    except CommandLineError as exc:
        assert "\n" not in str(exc)
