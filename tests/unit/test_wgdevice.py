"""The live-device diff: UAPI parsing, planning only what differs, NAT discovery."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.errors import KiloError
from kilo.mesh import uapi, wgpeers
from kilo.mesh.endpoint import Endpoint, UDPAddr
from kilo.mesh.ip import IPNetwork, parse_interface, parse_network
from kilo.mesh.keys import ZERO_KEY, Key
from kilo.mesh.model import Node, Peer
from kilo.mesh.uapi import UAPIParseError, parse_uapi, redact
from kilo.mesh.wgdevice import (
    DeviceChange,
    DeviceState,
    PeerChange,
    PeerState,
    discovered_endpoints,
    plan_changes,
    plan_update,
    render_uapi,
    state_after,
    stored_private_key,
)
from kilo.mesh.wireguard import WireGuardConfig, WireGuardPeer
from tests.strategies import key_for
from tests.uapi_sim import apply_set

KEYS = tuple(key_for(i, salt=77) for i in range(6))
A, B, C, D = KEYS[:4]
PRIVATE = Key(bytes(range(1, 33)))  # not clamped: WireGuard stores it clamped
PSK = Key(bytes([7]) * 32)


def cidr(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    parsed = parse_interface(text)
    assert parsed is not None
    return parsed


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def ep(text: str) -> Endpoint:
    parsed = Endpoint.parse(text)
    assert parsed is not None
    return parsed


def udp(text: str) -> UDPAddr:
    endpoint = ep(text).udp
    assert endpoint is not None
    return endpoint


def peer(key: Key, *allowed: str, **kwargs: object) -> WireGuardPeer:
    return WireGuardPeer(public_key=key, allowed_ips=tuple(map(cidr, allowed)), **kwargs)  # type: ignore[arg-type]


def config(*peers: WireGuardPeer, private_key: Key | None = PRIVATE, port: int = 51820):
    return WireGuardConfig(private_key=private_key, listen_port=port, peers=peers)


def peers_only(*peers: WireGuardPeer) -> WireGuardConfig:
    return WireGuardConfig(peers=peers)


def from_scratch(desired: WireGuardConfig) -> DeviceState:
    """Kilo's way, as an oracle: replace every peer and configure each fully, in order."""
    lines = ["replace_peers=true"]
    if desired.private_key is not None:
        lines.append(f"private_key={desired.private_key.raw.hex()}")
    if desired.listen_port:
        lines.append(f"listen_port={desired.listen_port}")
    for p in desired.peers:
        lines.append(f"public_key={p.public_key.raw.hex()}")
        if p.preshared_key is not None:
            lines.append(f"preshared_key={p.preshared_key.raw.hex()}")
        if p.endpoint is not None and p.endpoint.udp is not None:
            lines.append(f"endpoint={p.endpoint.udp}")
        keepalive = max(0, min(p.persistent_keepalive, 65535))
        lines.append(f"persistent_keepalive_interval={keepalive}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={a}" for a in p.allowed_ips)  # with host bits: masked on set
    return apply_set(DeviceState(), "\n".join(lines))


def expected(desired: WireGuardConfig, current: DeviceState) -> DeviceState:
    """``desired`` configured from scratch, but with sessions and roamed endpoints kept."""
    fresh = from_scratch(desired)
    peers = []
    for p in fresh.peers:
        live = current.peer(p.public_key)
        peers.append(
            p
            if live is None
            else replace(
                p,
                endpoint=p.endpoint or live.endpoint,
                last_handshake=live.last_handshake,
                rx_bytes=live.rx_bytes,
                tx_bytes=live.tx_bytes,
            )
        )
    return DeviceState(
        private_key=current.private_key if desired.private_key is None else fresh.private_key,
        listen_port=desired.listen_port or current.listen_port,
        peers=tuple(peers),
    )


def comparable(state: DeviceState) -> tuple[object, ...]:
    return (
        state.private_key,
        state.listen_port,
        {
            p.public_key: replace(p, allowed_ips=tuple(sorted(p.allowed_ips, key=str)))
            for p in state.peers
        },
    )


def apply(desired: WireGuardConfig, current: DeviceState) -> tuple[str | None, DeviceState]:
    text = plan_update(desired, current)
    return text, current if text is None else apply_set(current, text)


def mentioned(text: str | None) -> set[Key]:
    if text is None:
        return set()
    return {
        Key(bytes.fromhex(line.removeprefix("public_key=")))
        for line in text.splitlines()
        if line.startswith("public_key=")
    }


# --- Reading a device --------------------------------------------------------------------

# What wireguard-go 0.0.20220316 answers to get=1 (one peer that completed a handshake).
WIREGUARD_GO_REPLY = (
    "private_key=2022222222222222222222222222222222222222222222222222222222222262\n"
    "listen_port=51820\n"
    "public_key=1111111111111111111111111111111111111111111111111111111111111111\n"
    "preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n"
    "protocol_version=1\n"
    "endpoint=192.0.2.9:5\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=250000000\n"
    "tx_bytes=92\n"
    "rx_bytes=148\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.0.0.0/24\n"
    "allowed_ip=fd00::/64\n"
    "public_key=3333333333333333333333333333333333333333333333333333333333333333\n"
    "preshared_key=0707070707070707070707070707070707070707070707070707070707070707\n"
    "protocol_version=1\n"
    "endpoint=[2001:db8::1]:51820\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "errno=0\n"
    "\n"
)


