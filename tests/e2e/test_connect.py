"""``kgctl connect`` end to end: a laptop on the internet joins a running mesh as a Peer.

The testbed of test_agent.py (two public clouds and a NATed office, ``kg`` on every node,
one pod per node), plus a laptop: a namespace on the internet bridge whose holder runs
``wireguard-go kilo0``. ``kgctl connect`` runs inside the laptop's namespaces with an admin
kubeconfig for the API server's internet address, uses that kilo0 (it exists already), and
is stopped with SIGTERM as a terminal or a service manager would. The tests share one
testbed and run in file order.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.resources.core_v1 import Node

from kilo.adapters.kubernetes import RESOURCES
from kilo.mesh import translate
from kilo.sandbox import runs, testbed
from kilo.sandbox.testbed import Location, Testbed

LOCATIONS = [
    Location("aws", nodes=2),
    Location("gcp", nodes=2),
    Location("office", nodes=2, nat=True, annotations={translate.PERSISTENT_KEEPALIVE: "5"}),
]
CONVERGE = 60.0
LAPTOP_IP = "10.5.0.1"
KEY_FILE = "/var/lib/kilo/connect/laptop.key"
STATE_FILE = "/var/lib/kilo/connect/laptop.routes.json"
Peer = RESOURCES["peers"]


def wait_for(predicate: Any, message: str, timeout: float = CONVERGE) -> Any:
    return runs.wait_for(predicate, timeout=timeout, message=message, interval=0.25)


class Connect:
    """One ``kgctl connect`` process inside a laptop, logging to ``logs/<name>.connect.N.log``."""

    runs = 0

    def __init__(self, bed: Testbed, laptop: str, *args: str) -> None:
        Connect.runs += 1
        self.log_path = bed.logs / f"{laptop}.connect.{Connect.runs}.log"
        self.argv = [
            *bed.enter(laptop),
            sys.executable,
            "-m",
            "kilo.cli.kgctl",
            "connect",
            f"--kubeconfig={bed.laptop_kubeconfig}",  # type: ignore[attr-defined]
            "--resync-period=5s",
            "--log-level=debug",
            *args,
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment(),
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.startswith("{")]

    def logged(self, msg: str) -> dict[str, Any] | None:
        return next((e for e in self.entries() if e.get("msg") == msg), None)

    def wait_logged(self, msg: str, timeout: float = CONVERGE) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.process.poll() is not None and self.logged(msg) is None:
                raise AssertionError(
                    f"kgctl connect exited ({self.process.returncode}):\n" + self.text()[-3000:]
                )
            return self.logged(msg)

        result: dict[str, Any] = wait_for(found, f"kgctl connect did not log {msg!r}", timeout)
        return result

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "KUBECONFIG" and not k.lower().endswith("_proxy")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def bed(controlplane_binaries: Path) -> Iterator[Testbed]:
    runs.cleanup_stale()
    with Testbed(LOCATIONS, binaries=controlplane_binaries) as built:
        assert built.plane is not None
        for node in built.nodes:
            built.start_agent(node)
        running: list[Connect] = []
        built.connects = running  # type: ignore[attr-defined]
        try:
            for node in built.nodes:
                built.add_pod(node, f"pod-{node}", timeout=CONVERGE)
            built.add_laptop("laptop")
            # The admin credentials, for the API server's address on the internet bridge.
            kubeconfig = built.workdir / "laptop-admin.kubeconfig"
            built.plane.write_kubeconfig(
                kubeconfig,
                "laptop-admin",
                organizations=("system:masters",),
                server=f"https://{testbed.CP_WAN}:{built.plane.port}",
            )
            built.laptop_kubeconfig = kubeconfig  # type: ignore[attr-defined]
            yield built
        except BaseException:
            for node in built.nodes:
                sys.stderr.write(f"--- {node}\n{built.agent_log(node)[-3000:]}\n")
            raise
        finally:
            for run in running:
                run.stop(signal.SIGKILL, timeout=10)


def start(bed: Testbed, laptop: str = "laptop", *args: str) -> Connect:
    run = Connect(bed, laptop, *args)
    bed.connects.append(run)  # type: ignore[attr-defined]
    return run


def peer_spec(bed: Testbed, name: str) -> dict[str, Any] | None:
    try:
        obj = bed.api().get(Peer, name)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    spec: dict[str, Any] = obj.to_dict()["spec"]  # type: ignore[attr-defined]
    return spec


def peer_object(bed: Testbed, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = bed.api().get(Peer, name).to_dict()  # type: ignore[attr-defined]
    return obj


def pod_per_location(bed: Testbed) -> dict[str, testbed.Pod]:
    return {loc.name: bed.pods[f"pod-{loc.name}-2"] for loc in LOCATIONS}


def reaches(bed: Testbed, src: str, ip: str) -> bool:
    return bed.ping(src, ip, count=1, timeout=1)


def static_routes(bed: Testbed, laptop: str) -> list[str]:
    return [
        line
        for line in bed.run(laptop, "ip", "route", "show", "proto", "static").splitlines()
        if line
    ]


def wg_peers(bed: Testbed, laptop: str, interface: str = "kilo0") -> list[str]:
    return bed.run(laptop, "wg", "show", interface, "peers").split()


def addresses(bed: Testbed, laptop: str, interface: str = "kilo0") -> list[str]:
    data = json.loads(bed.run(laptop, "ip", "-j", "address", "show", "dev", interface))
    # The kernel's IPv6 link-local address of a tun device is not ours to manage.
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in data
        for a in link.get("addr_info", [])
        if a.get("scope") != "link"
    ]


# --- the tests --------------------------------------------------------------------------------


def test_the_laptop_reaches_every_location_and_every_location_reaches_it(bed: Testbed) -> None:
    run = start(bed, "laptop", "laptop", "--interface=kilo0", f"--allowed-ip={LAPTOP_IP}/32")
    run.wait_logged("created peer")
    generated = run.logged("generated public key")
    assert generated is not None
    public = generated["key"]
    # Logged just after "created peer" (connection.py): awaited, not read at once.
    assert run.wait_logged("using the existing interface") is not None
    for location, pod in pod_per_location(bed).items():
        wait_for(
            lambda ip=pod.ip: reaches(bed, "laptop", ip), f"the laptop does not reach {location}"
        )
    for location, pod in pod_per_location(bed).items():
        assert reaches(bed, pod.netns, LAPTOP_IP), f"{location} does not reach the laptop"
        echo = bed.tcp_exchange("laptop", pod.netns, pod.ip, 7100, payload=f"to {location}")
        assert echo.reply == f"to {location}"
        assert echo.peer == LAPTOP_IP  # not masqueraded: the pod sees the laptop's mesh IP
    echo = bed.tcp_exchange(bed.pods["pod-office-1"].netns, "laptop", LAPTOP_IP, 7101)
    assert echo.reply == "hello"
    assert echo.peer == bed.pods["pod-office-1"].ip

    # The Peer holds the local key; the key is kept, private, and never logged.
    assert peer_spec(bed, "laptop") == {
        "allowedIPs": [f"{LAPTOP_IP}/32"],
        "persistentKeepalive": 10,
        "publicKey": public,
    }
    key_path = bed.path("laptop", KEY_FILE)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    private = key_path.read_text().strip()
    assert bed.run("laptop", "wg", "pubkey", stdin=private).strip() == public
    assert bed.run("laptop", "wg", "show", "kilo0", "public-key").strip() == public
    assert private not in run.text()
    assert addresses(bed, "laptop") == [f"{LAPTOP_IP}/32"]
    assert len(wg_peers(bed, "laptop")) == 3  # one leader per location
    assert run.process.poll() is None


def test_another_key_for_the_same_name_is_refused_and_changes_nothing(bed: Testbed) -> None:
    before_peer = peer_object(bed, "laptop")
    before = (
        static_routes(bed, "laptop"),
        sorted(wg_peers(bed, "laptop")),
        addresses(bed, "laptop"),
    )
    other = "/var/lib/kilo/connect/other.key"
    result = subprocess.run(
        [
            *bed.enter("laptop"),
            sys.executable,
            "-m",
            "kilo.cli.kgctl",
            "connect",
            "laptop",
            f"--kubeconfig={bed.laptop_kubeconfig}",  # type: ignore[attr-defined]
            f"--private-key={other}",
            f"--allowed-ip={LAPTOP_IP}/32",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        check=False,
    )
    assert result.returncode == 1, result
    generated = next(
        json.loads(line)
        for line in result.stdout.splitlines()
        if json.loads(line)["msg"] == "generated public key"
    )
    message = result.stderr
    assert message.count("\n") == 1, message
    assert message.startswith('kgctl: Peer "laptop" already exists with public key ')
    assert before_peer["spec"]["publicKey"] in message
    assert generated["key"] in message
    assert "--private-key" in message and "kubectl delete peers.kilo.squat.ai laptop" in message
    # Nothing changed: the Peer, the laptop's routes, peers and address, and no key written.
    assert peer_object(bed, "laptop")["metadata"] == before_peer["metadata"]
    after = (
        static_routes(bed, "laptop"),
        sorted(wg_peers(bed, "laptop")),
        addresses(bed, "laptop"),
    )
    assert after == before
    assert not bed.path("laptop", other).exists()


def test_the_laptop_follows_cluster_changes_and_repairs_its_routes(bed: Testbed) -> None:
    patch = {"metadata": {"annotations": {translate.ALLOWED_LOCATION_IPS: "192.168.77.0/24"}}}
    bed.api().patch(Node, "gcp-1", patch)
    wait_for(
        lambda: "192.168.77.0/24" in bed.run("laptop", "wg", "show", "kilo0", "allowed-ips"),
        "the laptop did not pick up gcp-1's allowed location IP",
    )
    wait_for(
        lambda: "via 10.4.0." in bed.run("laptop", "ip", "route", "show", "192.168.77.0/24"),
        "the laptop has no route to gcp-1's allowed location IP",
    )
    bed.api().patch(
        Node, "gcp-1", {"metadata": {"annotations": {translate.ALLOWED_LOCATION_IPS: None}}}
    )
    wait_for(
        lambda: bed.run("laptop", "ip", "route", "show", "192.168.77.0/24").strip() == "",
        "the route to the removed allowed location IP stayed",
    )
    assert "192.168.77.0/24" not in bed.run("laptop", "wg", "show", "kilo0", "allowed-ips")

    target = str(bed.nodes["aws-2"].pod_cidr)
    route = bed.run("laptop", "ip", "route", "show", target).strip()
    assert route
    bed.run("laptop", "ip", "route", "del", target)
    wait_for(
        lambda: bed.run("laptop", "ip", "route", "show", target).strip() == route,
        f"the deleted route to {target} did not come back",
        timeout=20,
    )


def test_sigterm_removes_the_peer_the_routes_and_the_interface_config(bed: Testbed) -> None:
    (run,) = [r for r in bed.connects if r.process.poll() is None]  # type: ignore[attr-defined]
    assert run.stop() == 0
    assert run.logged("deleted peer") is not None
    assert run.logged("caught interrupt; gracefully cleaning up; see you next time!") is not None
    assert peer_spec(bed, "laptop") is None
    assert static_routes(bed, "laptop") == []
    assert wg_peers(bed, "laptop") == []
    assert addresses(bed, "laptop") == []
    # wireguard-go (the laptop's, not ours) still runs: the interface was only borrowed.
    assert bed.laptops["laptop"].running
    state = json.loads(bed.path("laptop", STATE_FILE).read_text())
    assert (state["routes"], state["rules"]) == ([], [])  # nothing left for a later run
    # The leaders drop the laptop.
    wait_for(
        lambda: all(
            len(bed.wg_dump(leader).splitlines()) == 3 for leader in ("aws-1", "gcp-1", "office-1")
        ),
        "the leaders still have the laptop as a WireGuard peer",
    )


def test_a_second_connect_with_the_kept_key_starts_afresh_and_clean_up_false_keeps_the_peer(
    bed: Testbed,
) -> None:
    first_key = bed.path("laptop", KEY_FILE).read_text()
    run = start(bed, "laptop", "laptop", f"--allowed-ip={LAPTOP_IP}/32", "--clean-up=false")
    run.wait_logged("created peer")
    # Kilo's line names the public key whether the private key is new or read.
    using = run.logged("generated public key")
    assert using is not None and using["private key"] == "read"
    assert bed.path("laptop", KEY_FILE).read_text() == first_key
    assert peer_spec(bed, "laptop")["publicKey"] == using["key"]  # type: ignore[index]
    for location, pod in pod_per_location(bed).items():
        wait_for(
            lambda ip=pod.ip: reaches(bed, "laptop", ip), f"the laptop does not reach {location}"
        )
    assert run.stop() == 0
    # --clean-up=false: the Peer, the routes and the interface's config stay.
    assert peer_spec(bed, "laptop") is not None
    routes = static_routes(bed, "laptop")
    assert routes
    assert len(wg_peers(bed, "laptop")) == 3

    # A third run uses that Peer (its key is ours), takes over the routes, and, having not
    # created the Peer, leaves it on exit.
    run = start(bed, "laptop", "laptop", f"--allowed-ip={LAPTOP_IP}/32")
    run.wait_logged("using the existing peer")
    assert run.logged("created peer") is None
    wait_for(lambda: reaches(bed, "laptop", bed.pods["pod-gcp-2"].ip), "the laptop lost gcp")
    assert run.stop() == 0
    assert peer_spec(bed, "laptop") is not None
    assert static_routes(bed, "laptop") == []
    assert wg_peers(bed, "laptop") == []
    bed.api().delete(Peer, "laptop")


def test_connect_creates_its_own_interface_with_wireguard_go_and_removes_it(bed: Testbed) -> None:
    bed.add_laptop("roadwarrior")
    address = "10.5.0.2"
    run = start(
        bed, "roadwarrior", "roadwarrior", "--interface=wg1", f"-a={address}/32", "--mtu=1380"
    )
    created = run.wait_logged("created WireGuard interface")
    assert created["implementation"] == "wireguard-go"  # no kernel WireGuard here
    # Kilo's lines and fields (kgctl connect's): the public key, the interface's name, its IP.
    assert created["name"] == "wg1"
    key = run.logged("generated public key")
    spec = peer_spec(bed, "roadwarrior")
    assert key is not None and key["private key"] == "generated"
    assert spec is not None and spec["publicKey"] == key["key"]
    assert run.wait_logged("set IP address of WireGuard interface")["IP"] == f"{address}/32"
    assert run.wait_logged("starting syncer")["level"] == "info"
    started = run.logged("started wireguard-go")
    assert started is not None
    child = started["pid"]
    assert bed.run("roadwarrior", "cat", "/sys/class/net/wg1/mtu").strip() == "1380"
    pod = bed.pods["pod-office-2"]
    wait_for(lambda: reaches(bed, "roadwarrior", pod.ip), "roadwarrior does not reach the office")
    assert reaches(bed, pod.netns, address)
    assert run.stop() == 0
    assert bed.run("roadwarrior", "ip", "link", "show", "wg1", check=False) == ""
    assert not Path(f"/proc/{child}").exists()
    assert peer_spec(bed, "roadwarrior") is None
    assert static_routes(bed, "roadwarrior") == []
    # And its own kilo0 (the holder's) was never touched.
    assert wg_peers(bed, "roadwarrior") == []
