"""The UAPI adapter against real wireguard-go processes in test network namespaces.

Each wireguard-go runs in its own network namespace and its own mount namespace, where a
short test directory under /tmp is bind-mounted onto /var/run/wireguard: wireguard-go
creates its socket there, and the test (in the root mount namespace) reaches it through the
directory itself. ``wg`` runs inside both namespaces with nsenter. Traffic stays between
the test namespaces (a veth pair, documentation addresses).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kilo.adapters.keyfile import generate_private_key
from kilo.adapters.wireguard import UAPIDevice
from kilo.errors import DataPlaneError
from kilo.mesh.endpoint import Endpoint
from kilo.mesh.ip import parse_interface
from kilo.mesh.keys import Key
from kilo.mesh.wgdevice import (
    DeviceChange,
    DeviceState,
    PeerChange,
    PeerState,
    plan_changes,
    plan_update,
    render_uapi,
    state_after,
)
from kilo.mesh.wireguard import WireGuardConfig, WireGuardPeer
from tests.uapi_sim import apply_set

INTERFACE = "kilo0"


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


@dataclass
class WireGuardGo:
    """One wireguard-go process: its namespace, pid and socket directory."""

    netns: str
    process: subprocess.Popen[bytes]
    socket_dir: Path

    def wg(self, *argv: str) -> str:
        return run("nsenter", "-t", str(self.process.pid), "-m", "-n", "wg", *argv)

    def ip(self, *argv: str) -> str:
        return run("ip", "-n", self.netns, *argv)

    def device(self) -> UAPIDevice:
        return UAPIDevice(INTERFACE, self.socket_dir)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture
def start_wireguard_go() -> Iterator[Callable[[], WireGuardGo]]:
    """Start wireguard-go in fresh namespaces; everything is removed afterwards."""
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        pytest.fail(
            "the WireGuard e2e tests need root, wireguard-go and wg (.ci/run installs them)"
        )
    started: list[WireGuardGo] = []
    namespaces: list[str] = []
    directories: list[str] = []

    def start() -> WireGuardGo:
        netns = f"kilo-wg-{uuid.uuid4().hex[:8]}"
        run("ip", "netns", "add", netns)
        namespaces.append(netns)
        # Short on purpose: a UNIX socket path has at most 107 characters.
        directory = tempfile.mkdtemp(prefix="kwg-", dir="/tmp")
        directories.append(directory)
        process = subprocess.Popen(
            [
                "ip", "netns", "exec", netns,
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c",
                f"mount --bind {directory} /var/run/wireguard && "
                f"exec env WG_PROCESS_FOREGROUND=1 wireguard-go {INTERFACE}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        instance = WireGuardGo(netns, process, Path(directory))
        started.append(instance)
        socket_path = instance.socket_dir / f"{INTERFACE}.sock"
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if process.poll() is not None:
                assert process.stderr is not None
                pytest.fail(f"wireguard-go exited: {process.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("wireguard-go did not create its UAPI socket within 10 s")
            time.sleep(0.02)
        # Every exec kept the pid: nsenter -t reaches wireguard-go's own namespaces.
        assert Path(f"/proc/{process.pid}/comm").read_text().strip() == "wireguard-go"
        instance.ip("link", "set", "lo", "up")
        return instance

    try:
        yield start
    finally:
        for instance in started:
            instance.stop()
            if instance.process.stderr is not None:
                instance.process.stderr.close()
        for netns in namespaces:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


def cidr(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    parsed = parse_interface(text)
    assert parsed is not None
    return parsed


def key() -> Key:
    return generate_private_key()


def peer(public_key: Key, *allowed: str, **kwargs: object) -> WireGuardPeer:
    cidrs = tuple(parse_interface(a) for a in allowed)
    return WireGuardPeer(public_key=public_key, allowed_ips=cidrs, **kwargs)  # type: ignore[arg-type]


def dump(instance: WireGuardGo) -> tuple[list[str], dict[str, list[str]]]:
    """``wg show dump``: the interface line, and each peer's fields by public key."""
    lines = [line.split("\t") for line in instance.wg("show", INTERFACE, "dump").splitlines()]
    return lines[0], {fields[0]: fields[1:] for fields in lines[1:]}


def without_counters(state: DeviceState) -> dict[Key, PeerState]:
    return {
        p.public_key: replace(
            p,
            allowed_ips=tuple(sorted(p.allowed_ips, key=str)),
            last_handshake=None,
            rx_bytes=0,
            tx_bytes=0,
        )
        for p in state.peers
    }