def test_parse_a_wireguard_go_reply() -> None:
    state = parse_uapi(WIREGUARD_GO_REPLY)
    assert state == DeviceState(
        private_key=Key(bytes.fromhex("20" + "22" * 30 + "62")),
        listen_port=51820,
        peers=(
            PeerState(
                public_key=Key(bytes([0x11]) * 32),
                endpoint=UDPAddr(ipaddress.ip_address("192.0.2.9"), 5),
                persistent_keepalive=25,
                allowed_ips=(net("10.0.0.0/24"), net("fd00::/64")),
                last_handshake=1700000000.25,
                rx_bytes=148,
                tx_bytes=92,
            ),
            PeerState(
                public_key=Key(bytes([0x33]) * 32),
                preshared_key=PSK,
                endpoint=UDPAddr(ipaddress.ip_address("2001:db8::1"), 51820),
            ),
        ),
    )


def test_a_device_read_shares_its_allowed_ips_with_the_plan_and_keeps_their_text_once() -> None:
    # 10 500 allowed IPs at a 5000-node leader, kept between full applies.
    state = parse_uapi(WIREGUARD_GO_REPLY)
    peer = state.peers[0]
    assert peer.allowed_ips[0] is parse_network("10.0.0.0/24")
    assert peer.allowed_ips_text == ("10.0.0.0/24", "fd00::/64")
    # The text as the device printed it is the one kept (the memo's key), not a copy.
    printed = "".join(["10.9.8.0", "/24"])
    assert uapi._network_text(printed) is printed


def test_a_device_without_key_or_peers() -> None:
    assert parse_uapi("listen_port=42197\nerrno=0\n\n") == DeviceState(listen_port=42197)
    assert parse_uapi("private_key=" + "00" * 32 + "\n") == DeviceState()


def test_an_ipv6_endpoint_with_a_zone() -> None:
    state = parse_uapi(f"public_key={A.raw.hex()}\nendpoint=[fe80::1%veth0]:51820\n")
    assert state.peers[0].endpoint == UDPAddr(ipaddress.ip_address("fe80::1"), 51820, "veth0")
    assert str(state.peers[0].endpoint) == "[fe80::1%veth0]:51820"


def test_unknown_keys_are_skipped() -> None:
    text = "fwmark=0\nnew_device_thing=1\npublic_key=" + "11" * 32 + "\nnew_peer_thing=x\n"
    assert parse_uapi(text) == DeviceState(peers=(PeerState(public_key=Key(bytes([0x11]) * 32)),))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen_port=51820\ngarbage\n", "UAPI line 2: 'garbage' is not key=value"),
        ("listen_port=70000\n", "UAPI line 1: listen_port='70000' is not a port"),
        ("public_key=abc\n", "UAPI line 1: public_key='abc' is not a 64-digit hex key"),
        (
            "public_key=" + "11" * 32 + "\nendpoint=somewhere\n",
            "UAPI line 2: endpoint='somewhere' is not ip:port",
        ),
        (
            "public_key=" + "11" * 32 + "\nendpoint=192.0.2.1:0\n",
            "UAPI line 2: endpoint='192.0.2.1:0' is not ip:port",
        ),
        (
            "public_key=" + "11" * 32 + "\nallowed_ip=10.0.0.0/33\n",
            "UAPI line 2: allowed_ip='10.0.0.0/33' is not a CIDR",
        ),
        (
            "public_key=" + "11" * 32 + "\nrx_bytes=-1\n",
            "UAPI line 2: rx_bytes='-1' is not an integer in 0..18446744073709551615",
        ),
        (
            "public_key=" + "11" * 32 + "\nlisten_port=1\n",
            "UAPI line 2: listen_port='1' is a device key after the first peer",
        ),
        ("errno=-22\n\n", "UAPI line 1: errno='-22' reports an error"),
    ],
)
def test_a_bad_reply_names_the_line(text: str, message: str) -> None:
    with pytest.raises(UAPIParseError) as info:
        parse_uapi(text)
    assert str(info.value) == message
    assert isinstance(info.value, KiloError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["private_key", "preshared_key"])
def test_a_bad_secret_is_not_repeated_in_the_error(key: str) -> None:
    secret = "ab" * 31 + "z9"  # 64 characters, not hex: nearly a key
    text = (
        f"{key}={secret}\n" if key == "private_key" else f"public_key={'11' * 32}\n{key}={secret}\n"
    )
    with pytest.raises(UAPIParseError) as info:
        parse_uapi(text)
    assert "abab" not in str(info.value)
    assert f"{key}='(hidden)' is not a 64-digit hex key" in str(info.value)


def test_repr_hides_private_and_preshared_keys() -> None:
    state = parse_uapi(WIREGUARD_GO_REPLY)
    assert state.private_key is not None
    text = repr(state)
    for secret in (state.private_key, PSK):
        assert str(secret)[:4] not in text
        assert secret.raw.hex()[:8] not in text
    assert "private_key=(hidden)" in text
    assert "preshared" not in text
    assert repr(DeviceState()).startswith("DeviceState(private_key=None,")
    change = plan_changes(config(peer(A, "10.0.0.0/24", preshared_key=PSK)), DeviceState())
    assert change is not None
    assert str(PRIVATE)[:4] not in repr(change)
    assert str(PSK)[:4] not in repr(change)


def test_redact_hides_keys_in_uapi_text() -> None:
    text = plan_update(config(peer(A, "10.0.0.0/24", preshared_key=PSK)), DeviceState())
    assert text is not None
    hidden = redact(text)
    assert PRIVATE.raw.hex() not in hidden
    assert PSK.raw.hex() not in hidden
    assert "private_key=(hidden)\n" in hidden
    assert "preshared_key=(hidden)\n" in hidden
    assert f"public_key={A.raw.hex()}\n" in hidden


