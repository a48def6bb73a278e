"""kilo-sandbox's pure parts: prerequisite checks, the printed tables, the state file,
convergence, the progress display and the package data the command needs once installed."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import socket
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from kilo.errors import KiloError
from kilo.sandbox import __main__ as cli
from kilo.sandbox import (
    commands,
    controlplane,
    prerequisites,
    progress,
    report,
    runs,
    state,
    testbed,
)
from kilo.sandbox.prerequisites import CNI_PLUGINS, COMMANDS, Facts

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = ROOT / "src" / "kilo" / "sandbox"

EVERYTHING = Facts(
    root=True,
    tun=True,
    commands=frozenset(COMMANDS),
    cni_plugins=frozenset(CNI_PLUGINS),
)


def facts(**changes: object) -> Facts:
    values = {
        "root": True,
        "tun": True,
        "commands": frozenset(COMMANDS),
        "cni_plugins": frozenset(CNI_PLUGINS),
        "binaries_built": True,
        "go": True,
    }
    values.update(changes)
    return Facts(**values)  # type: ignore[arg-type]


# --- prerequisites ----------------------------------------------------------------------------


def test_nothing_missing() -> None:
    assert prerequisites.missing(EVERYTHING) is None
    # Go only matters while the control plane is not built.
    assert prerequisites.missing(facts(go=False)) is None


def test_not_root_is_one_sentence() -> None:
    assert prerequisites.missing(facts(root=False)) == (
        "kilo-sandbox up needs root (it creates network and mount namespaces: run it with sudo)."
    )


def test_no_tun() -> None:
    assert prerequisites.missing(facts(tun=False)) == (
        "kilo-sandbox up needs /dev/net/tun (wireguard-go's TUN device: modprobe tun)."
    )


def test_missing_commands_name_their_debian_packages() -> None:
    found = frozenset(COMMANDS) - {"wg", "wireguard-go", "iptables", "iptables-restore"}
    assert prerequisites.missing(facts(commands=found)) == (
        "kilo-sandbox up needs the commands iptables, iptables-restore, wireguard-go, wg "
        "(Debian packages: iptables wireguard-go wireguard-tools; `make sandbox` installs them)."
    )
    one = frozenset(COMMANDS) - {"ip"}
    assert prerequisites.missing(facts(commands=one), subject="the testbed") == (
        "the testbed needs the command ip "
        "(Debian packages: iproute2; `make sandbox` installs them)."
    )


def test_missing_cni_plugins() -> None:
    assert prerequisites.missing(facts(cni_plugins=frozenset({"bridge"}))) == (
        "kilo-sandbox up needs the CNI plugins host-local, portmap in /usr/lib/cni "
        "(Debian packages: containernetworking-plugins; `make sandbox` installs them)."
    )


def test_go_is_needed_for_the_first_build_only() -> None:
    assert prerequisites.missing(facts(binaries_built=False, go=False)) == (
        "kilo-sandbox up needs Go (https://go.dev/dl/), once, to build etcd and kube-apiserver."
    )
    assert prerequisites.missing(facts(binaries_built=False, go=True)) is None


def test_everything_missing_is_still_one_sentence() -> None:
    sentence = prerequisites.missing(
        Facts(
            root=False,
            tun=False,
            commands=frozenset(),
            cni_plugins=frozenset(),
            binaries_built=False,
            go=False,
        )
    )
    assert sentence is not None
    assert sentence.startswith("kilo-sandbox up needs root (")
    assert sentence.count(".") == sentence.count("/go.dev/") + 1  # one full stop, at the end
    assert sentence.endswith(" installs them).")
    assert "\n" not in sentence
    assert " and Go (https://go.dev/dl/)" in sentence


def test_search_path_adds_the_sbin_directories_it_lacks() -> None:
    assert prerequisites.search_path("/usr/bin:/usr/sbin") == [
        "/usr/bin",
        "/usr/sbin",
        "/usr/local/sbin",
        "/sbin",
    ]


def test_observe_sees_this_process() -> None:
    seen = prerequisites.observe(cni_dir="/nonexistent")
    assert seen.cni_plugins == frozenset()
    assert "sh" not in seen.commands  # only the commands asked for


# --- the reachability matrix --------------------------------------------------------------------


def test_matrix_marks_each_path() -> None:
    names = ["pod-a", "pod-b", "laptop (peer)"]
    reached = {
        ("pod-a", "pod-b"): True,
        ("pod-a", "laptop (peer)"): True,
        ("pod-b", "pod-a"): True,
        ("pod-b", "laptop (peer)"): False,
        ("laptop (peer)", "pod-a"): True,
    }
    assert report.matrix(names, names, reached) == (
        "reachability, ping from each row to each column: 4 of 5 paths reachable\n"
        "FROM \\ TO      pod-a  pod-b  laptop (peer)\n"
        "pod-a          -      ok     ok\n"
        "pod-b          ok     -      FAIL\n"
        "laptop (peer)  ok     ?      -\n"
    )
    assert report.tally(reached) == (4, 5)
    assert report.failures(reached) == [("pod-b", "laptop (peer)")]


def test_matrix_of_nothing() -> None:
    assert report.matrix([], [], {}).startswith("reachability, ping from each row to each column")


# --- WireGuard ---------------------------------------------------------------------------------

DUMP = (
    "cHJpdmF0ZQ==\tcHVibGlj\t51820\toff\n"
    "a2V5LWE=\t(none)\t203.0.113.10:51820\t10.4.0.1/32,10.42.0.0/24\t1700000000\t10\t20\t5\n"
    "a2V5LWI=\t(none)\t(none)\t10.5.0.1/32\t0\t0\t0\toff\n"
)


def test_parse_dump_skips_the_interface_line() -> None:
    assert report.parse_dump(DUMP) == [
        report.PeerState(
            public_key="a2V5LWE=", endpoint="203.0.113.10:51820", latest_handshake=1700000000
        ),
        report.PeerState(public_key="a2V5LWI=", endpoint="(none)", latest_handshake=0),
    ]
    assert report.parse_dump("") == []


def test_handshakes_table_names_peers_and_ages() -> None:
    peers = report.parse_dump(DUMP)
    text = report.handshakes(
        [("aws-1", peers[0]), ("aws-1", peers[1])], {"a2V5LWE=": "gcp-1"}, now=1700000012
    )
    assert text == (
        "MACHINE  PEER       ENDPOINT            LATEST HANDSHAKE\n"
        "aws-1    gcp-1      203.0.113.10:51820  12 s ago\n"
        "aws-1    a2V5LWI=…  (none)              never\n"
    )
    assert report.handshakes([], {}, now=0) == "no WireGuard peers\n"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0 s ago"), (0, "0 s ago"), (119, "119 s ago"), (120, "2 min ago"), (7300, "2 h ago")],
)
def test_age(seconds: int, text: str) -> None:
    assert report.age(seconds) == text


# --- convergence -------------------------------------------------------------------------------


def node(
    name: str, segment: str, *, leader: bool, key: str = "", ready: bool = True
) -> dict[str, object]:
    return {
        "name": name,
        "segment": segment,
        "leader": leader,
        "ready": ready,
        "publicKey": key,
    }


LOCATION_LISTING: dict[str, list[dict[str, object]]] = {
    "nodes": [
        node("aws-1", "location:aws", leader=True, key="K1"),
        node("aws-2", "location:aws", leader=False, key="K2"),
        node("gcp-1", "location:gcp", leader=True, key="K3"),
        node("office-1", "location:office", leader=True, key="K4"),
    ],
    "peers": [{"name": "laptop", "publicKey": "P1"}],
}


def test_expected_peers_location_granularity() -> None:
    assert report.expected_peers(LOCATION_LISTING) == {
        "aws-1": 3,  # gcp, office and the laptop
        "aws-2": 0,
        "gcp-1": 3,
        "office-1": 3,
    }
    assert report.leaders(LOCATION_LISTING) == ["aws-1", "gcp-1", "office-1"]
    assert report.key_names(LOCATION_LISTING) == {
        "K1": "aws-1",
        "K2": "aws-2",
        "K3": "gcp-1",
        "K4": "office-1",
        "P1": "laptop",
    }


def test_expected_peers_full_granularity() -> None:
    listing = {
        "nodes": [node(f"n{i}", f"node:n{i}", leader=True) for i in range(4)],
        "peers": [],
    }
    assert report.expected_peers(listing) == {f"n{i}": 3 for i in range(4)}


def test_expected_peers_cross_granularity() -> None:
    def cross(name: str, location: str, internal_ip: str = "172.16.0.10") -> dict[str, object]:
        return {
            **node(name, f"node:{name}", leader=True),
            "location": location,
            "internalIP": internal_ip,
            "granularity": "cross",
        }

    listing = {
        "nodes": [
            cross("aws-1", "aws"),
            cross("aws-2", "aws"),
            cross("aws-3", "aws", internal_ip=""),  # no internal IP: a location of its own
            cross("gcp-1", "gcp"),
        ],
        "peers": [{"name": "laptop", "publicKey": "P1"}],
    }
    assert report.expected_peers(listing) == {
        "aws-1": 3,  # aws-3, gcp-1 and the laptop
        "aws-2": 3,
        "aws-3": 4,  # every other node and the laptop
        "gcp-1": 4,
    }


def test_converged() -> None:
    counts = {"aws-1": 3, "aws-2": 0, "gcp-1": 3, "office-1": 3}
    assert report.converged(LOCATION_LISTING, counts)
    assert not report.converged(LOCATION_LISTING, {**counts, "gcp-1": 2})
    assert not report.converged(LOCATION_LISTING, {**counts, "aws-2": -1})  # unreadable
    nodes = LOCATION_LISTING["nodes"]
    not_ready = [*nodes[:1], node("aws-2", "location:aws", leader=False, ready=False), *nodes[2:]]
    assert not report.converged({**LOCATION_LISTING, "nodes": not_ready}, counts)
    two_leaders = [*nodes[:1], node("aws-2", "location:aws", leader=True), *nodes[2:]]
    assert not report.converged({**LOCATION_LISTING, "nodes": two_leaders}, {**counts, "aws-2": 3})
    assert not report.converged({"nodes": [], "peers": []}, {})


# --- measuring -----------------------------------------------------------------------------------


def test_measure_retries_only_what_failed_until_it_gets_through() -> None:
    calls: list[tuple[str, str]] = []

    def probe(netns: str, ip: str) -> bool:
        calls.append((netns, ip))
        # b -> a fails once (a keepalive round), then gets through.
        return not (netns == "ns-b" and ip == "10.0.0.1" and calls.count((netns, ip)) == 1)

    everyone = [commands.Target("a", "ns-a", "10.0.0.1"), commands.Target("b", "ns-b", "10.0.0.2")]
    assert commands.measure(everyone, timeout=30, probe=probe) == {
        ("a", "b"): True,
        ("b", "a"): True,
    }
    assert sorted(calls) == [("ns-a", "10.0.0.2"), ("ns-b", "10.0.0.1"), ("ns-b", "10.0.0.1")]


def test_measure_gives_up_at_the_deadline() -> None:
    everyone = [commands.Target("a", "ns-a", "10.0.0.1"), commands.Target("b", "ns-b", "10.0.0.2")]
    reached = commands.measure(everyone, timeout=0, probe=lambda netns, ip: netns == "ns-a")
    assert reached == {("a", "b"): True, ("b", "a"): False}


# --- the state file ----------------------------------------------------------------------------


def sample_state() -> state.State:
    return state.State(
        directory="/var/lib/kilo-sandbox",
        prefix="ksb123abc",
        granularity="location",
        host_link="ksb123abch",
        workdir="/var/lib/kilo-sandbox/run",
        api_server="https://198.51.100.2:6443",
        kubeconfig="/var/lib/kilo-sandbox/kubeconfig",
        nat_locations=("office",),
        namespaces=("ksb123abc-cp", "ksb123abc-aws-1"),
        processes=(state.Process(role="etcd", pid=10, start="123"),),
        nodes=(state.Machine(name="aws-1", netns="ksb123abc-aws-1", holder=11, location="aws"),),
        peers=(
            state.Machine(name="laptop", netns="ksb123abc-laptop", holder=12, mesh_ip="10.5.0.1"),
        ),
        pods=(
            state.Pod(name="pod-aws-1", node="aws-1", netns="ksb123abc-pod-aws-1", ip="10.42.0.2"),
        ),
        complete=True,
    )


def test_state_round_trips() -> None:
    assert state.loads(state.dumps(sample_state())) == sample_state()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 99}', "version 99, want 1"),
        ('{"version": 1}', "bad field"),
        (
            '{"version": 1, "directory": "d", "prefix": "p", "granularity": "g", '
            '"host_link": "h", "workdir": "w", "pods": [1]}',
            "bad field",
        ),
    ],
)
def test_state_refuses_what_it_cannot_read(text: str, problem: str) -> None:
    with pytest.raises(state.StateError, match=problem):
        state.loads(text)


def test_state_ignores_fields_it_does_not_know() -> None:
    data = json.loads(state.dumps(sample_state()))
    data["pods"][0]["future"] = "field"
    assert state.loads(json.dumps(data)) == sample_state()


def test_prefix_is_derived_from_the_directory() -> None:
    a = state.prefix_for("/var/lib/kilo-sandbox")
    assert a == state.prefix_for("/var/lib/kilo-sandbox")
    assert a != state.prefix_for("/tmp/other")
    assert testbed.PREFIX.fullmatch(a)
    assert a.startswith(state.FAMILY) and not a.startswith(runs.FAMILY)
    # The host link (prefix + "h") is a valid interface name.
    assert len(a) + 1 <= 15


# --- progress ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (7.9, "0:07"), (761, "12:41"), (3723, "1:02:03")]
)
def test_elapsed(seconds: float, text: str) -> None:
    assert progress.elapsed(seconds) == text


def test_progress_in_a_log_prints_lines() -> None:
    stream = io.StringIO()
    clock = Clock()
    shown = progress.Progress(stream, tty=False, clock=clock)
    with shown.step("building etcd") as step:
        step.note("12:00:00 building etcd (about 2 minutes the first time)")
        clock.now += 75
    assert stream.getvalue() == (
        "building etcd ...\n"
        "  12:00:00 building etcd (about 2 minutes the first time)\n"
        "✓ building etcd (1:15)\n"
    )


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    clock = Clock()
    shown = progress.Progress(stream, tty=True, clock=clock)
    with pytest.raises(RuntimeError), shown.step("waiting"):
        clock.now += 3
        raise RuntimeError("boom")
    text = stream.getvalue()
    assert text.startswith("⠋ waiting  0:00")
    assert text.endswith(f"{progress.CLEAR}✗ waiting (0:03)\n")


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--locations", "0"],
        ["up", "--locations", "9"],
        ["up", "--nodes", "x"],
        ["up", "--nodes", "-1"],
        ["up", "--nodes", "1_0"],
        ["up", "--nodes", "99999999999999999999999"],
        ["up", "--granularity", "star"],
        ["up", "--clusters", "0"],
        ["up", "--clusters", "3"],
        ["up", "--clusters", "2", "--kernel"],
        ["up", "--clusters", "2", "--locations", "5"],
        ["guest", "--attached-plane", "/p", "--clusters", "2"],
        ["up", "--dir", ""],
        ["down", "--dir", " "],
        ["up", "--loc", "2"],
        ["sideways"],
        [],
    ],
)
def test_command_line_mistakes_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("kilo-sandbox")
    assert err.count("\n") == 1 and err.endswith("--help)\n")


def test_an_empty_dir_flag_names_the_way_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["up", "--dir="])
    assert capsys.readouterr().err == (
        "kilo-sandbox up: argument --dir: '' names no directory; give one, or leave --dir "
        "out for $KILO_SANDBOX_DIR, else /var/lib/kilo-sandbox (see kilo-sandbox up --help)\n"
    )


def test_an_empty_kilo_sandbox_dir_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.DIR_ENV, "")
    assert cli.parser().parse_args(["status"]).dir == commands.DEFAULT_DIR
    monkeypatch.setenv(cli.DIR_ENV, "/tmp/box")
    assert cli.parser().parse_args(["status"]).dir == Path("/tmp/box")


def test_command_line_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.DIR_ENV, raising=False)
    args = cli.parser().parse_args(["up"])
    assert (args.locations, args.nodes, args.granularity) == (2, 2, "location")
    assert args.dir == commands.DEFAULT_DIR
    args = cli.parser().parse_args(["down", "--dir", "/tmp/x"])
    assert args.dir == Path("/tmp/x")
    assert cli.parser().parse_args(["up"]).kernel is False
    assert cli.parser().parse_args(["up", "--kernel"]).kernel is True


def test_two_clusters_and_what_they_cannot_be_combined_with(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = cli.parser().parse_args(["up", "--clusters", "2", "--locations", "4"])
    assert (args.clusters, cli.check_up(args)) == (2, None)
    assert cli.parser().parse_args(["up"]).clusters == 1
    with pytest.raises(SystemExit):
        cli.main(["up", "--clusters", "2", "--locations", "5"])
    assert capsys.readouterr().err == (
        "kilo-sandbox up: --clusters 2 with --locations 5: each cluster gets its own clouds "
        "and there are 8; at most --locations 4 (see kilo-sandbox up --help)\n"
    )


def test_the_second_cluster_gets_the_next_clouds_and_no_nated_site() -> None:
    locations = commands._locations(
        commands.UpOptions(directory=Path("/s"), locations=2, nodes=3, clusters=2)
    )
    assert [(loc.name, loc.cluster, loc.nat, loc.nodes) for loc in locations] == [
        ("aws", 0, False, 3),
        ("gcp", 0, False, 3),
        ("office", 0, True, 3),
        ("azure", 1, False, 3),
        ("hetzner", 1, False, 3),
    ]
    one = commands._locations(commands.UpOptions(directory=Path("/s")))
    assert {loc.cluster for loc in one} == {0}


def test_the_link_joins_the_two_kubeconfigs_with_both_service_ranges(tmp_path: Path) -> None:
    box = commands.Sandbox(tmp_path)
    bed = testbed.Testbed(
        [testbed.Location("aws", nodes=1), testbed.Location("gcp", nodes=1, cluster=1)],
        binaries=tmp_path,
    )
    argv = commands.link_argv(box, bed)
    assert argv[1:] == [
        "-m",
        "kilo.cli.kgctl",
        f"--kubeconfig={tmp_path / 'kubeconfig'}",
        "multicluster",
        "link",
        f"--remote-kubeconfig={tmp_path / 'kubeconfig.cluster2'}",
        "--name=sandbox",
        f"--service-cidr={testbed.CLUSTERS[0].service_cidr}",
        f"--remote-service-cidr={testbed.CLUSTERS[1].service_cidr}",
        "--watch",
    ]
    # down removes both kubeconfigs, and nothing it did not write.
    assert {"kubeconfig", "kubeconfig.cluster2"} <= set(state.FILES)


def test_linked_wants_a_peer_of_the_link_for_every_leader_of_the_other_cluster() -> None:
    two = {"nodes": [node("gcp-1", "location:gcp", leader=True)], "peers": []}
    linked_one = {**LOCATION_LISTING, "peers": [{"name": "sandbox-gcp-1"}]}
    assert not report.linked([LOCATION_LISTING, two], "sandbox")
    assert not report.linked([linked_one, two], "sandbox")  # only one way
    mirrored = [{"name": f"sandbox-{n}"} for n in ("aws-1", "gcp-1", "office-1")]
    assert report.linked([linked_one, {**two, "peers": mirrored}], "sandbox")
    assert not report.linked([linked_one, {**two, "peers": mirrored[:2]}], "sandbox")
    assert not report.linked([linked_one, {**two, "peers": mirrored}], "other")
    assert report.linked([LOCATION_LISTING], "sandbox")  # one cluster: nothing to link


def test_a_two_cluster_sandbox_state_round_trips() -> None:
    sample = sample_state()
    two = replace(
        sample,
        clusters=2,
        nodes=(*sample.nodes, state.Machine(name="gcp-1", netns="n", holder=13, cluster=1)),
    )
    assert state.loads(state.dumps(two)) == two
    assert state.loads(state.dumps(sample)).clusters == 1


def test_the_guest_command_is_not_offered_to_users(capsys: pytest.CaptureFixture[str]) -> None:
    """``guest`` runs inside the VM of ``up --kernel`` only."""
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "guest" not in capsys.readouterr().out
    args = cli.parser().parse_args(["guest", "--dir", "/s/sandbox", "--attached-plane", "/s/plane"])
    assert (args.attached_plane, args.locations) == (Path("/s/plane"), 2)


def test_a_kernel_sandbox_state_round_trips() -> None:
    kernel = replace(
        sample_state(), kernel="linux-image-6.1.0-57-amd64 6.1.192-3", share="/var/lib/x/run/share"
    )
    assert state.loads(state.dumps(kernel)) == kernel
    assert state.loads(state.dumps(sample_state())).kernel == ""


# --- what the installed package must contain ---------------------------------------------------


def test_package_data_covers_the_build_and_the_manifests() -> None:
    """Every file kilo-sandbox reads besides its modules is package data, so that it works
    from a wheel: build.sh, the pinned go.mod/go.sum and the CRD and RBAC manifests."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["kilo"]
    needed = [
        p.relative_to(ROOT / "src" / "kilo").as_posix()
        for p in sorted((SANDBOX / "go").rglob("*")) + sorted((SANDBOX / "manifests").iterdir())
        if p.is_file()
    ]
    assert "sandbox/go/apiserver/go.sum" in needed and "sandbox/manifests/crds.yaml" in needed
    for path in needed:
        assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns), path