def test_apply_three_peers_then_change_and_remove(start_wireguard_go) -> None:
    wg = start_wireguard_go()
    device = wg.device()
    private = key()
    p1, p2, p3 = (key().public_key() for _ in range(3))
    psk = key()
    desired = WireGuardConfig(
        private_key=private,
        listen_port=51820,
        peers=(
            peer(p1, "10.4.0.2/32", "10.2.1.0/24", endpoint=Endpoint.parse("192.0.2.2:51820")),
            peer(p2, "10.5.0.1/24", preshared_key=psk, persistent_keepalive=25),
            peer(p3, "fd00::1/64", endpoint=Endpoint.parse("[2001:db8::3]:51820")),
        ),
    )
    before = device.get()
    text = plan_update(desired, before)
    assert text is not None
    assert "replace_peers" not in text
    assert device.apply(desired) is not None
    interface, peers = dump(wg)
    assert interface == [str(private), str(private.public_key()), "51820", "off"]
    assert {k: v[:3] + v[6:] for k, v in peers.items()} == {
        str(p1): ["(none)", "192.0.2.2:51820", "10.4.0.2/32,10.2.1.0/24", "off"],
        str(p2): [str(psk), "(none)", "10.5.0.0/24", "25"],  # stored masked
        str(p3): ["(none)", "[2001:db8::3]:51820", "fd00::/64", "off"],
    }
    # wireguard-go agrees with the model the unit tests use.
    after = device.get()
    assert after.private_key == private
    assert without_counters(after) == without_counters(apply_set(before, text))
    assert device.apply(desired) is None  # host bits and all: nothing differs

    changed = replace(
        desired,
        peers=(desired.peers[0], peer(p2, "10.5.0.0/24", "10.6.0.0/16", preshared_key=psk)),
    )
    text = plan_update(changed, after)
    assert text is not None
    assert str(p1) not in text
    assert p1.raw.hex() not in text  # the unchanged peer is not mentioned at all
    assert device.apply(changed) is not None
    _, peers = dump(wg)
    assert sorted(peers) == sorted([str(p1), str(p2)])
    assert peers[str(p2)][2] == "10.5.0.0/24,10.6.0.0/16"
    assert peers[str(p2)][6] == "off"
    assert device.apply(changed) is None


def test_changing_one_peer_keeps_the_other_peers_sessions(start_wireguard_go) -> None:
    a, b = start_wireguard_go(), start_wireguard_go()
    a.ip("link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", b.netns)
    a.ip("address", "add", "192.0.2.1/24", "dev", "veth-a")
    b.ip("address", "add", "192.0.2.2/24", "dev", "veth-b")
    a.ip("address", "add", "10.4.0.1/24", "dev", INTERFACE)
    b.ip("address", "add", "10.4.0.2/24", "dev", INTERFACE)
    for instance, veth in ((a, "veth-a"), (b, "veth-b")):
        instance.ip("link", "set", veth, "up")
        instance.ip("link", "set", INTERFACE, "up")
    key_a, key_b = key(), key()
    others = [key().public_key() for _ in range(3)]
    config_a = WireGuardConfig(
        private_key=key_a,
        listen_port=51820,
        peers=(
            peer(key_b.public_key(), "10.4.0.2/32", endpoint=Endpoint.parse("192.0.2.2:51820")),
            peer(others[0], "10.9.0.0/24"),
            peer(others[1], "10.10.0.0/24"),
        ),
    )
    # b knows no endpoint for a: like a Kilo Peer behind NAT, it learns it from a's handshake.
    config_b = WireGuardConfig(
        private_key=key_b, listen_port=51820, peers=(peer(key_a.public_key(), "10.4.0.1/32"),)
    )
    assert a.device().apply(config_a) is not None
    assert b.device().apply(config_b) is not None
    run("ip", "netns", "exec", a.netns, "ping", "-c", "1", "-W", "5", "10.4.0.2")

    session = a.device().get().peer(key_b.public_key())
    assert session is not None
    assert session.last_handshake is not None
    assert session.rx_bytes > 0
    roamed = b.device().get().peer(key_a.public_key())
    assert roamed is not None
    assert str(roamed.endpoint) == "192.0.2.1:51820"

    # Change another peer on a: the session with b is untouched (Kilo's ReplacePeers
    # would remove b and add it again, which drops the session: quirk 23).
    changed_a = replace(
        config_a,
        peers=(
            config_a.peers[0],
            peer(others[0], "10.9.0.0/24", "10.11.0.0/24"),
            config_a.peers[2],
        ),
    )
    assert a.device().apply(changed_a) is not None
    kept = a.device().get().peer(key_b.public_key())
    assert kept is not None
    assert kept.last_handshake == session.last_handshake
    assert kept.rx_bytes >= session.rx_bytes
    assert kept.endpoint == session.endpoint

    # b's config has no endpoint for a: applying it again, or changing something else,
    # keeps the endpoint b learned (pitfall 5: Kilo saw a difference on every resync).
    assert b.device().apply(config_b) is None
    changed_b = replace(config_b, peers=(*config_b.peers, peer(others[2], "10.12.0.0/24")))
    assert b.device().apply(changed_b) is not None
    still = b.device().get().peer(key_a.public_key())
    assert still is not None
    assert still.endpoint == roamed.endpoint
    assert still.last_handshake == roamed.last_handshake

    # The tunnel works without a new handshake: the session survived both changes.
    run("ip", "netns", "exec", a.netns, "ping", "-c", "1", "-W", "5", "10.4.0.2")
    after = a.device().get().peer(key_b.public_key())
    assert after is not None
    assert after.last_handshake == session.last_handshake
    assert after.rx_bytes > session.rx_bytes

    # Control: what Kilo does (replace every peer) does reset the session, so the
    # assertions above would have caught it.
    a.device().set(
        "replace_peers=true\n"
        f"public_key={key_b.public_key().raw.hex()}\n"
        "endpoint=192.0.2.2:51820\nallowed_ip=10.4.0.2/32\n"
    )
    reset = a.device().get().peer(key_b.public_key())
    assert reset is not None
    assert reset.last_handshake is None
    assert reset.rx_bytes == 0