# --- Planning ----------------------------------------------------------------------------


def test_an_empty_device_gets_the_full_config_in_order() -> None:
    desired = config(
        peer(A, "10.2.2.0/24", "172.31.5.5/32", endpoint=ep("192.0.2.3:51820")),
        peer(B, "10.5.0.1/32", persistent_keepalive=25, preshared_key=PSK),
    )
    assert plan_update(desired, DeviceState(listen_port=40000)) == (
        f"private_key={PRIVATE.raw.hex()}\n"
        "listen_port=51820\n"
        f"public_key={A.raw.hex()}\n"
        "endpoint=192.0.2.3:51820\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.2.2.0/24\n"
        "allowed_ip=172.31.5.5/32\n"
        f"public_key={B.raw.hex()}\n"
        f"preshared_key={PSK.raw.hex()}\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.5.0.1/32\n"
    )


def test_removals_come_first_then_only_changed_peers_in_config_order() -> None:
    desired = config(peer(C, "10.3.0.0/24"), peer(A, "10.1.0.0/24"), peer(B, "10.2.0.0/24"))
    _, current = apply(config(peer(A, "10.1.0.0/24"), peer(D, "10.4.0.0/24")), DeviceState())
    text = plan_update(desired, current)
    assert text is not None
    keys = [line for line in text.splitlines() if line.startswith("public_key=")]
    assert keys == [f"public_key={k.raw.hex()}" for k in (D, C, B)]
    assert f"public_key={D.raw.hex()}\nremove=true\n" in text
    assert "private_key" not in text  # same key, same port: untouched
    assert "listen_port" not in text
    assert "replace_peers" not in text


def test_the_same_config_again_changes_nothing() -> None:
    desired = config(peer(A, "10.1.0.0/24", endpoint=ep("192.0.2.1:51820"), preshared_key=PSK))
    text, current = apply(desired, DeviceState())
    assert text is not None
    assert plan_update(desired, current) is None


def test_allowed_ips_are_compared_masked_and_as_sets() -> None:
    # Kilo keeps host bits (10.5.0.1/24); WireGuard stores 10.5.0.0/24 (pitfall 6).
    desired = config(peer(A, "10.5.0.1/24", "fd00::1/64", "10.6.0.0/16"))
    current = DeviceState(
        private_key=stored_private_key(PRIVATE),
        listen_port=51820,
        peers=(
            PeerState(
                public_key=A,
                allowed_ips=(net("10.6.0.0/16"), net("fd00::/64"), net("10.5.0.0/24")),
            ),
        ),
    )
    assert plan_update(desired, current) is None
    # Two host-bit spellings of one network are one allowed IP.
    assert (
        plan_update(
            config(peer(A, "10.5.0.1/24", "10.5.0.2/24", "fd00::/64", "10.6.0.0/16")), current
        )
        is None
    )


def test_a_changed_allowed_ip_touches_only_that_peer() -> None:
    before = config(peer(A, "10.1.0.0/24"), peer(B, "10.2.0.0/24"), peer(C, "10.3.0.0/24"))
    _, current = apply(before, DeviceState())
    after = config(
        peer(A, "10.1.0.0/24"), peer(B, "10.2.0.0/24", "10.9.0.0/24"), peer(C, "10.3.0.0/24")
    )
    assert plan_update(after, current) == (
        f"public_key={B.raw.hex()}\nreplace_allowed_ips=true\nallowed_ip=10.2.0.0/24\nallowed_ip=10.9.0.0/24\n"
    )


def test_only_the_differing_fields_of_a_peer_are_sent() -> None:
    current = DeviceState(
        listen_port=51820,
        peers=(
            PeerState(
                public_key=A,
                preshared_key=PSK,
                endpoint=udp("192.0.2.1:51820"),
                persistent_keepalive=25,
                allowed_ips=(net("10.1.0.0/24"),),
            ),
        ),
    )
    same = {"preshared_key": PSK, "endpoint": ep("192.0.2.1:51820"), "persistent_keepalive": 25}
    assert plan_update(peers_only(peer(A, "10.1.0.0/24", **same)), current) is None
    cases = {
        "preshared_key=" + "00" * 32: {**same, "preshared_key": None},
        "endpoint=192.0.2.2:51820": {**same, "endpoint": ep("192.0.2.2:51820")},
        "persistent_keepalive_interval=0": {**same, "persistent_keepalive": 0},
    }
    for line, fields in cases.items():
        text = plan_update(peers_only(peer(A, "10.1.0.0/24", **fields)), current)
        assert text == f"public_key={A.raw.hex()}\n{line}\n"


def test_no_preshared_key_equals_the_zero_key() -> None:
    current = DeviceState(peers=(PeerState(public_key=A, allowed_ips=(net("10.1.0.0/24"),)),))
    for psk in (None, ZERO_KEY):
        assert plan_update(peers_only(peer(A, "10.1.0.0/24", preshared_key=psk)), current) is None


def test_keepalive_is_what_wireguard_accepts() -> None:
    current = DeviceState(
        peers=(PeerState(public_key=A, persistent_keepalive=65535), PeerState(public_key=B))
    )
    desired = peers_only(peer(A, persistent_keepalive=100_000), peer(B, persistent_keepalive=-3))
    assert plan_update(desired, current) is None