def test_the_sandbox_applies_the_shipped_manifests() -> None:
    for name in ("crds.yaml", "rbac.yaml"):
        assert (testbed.MANIFESTS / name).read_bytes() == (ROOT / "manifests" / name).read_bytes()


# --- the build script ---------------------------------------------------------------------------


def test_an_empty_cache_needs_a_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILO_CONTROLPLANE_CACHE", str(tmp_path / "cache"))
    assert controlplane.cached_binaries() is None
    assert not (tmp_path / "cache").exists()  # checking builds nothing


def test_a_complete_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is the hash of the pinned go.mod/go.sum contents, as build.sh computes it."""
    go = SANDBOX / "go"
    pinned = b"".join(
        (go / part / name).read_bytes()
        for part in ("apiserver", "etcd")
        for name in ("go.mod", "go.sum")
    )
    key = hashlib.sha256(pinned).hexdigest()[:16]
    built = tmp_path / key
    (built / "bin").mkdir(parents=True)
    for binary in ("etcd", "kube-apiserver"):
        (built / "bin" / binary).write_text("#!/bin/sh\n")
        (built / "bin" / binary).chmod(0o755)
    (built / "complete").touch()
    monkeypatch.setenv("KILO_CONTROLPLANE_CACHE", str(tmp_path))
    assert controlplane.cached_binaries() == built
    lines: list[str] = []
    assert controlplane.build_binaries(on_progress=lines.append) == built
    assert lines == []  # nothing to build, nothing to show


def test_build_errors_carry_the_script_output() -> None:
    lines: list[str] = []
    with pytest.raises(controlplane.ControlPlaneError, match="unknown mode 'sideways'") as info:
        controlplane._build("sideways", lines.append)
    assert isinstance(info.value, KiloError)
    assert lines == [
        "build.sh: unknown mode 'sideways' (all, controlplane, helm, prometheus, check)"
    ]


class _StubPlane(controlplane.ControlPlane):
    """A plane whose start only reports (or raises) what it is told: no processes."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.started = False

    def start(self) -> controlplane.ControlPlane:
        if self.error is not None:
            raise self.error
        self.started = True
        return self


def test_a_plane_starting_in_a_thread_keeps_its_error() -> None:
    good, bad = _StubPlane(), _StubPlane(controlplane.ControlPlaneError("no etcd"))
    assert controlplane.Starting(good, name="ok").wait(10) is None
    assert good.started
    error = controlplane.Starting(bad, name="failing").wait(10)
    assert isinstance(error, controlplane.ControlPlaneError)
    assert str(error) == "no etcd"


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    # An outgoing connection is given a port of the ephemeral range; a server port taken
    # from it could be gone before the server binds it ("bind: address already in use").
    low, _ = controlplane._ephemeral_range()
    ports = [controlplane.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < low for port in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