def test_errors_name_the_interface_and_socket(start_wireguard_go) -> None:
    wg = start_wireguard_go()
    device = wg.device()
    with pytest.raises(DataPlaneError) as info:
        device.set(f"public_key={'11' * 32}\nallowed_ip=10.0.0.0/33\n")
    assert str(info.value) == (
        f"WireGuard device kilo0 (UAPI socket {wg.socket_dir}/kilo0.sock) rejected the "
        "configuration: errno=-22 (Invalid argument)"
    )
    # The request stopped at the bad line; the device still answers and can be configured.
    desired = WireGuardConfig(
        private_key=key(),
        listen_port=51821,
        peers=(peer(key().public_key(), "10.0.0.0/24"),),
    )
    assert device.apply(desired) is not None
    assert device.apply(desired) is None

    wg.stop()
    with pytest.raises(DataPlaneError) as info:
        device.get()
    assert f"WireGuard device kilo0 (UAPI socket {wg.socket_dir}/kilo0.sock): " in str(info.value)
    assert str(desired.private_key) not in str(info.value)


def test_ipv6_endpoints_and_masked_allowed_ips_round_trip(start_wireguard_go) -> None:
    wg = start_wireguard_go()
    device = wg.device()
    p = key().public_key()
    desired = WireGuardConfig(
        private_key=key(),
        listen_port=51820,
        peers=(
            peer(
                p,
                "10.7.0.9/16",
                "10.7.0.1/16",  # the same network twice: one allowed IP
                "fd00:1::5/48",
                endpoint=Endpoint.parse("[2001:db8::1]:51820"),
            ),
        ),
    )
    assert device.apply(desired) is not None
    live = device.get().peer(p)
    assert live is not None
    assert str(live.endpoint) == "[2001:db8::1]:51820"
    assert set(live.allowed_ips) == {
        ipaddress.ip_network("10.7.0.0/16"),
        ipaddress.ip_network("fd00:1::/48"),
    }
    assert device.apply(desired) is None