def test_no_endpoint_keeps_the_roamed_endpoint() -> None:
    # A Kilo Peer without an endpoint that connected: WireGuard learned where it is
    # (pitfall 5: Kilo saw a difference on every resync and reset every session).
    roamed = udp("198.51.100.7:41641")
    current = DeviceState(
        peers=(
            PeerState(
                public_key=A, endpoint=roamed, allowed_ips=(net("10.5.0.1/32"),), last_handshake=1.5
            ),
        )
    )
    assert plan_update(peers_only(peer(A, "10.5.0.1/32")), current) is None
    unresolved = ep("laptop.example.com:51820")
    assert plan_update(peers_only(peer(A, "10.5.0.1/32", endpoint=unresolved)), current) is None
    # Another change to that peer still leaves its endpoint alone.
    text, after = apply(peers_only(peer(A, "10.5.0.2/32")), current)
    assert text is not None
    assert "endpoint" not in text
    live = after.peer(A)
    assert live is not None
    assert live.endpoint == roamed


def test_a_resolved_dns_endpoint_uses_the_ip() -> None:
    resolved = ep("gw.example.com:51820").resolved_to(ipaddress.ip_address("203.0.113.4"))
    text = plan_update(peers_only(peer(A, endpoint=resolved)), DeviceState())
    assert text is not None
    assert "endpoint=203.0.113.4:51820\n" in text
    current = DeviceState(peers=(PeerState(public_key=A, endpoint=udp("203.0.113.4:51820")),))
    assert plan_update(peers_only(peer(A, endpoint=resolved)), current) is None


def test_ipv6_endpoints_are_bracketed_and_compared_as_addresses() -> None:
    text = plan_update(peers_only(peer(A, endpoint=ep("[2001:db8::1]:51820"))), DeviceState())
    assert text is not None
    assert "endpoint=[2001:db8::1]:51820\n" in text
    current = parse_uapi(f"public_key={A.raw.hex()}\nendpoint=[2001:db8:0::1]:51820\n")
    assert plan_update(peers_only(peer(A, endpoint=ep("[2001:db8::1]:51820"))), current) is None


def test_private_key_and_port_only_when_they_differ() -> None:
    clamped = apply_set(DeviceState(), f"private_key={PRIVATE.raw.hex()}").private_key
    assert clamped is not None
    assert clamped != PRIVATE  # the device clamps; the unclamped key is still the same key
    current = DeviceState(private_key=clamped, listen_port=51820)
    assert plan_update(config(), current) is None
    assert plan_update(config(port=51821), current) == "listen_port=51821\n"
    other = Key(bytes([9]) * 32)
    assert plan_update(config(private_key=other), current) == f"private_key={other.raw.hex()}\n"
    # No key and port 0 in the config mean "leave them".
    assert plan_update(config(private_key=None, port=0), current) is None
    assert plan_update(config(private_key=ZERO_KEY, port=0), DeviceState()) is None


def test_an_allowed_ip_listed_twice_belongs_to_the_later_peer() -> None:
    # A Kilo Peer claiming a pod CIDR steals it inside WireGuard (pitfall 17); the diff
    # must agree with that, or it would move the CIDR back and forth on every apply.
    desired = config(peer(A, "10.2.0.0/24", "10.1.0.0/24"), peer(B, "10.2.0.1/24"))
    text, current = apply(desired, DeviceState())
    assert text is not None
    assert [p.allowed_ips for p in current.peers] == [(net("10.1.0.0/24"),), (net("10.2.0.0/24"),)]
    assert plan_update(desired, current) is None
    assert comparable(current) == comparable(from_scratch(desired))


def test_a_key_listed_twice_is_one_peer_and_the_later_entry_wins() -> None:
    desired = config(
        peer(A, "10.1.0.0/24", endpoint=ep("192.0.2.1:1"), preshared_key=PSK),
        peer(B, "10.2.0.0/24"),
        peer(A, "10.3.0.0/24", persistent_keepalive=5),
    )
    text, current = apply(desired, DeviceState())
    assert text is not None
    assert text.count(f"public_key={A.raw.hex()}") == 1
    assert comparable(current) == comparable(from_scratch(desired))
    assert plan_update(desired, current) is None


def test_a_device_needing_nothing_gives_none() -> None:
    assert plan_update(WireGuardConfig(), DeviceState()) is None
    assert plan_changes(WireGuardConfig(), DeviceState(listen_port=5)) is None


# --- Properties --------------------------------------------------------------------------

_CIDRS = (
    "10.5.0.1/24",
    "10.5.0.0/24",
    "10.6.0.0/16",
    "10.6.1.1/32",
    "fd00::1/64",
    "fd00::/64",
    "192.0.2.0/25",
)
_ENDPOINTS = (
    None,
    "192.0.2.1:51820",
    "192.0.2.2:51820",
    "[2001:db8::1]:51820",
    "dns",
    "dns-resolved",
)
_PRIVATE_KEYS = (None, PRIVATE, Key(bytes([9]) * 32), ZERO_KEY)


def _endpoint(choice: str | None) -> Endpoint | None:
    if choice is None:
        return None
    if choice == "dns":
        return ep("peer.example.com:51820")
    if choice == "dns-resolved":
        return ep("peer.example.com:51820").resolved_to(ipaddress.ip_address("203.0.113.9"))
    return ep(choice)


