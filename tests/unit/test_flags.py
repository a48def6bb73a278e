"""The shared value checks (``kilo.mesh.flags``) and listen addresses (``kilo.agent.listen``).

The commands' messages are tested with each command (test_kg_flags.py, test_kgctl.py,
test_connect_cli.py); here are the rules themselves, and that what the listen parser
accepts is what the server binds.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kilo.agent import listen
from kilo.agent.listen import ListenAddress, ListeningServer, parse_listen
from kilo.mesh import flags

# --- interface names --------------------------------------------------------------------------


def kernel_dev_valid_name(name: bytes) -> bool:
    """net/core/dev.c's dev_valid_name, transcribed, with lib/ctype.c's isspace."""
    if not name:
        return False
    if len(name) >= flags.IFNAMSIZ:
        return False
    if name in (b".", b".."):
        return False
    return all(byte not in b"/:" and byte not in b"\t\n\v\f\r \xa0" for byte in name)


@given(st.text(max_size=20) | st.text(alphabet="ab/:% .\t\u00a0\u00e0", max_size=17))
def test_interface_names_are_the_kernels_without_templates(name: str) -> None:
    data = name.encode("utf-8", "surrogateescape")
    expected = kernel_dev_valid_name(data) and b"%" not in data and b"\0" not in data
    assert (flags.interface_name_problem(name) is None) == expected


# --- MTUs -------------------------------------------------------------------------------------


def test_mtu_ranges() -> None:
    assert flags.mtu_range(ipv6=False) == (68, 65535)
    assert flags.mtu_range(ipv6=True) == (1280, 65535)
    assert flags.mtu_problem(68, ipv6=False) is None
    assert flags.mtu_problem(1280, ipv6=True) is None
    assert flags.mtu_problem(67, ipv6=False) == "MTU must be in range [68:65535], but got 67"
    assert flags.mtu_problem(65536, ipv6=True) == "MTU must be in range [1280:65535], but got 65536"


# --- host names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["localhost", "a", "a-b.c_d", "x" * 63, ".", "kilo.", "1a", "a1.2", ("a" * 63 + ".") * 3 + "a"],
)
def test_domain_names_go_looks_up(name: str) -> None:
    assert flags.is_domain_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "1.2.3", "010.0.0.1", "-a", "a-", "a..b", "a.-b", "a-.b", "x" * 64, "a b", "\u00e9", "a!"],
)
def test_names_go_does_not_look_up(name: str) -> None:
    assert not flags.is_domain_name(name)
    assert flags.host_problem(name) == "no such host"


@pytest.mark.parametrize("host", ["10.0.0.1", "::1", "fe80::1%eth0", "::ffff:1.2.3.4"])
def test_ip_literals_are_hosts(host: str) -> None:
    assert flags.host_problem(host) is None


# --- ports ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "port"),
    [("", 0), ("80", 80), ("+80", 80), ("-0", 0), ("0080", 80), ("-1", -1), ("x", None)],
)
def test_decimal_ports_are_read_like_go(service: str, port: int | None) -> None:
    assert flags.parse_decimal_port(service) == port


def test_huge_ports_stay_out_of_range() -> None:
    port = flags.parse_decimal_port("9" * 40)
    assert port is not None and port > 65535


def test_service_names_are_found_like_go() -> None:
    for name, port in flags.GO_TCP_SERVICES.items():
        assert listen.service_port(name) == port
        assert listen.service_port(name.upper()) == port  # Go lowercases the name
    assert listen.service_port("no-such-service") is None
    assert listen.service_port("x" * 100) is None


def test_a_lookup_function_decides_service_names() -> None:
    assert parse_listen(":kilo", lookup={"kilo": 1107}.get) == ListenAddress("", 1107)
    with pytest.raises(ValueError, match=r"^lookup tcp/kilo: unknown port$"):
        parse_listen(":kilo", lookup=lambda _: None)
    with pytest.raises(ValueError, match=r"^address kilo: invalid port$"):
        parse_listen(":kilo", lookup=lambda _: 70000)


# --- what is accepted is what binds -----------------------------------------------------------


@pytest.mark.parametrize(
    "address", [":0", ":", "127.0.0.1:0", "127.0.0.1:", "[::1]:0", "localhost:0", ":+0", ":-0"]
)
def test_every_accepted_loopback_address_binds(address: str) -> None:
    if "::1" in address and not socket.has_ipv6:
        pytest.skip("no IPv6")
    assert listen.listen_error(address) is None
    server = listen.bind(address, _Server)
    try:
        assert server.server_address[1] > 0
    finally:
        server.server_close()


@pytest.mark.parametrize("address", ["1107", "::1:0", ":99999", "bad!host:0", "[::1]x:0"])
def test_a_refused_address_is_refused_by_bind_with_the_same_words(address: str) -> None:
    problem = listen.listen_error(address)
    assert problem is not None
    with pytest.raises(ValueError) as caught:
        listen.bind(address, _Server)
    assert listen.bind_error(address, caught.value) == problem


@given(st.text(alphabet="[]:0123456789.abx%-+", max_size=14))
@example(":x11")  # a service name on this host (CI drew it once)
def test_listen_parsing_never_fails_otherwise(address: str) -> None:
    try:
        # The host's service names, as listen_error reads them (':x11' is a port on a host
        # whose /etc/services names it, and an error elsewhere).
        parsed = parse_listen(address)
    except ValueError as exc:
        assert listen.listen_error(address) == f"failed to listen on {address}: listen tcp: {exc}"
        return
    assert 0 <= parsed.port <= 65535
    if not parsed.host or (flags.is_ip_literal(parsed.host) and "%" not in parsed.host):
        # Numeric addresses need no resolver: the bind targets are known at once.
        assert listen.bind_targets(parsed)


class _Server(ListeningServer):
    def __init__(self, family: socket.AddressFamily, address: tuple[object, ...]) -> None:
        from http.server import BaseHTTPRequestHandler

        super().__init__(family, address, BaseHTTPRequestHandler)


# --- API server URLs and label keys -----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1:6443",
        "http://localhost:8080",
        "HTTPS://API.example.com",
        "https://[fd00::1]:6443",
        "https://rancher.example.com/k8s/clusters/c-1",
        "https://user@api:443/",
    ],
)
def test_api_server_urls_the_client_can_use(url: str) -> None:
    assert flags.api_server_url_problem(url) is None


@pytest.mark.parametrize(
    "key",
    ["topology.kubernetes.io/region", "region", "a", "example.com/a_b.c-d", "A" * 63, "a/b"],
)
def test_label_keys(key: str) -> None:
    assert flags.label_key_problem(key) is None