def test_plans_of_what_changed_bring_wireguard_go_to_each_config(start_wireguard_go) -> None:
    # Between full applies the leader's plan hands out the same WireGuardPeer objects for
    # what did not change, and the diff on state_after(its last write) compares only the
    # others (issue 17): each plan is the one a fresh read gives, and after each write
    # the known state is what wireguard-go reports.
    wg = start_wireguard_go()
    device = wg.device()
    keys = [key().public_key() for _ in range(6)]
    peers = [
        peer(k, f"10.{i}.0.0/16", f"fd00:{i}::/64", endpoint=Endpoint.parse(f"192.0.2.{i}:1"))
        for i, k in enumerate(keys[:4])
    ]
    first = WireGuardConfig(private_key=key(), listen_port=51820, peers=tuple(peers))
    moved = replace(peers[1], allowed_ips=(*peers[1].allowed_ips, cidr("10.9.0.1/16")))
    configs = [
        first,
        # A new endpoint for peer 2 (a new object), the rest the same objects.
        replace(first, peers=(peers[0], peers[1], replace(peers[2], persistent_keepalive=25),
                              peers[3])),
        # Peers 0 and 2 go; a newcomer takes an allowed IP of 0; peer 1 gains one.
        replace(first, peers=(moved, peers[3], peer(keys[4], "10.0.0.0/16", "10.8.0.0/16"))),
        # An equal copy of peer 3 and a new listen port: only the port is written.
        replace(first, listen_port=51821, peers=(moved, replace(peers[3]),
                                                 peer(keys[4], "10.0.0.0/16", "10.8.0.0/16"))),
    ]  # fmt: skip
    known = device.get()
    for desired in configs:
        fresh = device.get()
        change = device.apply(desired, current=known)
        assert change is not None
        assert change == plan_changes(desired, replace(known))  # every peer compared
        # And what a read gives, but for the order of the removals (wireguard-go lists its
        # peers in an order of its own).
        read = plan_changes(desired, fresh)
        assert read is not None
        assert replace(change, peers=()) == replace(read, peers=())
        assert {c for c in change.peers if c.remove} == {c for c in read.peers if c.remove}
        assert [c for c in change.peers if not c.remove] == [c for c in read.peers if not c.remove]
        known = state_after(known, change)
        live = device.get()
        assert (known.private_key, known.listen_port) == (live.private_key, live.listen_port)
        assert without_counters(known) == without_counters(live)
    assert change.peers == ()
    assert list(without_counters(known)) == [keys[1], keys[3], keys[4]]
    assert device.apply(configs[-1], current=known) is None


def test_the_state_after_each_write_is_what_wireguard_go_holds(start_wireguard_go) -> None:
    # The leader plans an incremental apply on state_after(its last write) instead of
    # reading the device (issue 17): after config A then config B, each planned on the
    # state known from the write before, that state is what wireguard-go reports.
    wg = start_wireguard_go()
    device = wg.device()
    p1, p2, p3, p4 = (key().public_key() for _ in range(4))
    psk = key()
    config_a = WireGuardConfig(
        private_key=key(),
        listen_port=51820,
        peers=(
            peer(p1, "10.4.0.2/32", "10.2.1.0/24", endpoint=Endpoint.parse("192.0.2.2:51820")),
            peer(p2, "10.5.0.1/24", preshared_key=psk, persistent_keepalive=25),
            peer(p3, "fd00::1/64", endpoint=Endpoint.parse("[2001:db8::3]:51820")),
        ),
    )
    config_b = WireGuardConfig(
        private_key=key(),  # a new key
        listen_port=51821,
        peers=(
            # 10.2.1.0/24 moves from p1 to p4; p1 gets a new endpoint and a keepalive.
            peer(p1, "10.4.0.2/32", endpoint=Endpoint.parse("192.0.2.9:51820"),
                 persistent_keepalive=10),
            peer(p2, "10.5.0.0/24", "10.6.0.0/16"),  # the preshared key cleared
            peer(p4, "10.2.1.0/24", "fd00:2::/64", preshared_key=psk,
                 endpoint=Endpoint.parse("[2001:db8::4]:1")),
        ),  # p3 removed
    )  # fmt: skip
    known = device.get()
    for desired in (config_a, config_b):
        change = device.apply(desired, current=known)
        assert change is not None
        known = state_after(known, change)
        live = device.get()
        assert (known.private_key, known.listen_port) == (live.private_key, live.listen_port)
        assert without_counters(known) == without_counters(live)
        assert device.apply(desired, current=known) is None  # nothing left to write
    assert set(without_counters(known)) == {p1, p2, p4}
    cleared = known.peer(p2)
    assert cleared is not None and cleared.preshared_key is None
    # A change plan_changes does not make, written as it is: p4 takes p1's allowed IP
    # (p1 not mentioned), an allowed IP listed twice, the removal of an absent peer, the
    # device's own key as a peer.
    assert config_b.private_key is not None
    own = config_b.private_key.public_key()
    odd = DeviceChange(
        peers=(
            PeerChange(public_key=p4, allowed_ips=tuple(map(ipaddress.ip_network, (
                "10.4.0.2/32", "fd00:2::/64", "10.4.0.2/32")))),
            PeerChange(public_key=p3, remove=True),
            PeerChange(public_key=own, allowed_ips=(ipaddress.ip_network("10.5.0.0/24"),)),
        )
    )  # fmt: skip
    device.set(render_uapi(odd))
    known = state_after(known, odd)
    live = device.get()
    assert without_counters(known) == without_counters(live)
    moved = known.peer(p1)
    assert moved is not None and moved.allowed_ips == ()