wg_peers = st.builds(
    WireGuardPeer,
    public_key=st.sampled_from(KEYS),
    allowed_ips=st.lists(st.sampled_from(_CIDRS).map(cidr), max_size=4).map(tuple),
    endpoint=st.sampled_from(_ENDPOINTS).map(_endpoint),
    persistent_keepalive=st.sampled_from((0, 25, 70_000, -1)),
    preshared_key=st.sampled_from((None, ZERO_KEY, PSK, Key(bytes([8]) * 32))),
)
configs = st.builds(
    WireGuardConfig,
    private_key=st.sampled_from(_PRIVATE_KEYS),
    listen_port=st.sampled_from((0, 51820, 51821)),
    peers=st.lists(wg_peers, max_size=6).map(tuple),
)


@st.composite
def devices(draw: st.DrawFn) -> DeviceState:
    """A plausible live device: some config, then traffic, handshakes and roaming."""
    base = from_scratch(draw(configs))
    peers = []
    for p in base.peers:
        handshake = draw(st.none() | st.floats(min_value=1.0, max_value=2e9))
        roamed = draw(st.sampled_from((None, "198.51.100.7:41641", "[2001:db8::7]:1")))
        peers.append(
            replace(
                p,
                last_handshake=handshake,
                rx_bytes=draw(st.integers(0, 10**9)),
                tx_bytes=draw(st.integers(0, 10**9)),
                endpoint=p.endpoint if roamed is None else udp(roamed),
            )
        )
    port = draw(st.sampled_from((base.listen_port, 40000)))
    return DeviceState(private_key=base.private_key, listen_port=port, peers=tuple(peers))


@settings(max_examples=400, deadline=None)
@given(desired=configs, current=devices())
def test_applying_the_plan_gives_the_desired_device_and_is_idempotent(
    desired: WireGuardConfig, current: DeviceState
) -> None:
    text, after = apply(desired, current)
    # Equal to Kilo's replace-everything result, but with sessions and roamed endpoints kept.
    assert comparable(after) == comparable(expected(desired, current))
    assert plan_update(desired, after) is None
    assert text is None or "replace_peers" not in text
    # Exactly the peers that change are mentioned.
    before = {p.public_key: p for p in current.peers}
    now = {p.public_key: p for p in after.peers}
    changed = {
        k
        for k in before.keys() | now.keys()
        if k not in before
        or k not in now
        or comparable(DeviceState(peers=(before[k],))) != comparable(DeviceState(peers=(now[k],)))
    }
    assert mentioned(text) == changed


@settings(max_examples=200, deadline=None)
@given(first=configs, second=configs, current=devices())
def test_a_sequence_of_configs_converges(
    first: WireGuardConfig, second: WireGuardConfig, current: DeviceState
) -> None:
    _, middle = apply(first, current)
    _, after = apply(second, middle)
    assert comparable(after) == comparable(expected(second, middle))
    assert plan_update(second, after) is None


def exact(state: DeviceState) -> tuple[object, ...]:
    """Everything the device holds, in its order (allowed IPs in theirs too)."""
    return (state.private_key, state.listen_port, state.peers)


@settings(max_examples=400, deadline=None)
@given(desired=configs, current=devices())
def test_the_state_after_a_change_is_what_the_device_holds(
    desired: WireGuardConfig, current: DeviceState
) -> None:
    # What the leader diffs its next incremental apply against instead of reading the
    # device: the oracle applies the very UAPI text that is written.
    change = plan_changes(desired, current)
    if change is None:
        return
    after = state_after(current, change)
    assert exact(after) == exact(apply_set(current, render_uapi(change)))
    assert comparable(after) == comparable(expected(desired, current))
    assert plan_changes(desired, after) is None
    # Texts of the allowed IPs (what the next plan compares) follow the networks.
    for p in after.peers:
        assert p.allowed_ips_text == tuple(str(n) for n in p.allowed_ips)


@settings(max_examples=200, deadline=None)
@given(first=configs, second=configs, current=devices())
def test_the_state_after_two_changes_is_what_the_device_holds(
    first: WireGuardConfig, second: WireGuardConfig, current: DeviceState
) -> None:
    known, device = current, current
    for desired in (first, second):
        change = plan_changes(desired, known)
        if change is not None:
            known = state_after(known, change)
            device = apply_set(device, render_uapi(change))
        assert exact(known) == exact(device)


_ODD_CHANGES = st.builds(
    DeviceChange,
    private_key=st.sampled_from(_PRIVATE_KEYS),
    listen_port=st.sampled_from((None, 0, 51820)),
    peers=st.lists(
        st.builds(
            PeerChange,
            public_key=st.sampled_from((*KEYS, PRIVATE.public_key())),
            remove=st.booleans(),
            preshared_key=st.sampled_from((None, ZERO_KEY, PSK)),
            endpoint=st.sampled_from((None, udp("192.0.2.1:51820"), udp("[2001:db8::1]:1"))),
            persistent_keepalive=st.sampled_from((None, 0, 25)),
            allowed_ips=st.none()
            | st.lists(st.sampled_from(_CIDRS).map(lambda c: cidr(c).network), max_size=4).map(
                tuple
            ),
        ),
        max_size=8,
    ).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(change=_ODD_CHANGES, current=devices(), own_peer=st.booleans())
def test_the_state_after_any_change_is_what_the_device_holds(
    change: DeviceChange, current: DeviceState, own_peer: bool
) -> None:
    # Not only what plan_changes writes: removals of absent peers, a peer twice, the
    # device's own key as a peer, an allowed IP listed twice or taken from another peer,
    # a peer whose key becomes the device's own.
    if own_peer:
        mine = PeerState(public_key=PRIVATE.public_key(), allowed_ips=(net("198.18.0.0/15"),))
        current = replace(current, peers=(*current.peers, mine))
    assert exact(state_after(current, change)) == exact(apply_set(current, render_uapi(change)))


def test_a_peer_whose_key_becomes_the_devices_own_goes_with_the_new_private_key() -> None:
    mine = PeerState(public_key=PRIVATE.public_key(), allowed_ips=(net("198.18.0.0/15"),))
    current = DeviceState(peers=(mine, PeerState(public_key=A)))
    change = DeviceChange(private_key=PRIVATE)
    after = state_after(current, change)
    assert exact(after) == exact(apply_set(current, render_uapi(change)))
    assert [p.public_key for p in after.peers] == [A]


def test_the_state_after_keeps_handshakes_and_a_new_peer_is_not_discovered() -> None:
    seen = udp("198.51.100.7:41641")
    read = DeviceState(
        peers=(PeerState(public_key=A, endpoint=seen, last_handshake=10.0, rx_bytes=5),)
    )
    change = plan_changes(peers_only(peer(A, "10.1.0.0/24"), peer(B, "10.2.0.0/24")), read)
    assert change is not None
    after = state_after(read, change)
    kept, new = after.peer(A), after.peer(B)
    assert kept is not None and (kept.endpoint, kept.last_handshake, kept.rx_bytes) == (
        seen,
        10.0,
        5,
    )
    assert new is not None and new.last_handshake is None
    nodes = [Node(name="a", key=A, persistent_keepalive=25), Node(name="b", key=B)]
    laptop = [Peer(name="laptop", public_key=B)]
    # B has no handshake in the known state: not discovered until a read shows one.
    assert discovered_endpoints(after, nodes, laptop) == {str(A): seen}


# --- Planning what changed (issue 17) ---------------------------------------------------

# More keys and allowed IPs than above, so that most configs are plain (no key and no
# allowed IP twice: the ones a plan after a write diffs by what changed) and some are not.
_MANY_KEYS = tuple(key_for(i, salt=78) for i in range(10))
_OWN_KEYS = (PRIVATE.public_key(), Key(bytes([9]) * 32).public_key())
_MANY_CIDRS = (
    *(f"10.{i}.0.0/16" for i in range(24)),
    *(f"fd{i:02x}::/64" for i in range(6)),
    "10.5.0.1/24",  # masked: 10.5.0.0/24, next
    "10.5.0.0/24",
    "10.0.0.0/8",  # overlaps others: a different network
    "192.0.2.7/32",
)
_many_peers = st.builds(
    WireGuardPeer,
    public_key=st.sampled_from(_MANY_KEYS),
    allowed_ips=st.lists(st.sampled_from(_MANY_CIDRS).map(cidr), max_size=3).map(tuple),
    endpoint=st.sampled_from(_ENDPOINTS).map(_endpoint),
    persistent_keepalive=st.sampled_from((0, 25, 70_000)),
    preshared_key=st.sampled_from((None, None, ZERO_KEY, PSK)),
    name=st.sampled_from(("", "gcp", "aws")),
)
_EDITS = ("same", "new", "copy", "field", "add", "remove", "move", "twice", "swap", "own")


def _edit(data: st.DataObject, peers: list[WireGuardPeer]) -> None:
    """One change of a config's peers, as the leader's plan makes them between events
    (most peers the very objects of the last config) and some it never makes."""
    what = data.draw(st.sampled_from(_EDITS))
    index = st.integers(0, max(0, len(peers) - 1))
    if what == "add" or not peers:
        peers.insert(data.draw(st.integers(0, len(peers))), data.draw(_many_peers))
        return
    i, j = data.draw(index), data.draw(index)
    p = peers[i]
    if what == "new":  # another peer object for the key
        peers[i] = replace(data.draw(_many_peers), public_key=p.public_key)
    elif what == "copy":  # an equal peer, another object
        peers[i] = replace(p)
    elif what == "field":
        field_ = data.draw(st.sampled_from(("endpoint", "keepalive", "psk", "name")))
        peers[i] = (
            replace(p, endpoint=_endpoint(data.draw(st.sampled_from(_ENDPOINTS))))
            if field_ == "endpoint"
            else replace(p, persistent_keepalive=p.persistent_keepalive + 1)
            if field_ == "keepalive"
            else replace(p, preshared_key=None if p.preshared_key else PSK)
            if field_ == "psk"
            else replace(p, name=p.name + "x")
        )
    elif what == "remove":
        del peers[i]
    elif what == "move" and p.allowed_ips and i != j:  # an allowed IP to another peer
        moved = data.draw(st.sampled_from(p.allowed_ips))
        peers[j] = replace(peers[j], allowed_ips=(*peers[j].allowed_ips, moved))
        if data.draw(st.booleans()):  # else both list it: the later one holds it
            peers[i] = replace(p, allowed_ips=tuple(c for c in p.allowed_ips if c != moved))
    elif what == "twice":  # the same object twice: its key twice
        peers.insert(j, p)
    elif what == "swap":
        peers[i], peers[j] = peers[j], p
    elif what == "own":  # the device's own key (now or after a private key change)
        peers[i] = replace(p, public_key=data.draw(st.sampled_from(_OWN_KEYS)))


def _next_config(data: st.DataObject, config: WireGuardConfig) -> WireGuardConfig:
    peers = list(config.peers)
    for _ in range(data.draw(st.integers(0, 3))):
        _edit(data, peers)
    return WireGuardConfig(
        private_key=data.draw(st.sampled_from((config.private_key,) * 4 + _PRIVATE_KEYS)),
        listen_port=data.draw(st.sampled_from((config.listen_port,) * 4 + (0, 51821))),
        peers=tuple(peers),
    )


def full_plan(desired: WireGuardConfig, current: DeviceState) -> DeviceChange | None:
    """plan_changes comparing every peer: ``current``'s value without what an earlier
    plan left on it (``replace`` builds the state anew)."""
    return plan_changes(desired, replace(current))


def assert_basis_describes(state: DeviceState) -> None:
    """What plan_changes and state_after left on ``state`` for the next plan is true of
    it: its peers and their allowed IPs, and a plain config that changes none of them."""
    basis = state._basis
    if basis is None:
        return
    assert list(basis.live) == [p.public_key for p in state.peers]
    assert all(basis.live[p.public_key] is p for p in state.peers)  # the state's own
    assert basis.owner == {t: p.public_key for p in state.peers for t in p.allowed_ips_text}
    assert basis.wants.keys() == basis.live.keys()
    peers = [want.peer for want in basis.wants.values() if want.peer is not None]
    assert sorted(basis.entries) == sorted(id(p) for p in peers)
    assert all(basis.entries[id(p)] is p for p in peers)
    for key, p in zip(basis.wants, peers, strict=True):
        assert p.public_key == key
        assert basis.wants[key].allowed_ips == [str(c.network) for c in p.allowed_ips]  # type: ignore[union-attr]
    in_sync = full_plan(WireGuardConfig(peers=tuple(peers)), state)
    assert in_sync is None or not in_sync.peers


_DETOURS = ("none", "none", "discarded plan", "plan in between", "twice", "older state")


@settings(max_examples=400, deadline=None)
@given(data=st.data(), start=st.just(DeviceState()) | devices())
def test_a_plan_on_the_state_after_a_write_is_the_full_plan(
    data: st.DataObject, start: DeviceState
) -> None:
    # The leader plans each incremental apply on state_after(its last write), and the
    # plan then compares only the peer objects that are not the last config's: it must
    # be the plan that compares them all, over any sequence of configs and of what the
    # applier may do with the states and changes (a write that failed, a change planned
    # and another plan before it is written, state_after twice, an older state again).
    config = WireGuardConfig(
        private_key=PRIVATE,
        listen_port=51820,
        peers=tuple(data.draw(st.lists(_many_peers, max_size=6, unique_by=lambda p: p.public_key))),
    )
    known, device = start, start
    history = [(known, device)]
    for _ in range(data.draw(st.integers(1, 8))):
        config = _next_config(data, config)
        detour = data.draw(st.sampled_from(_DETOURS))
        if detour == "older state":
            known, device = data.draw(st.sampled_from(history))
        if detour == "discarded plan":  # a write that failed, or a plan that changed nothing
            plan_changes(_next_config(data, config), known)
        expected = full_plan(config, known)
        change = plan_changes(config, known)
        assert change == expected
        if detour == "plan in between":  # the change is written after another plan
            plan_changes(_next_config(data, config), known)
        if change is not None:
            after = state_after(known, change)
            if detour == "twice":
                again = state_after(known, change)
                assert exact(again) == exact(after)
                after = data.draw(st.sampled_from((after, again)))
            device = apply_set(device, render_uapi(change))
            known = after
        assert exact(known) == exact(device)
        assert_basis_describes(known)
        history.append((known, device))


def written_in_turn(*configs: WireGuardConfig, start: DeviceState | None = None) -> DeviceState:
    """Each config planned on the state the last one's write left, as the leader does
    between full applies, checked as in the property above; the last state."""
    known = device = DeviceState() if start is None else start
    for desired in configs:
        change = plan_changes(desired, known)
        assert change == full_plan(desired, known)
        if change is not None:
            known = state_after(known, change)
            device = apply_set(device, render_uapi(change))
        assert exact(known) == exact(device)
        assert_basis_describes(known)
    return known


def test_allowed_ips_claimed_twice_after_a_write_are_planned_whole() -> None:
    # What a plan of what changed cannot do alone: the want of a peer that stays
    # depends on the peers that changed. Each sequence checks against the whole plan.
    a, b, c = peer(A, "10.1.0.0/16"), peer(B, "10.2.0.0/16"), peer(C, "10.3.0.0/16")
    b_too = peer(B, "10.2.0.0/16", "10.1.0.0/16")  # also a's: the later one holds it
    written_in_turn(config(a, b, c), config(a, b_too, c), config(a, b, c))
    written_in_turn(config(b, a, c), config(b_too, a, c), config(b, a, c))
    # Two new peers claiming the same allowed IP, one of them c's.
    c_new, d_new = peer(C, "10.3.0.0/16", "10.9.0.0/16"), peer(D, "10.9.0.0/16", "10.3.0.0/16")
    written_in_turn(config(a, b, c), config(a, b, c_new, d_new), config(a, b, c))
    # The same networks, written differently (host bits, order).
    written_in_turn(
        config(a, peer(B, "10.2.0.0/16", "10.5.0.0/24")),
        config(a, peer(B, "10.5.0.1/24", "10.2.0.0/16")),
    )


def test_a_peer_with_the_devices_new_key_leaves_nothing_behind() -> None:
    # The private key becomes a live peer's key as that peer leaves the config: the peer
    # goes with the key, and its allowed IPs are free for another peer next.
    other = Key(bytes([9]) * 32)
    mine = peer(other.public_key(), "10.7.0.0/16")
    a, b = peer(A, "10.1.0.0/16"), peer(B, "10.2.0.0/16")
    taker = peer(B, "10.2.0.0/16", "10.7.0.0/16")
    last = written_in_turn(
        config(a, mine, b),
        config(a, b, private_key=other),
        config(a, taker, private_key=other),
    )
    assert [p.public_key for p in last.peers] == [A, B]
    # A peer with the device's own key stays in the config: it is added on each plan.
    written_in_turn(config(a, mine, private_key=other), config(a, mine, private_key=other))


def test_a_state_whose_change_was_taken_twice_or_passed_plans_in_full() -> None:
    a, b = peer(A, "10.1.0.0/16"), peer(B, "10.2.0.0/16")
    first, empty = config(a, b), DeviceState()
    change = plan_changes(first, empty)
    assert change is not None
    once, twice = state_after(empty, change), state_after(empty, change)
    assert exact(once) == exact(twice)
    b_new = peer(B, "10.2.0.0/16", "10.1.0.0/16")
    second = config(a, b_new)
    # Both go on as states of their own; so does the one before them.
    for known in (once, twice, once, twice, empty):
        written_in_turn(second, config(b, a), first, start=known)


def test_a_plan_after_a_write_compares_only_the_peers_that_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [key_for(i, salt=79) for i in range(100)]
    peers = [
        peer(k, f"10.{i}.0.0/16", f"10.{i}.1.1/32", endpoint=ep(f"192.0.2.{i}:51820"))
        for i, k in enumerate(keys)
    ]
    first, empty = config(*peers), DeviceState()
    known = state_after(empty, plan_changes(first, empty) or DeviceChange())
    compared: list[Key] = []
    plan_one = wgpeers.peer_change

    def counted(key: Key, want: object, live: PeerState | None) -> PeerChange | None:
        compared.append(key)
        return plan_one(key, want, live)  # type: ignore[arg-type]

    monkeypatch.setattr(wgpeers, "peer_change", counted)
    # Peer 7 gets peer 8's allowed IP, 8 goes, 9 is replaced by an equal copy, 50 is new.
    moved = replace(peers[7], allowed_ips=(*peers[7].allowed_ips, cidr("10.8.0.0/16")))
    newcomer = peer(key_for(100, salt=79), "10.100.0.0/16")
    second = config(*peers[:7], moved, replace(peers[9]), *peers[10:50], newcomer, *peers[50:])
    change = plan_changes(second, known)
    assert compared == [keys[7], keys[9], newcomer.public_key]
    assert change == full_plan(second, known)
    assert change is not None
    assert [(c.public_key, c.remove) for c in change.peers] == [
        (keys[8], True),
        (keys[7], False),
        (newcomer.public_key, False),
    ]
    known = state_after(known, change)
    compared.clear()
    assert plan_changes(second, known) is None
    assert compared == []
    # A device read anew (a full apply) that needs nothing is compared whole once; the
    # plan after that compares what changed since.
    read = replace(known)
    assert plan_changes(second, read) is None
    assert len(compared) == len(second.peers)
    compared.clear()
    tuned = replace(second.peers[20], persistent_keepalive=25)
    third = config(*second.peers[:20], tuned, *second.peers[21:])
    change = plan_changes(third, read)
    assert compared == [tuned.public_key]
    assert change == full_plan(third, read)
    # A config with a key twice is planned whole.
    compared.clear()
    twice = config(*second.peers, peers[3])
    assert plan_changes(twice, known) == full_plan(twice, known)
    assert len(compared) == 2 * len(second.peers)
    # Many peers removed at once: in the order of the state, as the whole plan has them.
    compared.clear()
    fewer = config(*second.peers[::3])
    change = plan_changes(fewer, known)
    assert compared == []
    assert change == full_plan(fewer, known)
    assert change is not None
    kept = {p.public_key for p in fewer.peers}
    assert [c.public_key for c in change.peers] == [
        p.public_key for p in known.peers if p.public_key not in kept
    ]


# --- NAT discovery -----------------------------------------------------------------------


def test_discovered_endpoints_follow_kilo() -> None:
    seen = udp("198.51.100.7:41641")
    device = DeviceState(
        peers=(
            PeerState(public_key=KEYS[0], endpoint=seen, last_handshake=10.0),  # node, keepalive
            PeerState(public_key=KEYS[1], endpoint=seen, last_handshake=10.0),  # node, no keepalive
            PeerState(public_key=KEYS[2], endpoint=seen),  # node, keepalive, no handshake
            PeerState(public_key=KEYS[3], endpoint=seen, last_handshake=10.0),  # peer, keepalive 0
            PeerState(public_key=KEYS[4], last_handshake=10.0),  # peer, no endpoint (Kilo: null)
        )
    )
    nodes = [
        Node(name="a", key=KEYS[0], persistent_keepalive=25),
        Node(name="b", key=KEYS[1]),
        Node(name="c", key=KEYS[2], persistent_keepalive=25),
        Node(name="off-device", key=KEYS[5], persistent_keepalive=25),
    ]
    peers = [Peer(name="laptop", public_key=KEYS[3]), Peer(name="phone", public_key=KEYS[4])]
    assert discovered_endpoints(device, nodes, peers) == {
        str(KEYS[0]): seen,
        str(KEYS[3]): seen,
        str(KEYS[4]): None,
    }
    assert discovered_endpoints(DeviceState(), nodes, peers) == {}
