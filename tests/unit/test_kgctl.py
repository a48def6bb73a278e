"""kgctl end to end on cluster dumps: the worked examples through the command line."""

from __future__ import annotations

import copy
import datetime
import gc
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.cli import commands, kgctl
from kilo.mesh import cluster as cluster_mod
from kilo.mesh import leadership
from tests import golden
from tests import reference_iptables as ipt
from tests.examples import EXAMPLE_DUMP, PUBLIC_KEYS, reference_objects

FILE = ["--backend", "file", "--file", str(EXAMPLE_DUMP)]
REFERENCE_DOT = golden.text("reference.dot")  # kgctl graph prints it and a newline


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kgctl.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def write_dump(
    tmp_path: Path, objects: list[dict[str, Any]], name: str = "cluster.yaml"
) -> list[str]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))
    return ["--backend", "file", "--file", str(path)]


# kgctl showconf node alpha: the leader's config without a private key.
ALPHA_CONF = golden.text("alpha.conf")


def test_graph_reproduces_the_reference_example() -> None:
    assert run(*FILE, "graph") == (0, REFERENCE_DOT + "\n", "")


def test_graph_with_auto_granularity_equals_explicit_granularity() -> None:
    # Kilo's e2e suite asserts exactly this against live clusters.
    assert run(*FILE, "graph") == run(*FILE, "graph", "--mesh-granularity", "location")


def test_global_flags_are_accepted_after_the_command() -> None:
    assert run("graph", *FILE) == run(*FILE, "graph")


def test_showconf_node_prints_the_leader_config_without_private_key() -> None:
    assert run(*FILE, "showconf", "node", "alpha") == (0, ALPHA_CONF, "")


def test_showconf_node_non_leader_notes_it_and_exits_zero_like_kilo() -> None:
    assert run(*FILE, "showconf", "node", "beta") == (0, "", 'Node "beta" is not a leader node\n')


def test_showconf_peer_has_no_interface_and_the_peers_keepalive() -> None:
    assert run(*FILE, "showconf", "peer", "laptop") == (0, golden.text("laptop.conf"), "")


def test_showconf_node_as_peer_wireguard() -> None:
    code, out, _ = run(
        *FILE, "showconf", "node", "alpha", "--as-peer", "--allowed-ips", "10.43.0.1/16"
    )
    assert code == 0
    # The extra allowed IP is masked, as Kilo's flag parsing does.
    assert out == (
        "[Peer]\n"
        "AllowedIPs = 10.2.0.0/24, 10.128.0.2/32, 10.2.1.0/24, 10.128.0.3/32, 10.4.0.2/32, "
        "10.43.0.0/16\n"
        "Endpoint = 34.1.1.1:51820\n"
        "PersistentKeepalive = 0\n"
        f"PublicKey = {PUBLIC_KEYS['alpha']}\n"
    )


def test_showconf_node_as_peer_yaml_is_a_valid_peer() -> None:
    code, out, err = run(*FILE, "showconf", "node", "gamma", "--as-peer", "-o", "yaml")
    assert (code, err) == (0, "")
    assert out == (
        "apiVersion: kilo.squat.ai/v1alpha1\n"
        "kind: Peer\n"
        "metadata:\n"
        "  name: gamma\n"
        "spec:\n"
        "  allowedIPs:\n"
        "  - 10.2.2.0/24\n"
        "  - 172.31.5.5/32\n"
        "  - 10.4.0.1/32\n"
        "  endpoint:\n"
        "    dnsOrIP:\n"
        "      ip: 3.3.3.3\n"
        "    port: 51820\n"
        f"  publicKey: {PUBLIC_KEYS['gamma']}\n"
    )


def test_showconf_peer_as_peer_json_keeps_keepalive_in_seconds() -> None:
    code, out, _ = run(*FILE, "showconf", "peer", "laptop", "--as-peer", "-o", "json")
    assert code == 0
    assert not out.endswith("\n")
    assert json.loads(out) == {
        "kind": "Peer",
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "metadata": {"name": "laptop"},
        "spec": {
            "allowedIPs": ["10.5.0.1/32"],
            "persistentKeepalive": 25,
            "publicKey": str(PUBLIC_KEYS["laptop"]),
        },
    }


def test_plan_node_shows_the_reference_routes_and_rules() -> None:
    code, out, err = run(*FILE, "plan", "node", "beta", "--private-interface", "ens4")
    assert (code, err) == (0, "")
    routes_section = out.split("## Routes (proto static)\n")[1].split("\n\n")[0].splitlines()
    assert routes_section == golden.lines("beta.routes")
    rules_section = out.split("## IP rules\n")[1].split("\n\n")[0].splitlines()
    assert rules_section == golden.lines("beta.rules")
    assert "state: down" in out
    assert "IPAM range 10.2.1.0/24" in out


def test_plan_node_json_for_the_leader() -> None:
    code, out, _ = run(*FILE, "plan", "node", "alpha", "-o", "json", "--encapsulate", "never")
    assert code == 0
    plan = json.loads(out)
    assert plan["leader"] is True
    assert plan["interface"] == {"name": "kilo0", "up": True, "address": "10.4.0.2/16"}
    assert "PrivateKey" not in plan["wireguard"]["config"]
    assert [p["name"] for p in plan["wireguard"]["peers"]] == [
        "location:aws",
        "node:delta",
        "laptop",
    ]
    assert plan["tunnel"] is None  # --encapsulate=never: no tunnel and no IPIP rules
    assert all("KILO-IPIP" not in e["text"] for e in plan["iptables"]["append"])
    assert plan["cni"] == {"path": "/etc/cni/net.d/10-kilo.conflist", "subnet": "10.2.0.0/24"}


def test_plan_names_a_node_that_exists_but_is_not_ready(tmp_path: Path) -> None:
    objects = reference_objects()
    del objects[1]["metadata"]["annotations"]["kilo.squat.ai/key"]
    code, out, err = run(*write_dump(tmp_path, objects), "plan", "node", "beta")
    assert (code, out) == (1, "")
    assert err == (
        'kgctl: did not find any ready node named "beta" in the cluster '
        "(it is not ready: it needs an endpoint, a key and a pod CIDR)\n"
    )


def test_bad_annotation_warns_and_keeps_mesh(tmp_path: Path) -> None:
    objects = reference_objects()
    gamma = objects[2]["metadata"]["annotations"]
    # Kilo does not trim spaces: the second item is dropped, and here also reported.
    gamma["kilo.squat.ai/allowed-location-ips"] = "172.31.100.0/24, 172.31.101.0/24"
    objects[1]["metadata"]["annotations"]["kilo.squat.ai/persistent-keepalive"] = "soon"
    code, out, err = run(*write_dump(tmp_path, objects), "graph")
    assert code == 0
    assert out == REFERENCE_DOT + "\n"
    assert err.splitlines() == [
        "kgctl: warning: node 'beta': kilo.squat.ai/persistent-keepalive='soon' "
        "is not an integer; using 0",
        "kgctl: warning: node 'gamma': kilo.squat.ai/allowed-location-ips=' 172.31.101.0/24' "
        "is not a CIDR (Kilo does not trim spaces); this item is dropped",
    ]


def test_invalid_peer_is_reported_and_the_others_kept(tmp_path: Path) -> None:
    objects = reference_objects()
    bad = copy.deepcopy(objects[-1])
    bad["metadata"]["name"] = "broken"
    bad["spec"]["publicKey"] = "not-a-key"
    code, out, err = run(*write_dump(tmp_path, [*objects, bad]), "graph")
    assert code == 0
    assert out == REFERENCE_DOT + "\n"
    assert "peer 'broken': spec.publicKey='not-a-key' is invalid" in err


def test_node_with_garbage_everywhere_is_skipped_with_warnings(tmp_path: Path) -> None:
    garbage = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "zeta",
            "annotations": {
                "kilo.squat.ai/endpoint": "nowhere",
                "kilo.squat.ai/key": "AAAA",
                "kilo.squat.ai/internal-ip": "10.0.0.1",
                "kilo.squat.ai/last-seen": ["x"],
            },
        },
        "spec": {"podCIDR": "10.2.99.0/33"},
    }
    code, out, err = run(*write_dump(tmp_path, [*reference_objects(), garbage]), "graph")
    assert code == 0
    assert out == REFERENCE_DOT + "\n"
    assert all(line.startswith("kgctl: warning: node 'zeta': ") for line in err.splitlines())
    assert len(err.splitlines()) == 5


def test_respect_last_seen_judges_liveness_by_the_clock() -> None:
    code, out, err = run(*FILE, "--respect-last-seen", "graph")
    assert (code, out) == (1, "")
    assert err == "kgctl: did not find any valid Kilo nodes in the cluster\n"


def test_reads_kubectl_json_and_multi_document_yaml(tmp_path: Path) -> None:
    as_json = tmp_path / "cluster.json"
    as_json.write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": reference_objects()})
    )
    assert run("--backend", "file", "--file", str(as_json), "graph") == (
        0,
        REFERENCE_DOT + "\n",
        "",
    )
    multi = tmp_path / "multi.yaml"
    multi.write_text(yaml.safe_dump_all(reference_objects()))
    assert run("--backend", "file", "--file", str(multi), "graph") == (0, REFERENCE_DOT + "\n", "")


def test_subnet_override(tmp_path: Path) -> None:
    code, out, _ = run(*FILE, "--subnet", "10.9.0.0/24", "graph")
    assert code == 0
    # The same graph, with every WireGuard IP allocated from the other subnet.
    expected = REFERENCE_DOT.replace('label="10.4.0.0/16"', 'label="10.9.0.0/24"')
    expected = expected.replace("\\n10.4.0.", "\\n10.9.0.")
    assert out == expected + "\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--mesh-granularity", "star", "graph"],
            "mesh granularity star unknown; possible values are: location, full, cross, auto",
        ),
        (["--port", "0", "graph"], "invalid port: port must be in range [1:65535], but got 0"),
        (
            ["showconf", "node", "alpha", "-o", "toml"],
            "output format toml unknown; possible values are: wireguard, yaml, json",
        ),
        (
            ["showconf", "node", "alpha", "--allowed-ips", "10.0.0.0/40"],
            'allowed-ips must contain only valid CIDRs; got "10.0.0.0/40"',
        ),
        (["--subnet", "ten", "graph"], 'failed to parse "ten" as CIDR'),
        (["graph", "--bogus"], "unrecognized arguments: --bogus"),
        (["showconf", "node"], "the following arguments are required: NAME"),
        (["showconf", "node", "Alpha"], 'invalid node name "Alpha": a lowercase RFC 1123'),
        (["showconf", "peer", "a_b"], 'invalid peer name "a_b": a lowercase RFC 1123'),
        (["plan", "node", "x" * 254], 'invalid node name "' + "x" * 254 + '": must be no more'),
        (["plan", "node", "beta", "--interface="], 'invalid --interface "": it is empty'),
        (["plan", "node", "beta", "--interface=a:b"], 'invalid --interface "a:b": it contains'),
        (
            ["plan", "node", "beta", "--private-interface=" + "e" * 16],
            f'invalid --private-interface "{"e" * 16}": it is 16 bytes long',
        ),
        (
            ["plan", "node", "beta", "--cni-path="],
            'invalid --cni-path "": give the CNI configuration file, or --cni=false',
        ),
        (
            ["--topology-label", "a b", "graph"],
            'invalid --topology-label "a b": its name "a b" must consist of',
        ),
        (["graph", "--topology-label=x/"], 'invalid --topology-label "x/": its name is empty'),
        (["graph", "--link=east"], "--link names the link between two clusters: give"),
        (
            ["graph", f"--remote-kubeconfig={__file__}"],
            "--remote-kubeconfig reads a live cluster: --backend must be kubernetes",
        ),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], message: str) -> None:
    code, out, err = run(*FILE, *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert message in err


def test_graph_checks_the_link_name_before_reading_either_cluster(tmp_path: Path) -> None:
    config = tmp_path / "remote.kubeconfig"
    config.write_text("")  # never read: the name is wrong
    argv = ["--backend=kubernetes", f"--kubeconfig={config}", "graph"]
    code, out, err = run(*argv, f"--remote-kubeconfig={config}", "--link=East")
    assert (code, out) == (2, "")
    assert err.startswith("kgctl: --link: link name 'East' is not lower-case letters")


def test_usage_errors_file_backend_without_file() -> None:
    code, _, err = run("--backend", "file", "graph")
    assert code == 2
    assert err.startswith("kgctl: --backend file needs --file PATH")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["showconf", "node", "omega"],
            'kgctl: did not find any node named "omega" in the cluster\n',
        ),
        (
            ["showconf", "peer", "omega"],
            'kgctl: did not find any peer named "omega" in the cluster\n',
        ),
    ],
)
def test_unknown_names_fail_with_exit_1(argv: list[str], message: str) -> None:
    assert run(*FILE, *argv) == (1, "", message)


def test_unreadable_and_invalid_dumps_fail_with_exit_1(tmp_path: Path) -> None:
    code, _, err = run("--backend", "file", "--file", str(tmp_path / "missing.yaml"), "graph")
    assert code == 1
    assert "missing.yaml" in err and "No such file" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("items: [\n")
    code, _, err = run("--backend", "file", "--file", str(broken), "graph")
    assert code == 1
    assert "is not valid YAML or JSON at line 2" in err


def test_kubernetes_backend_without_kubeconfig_fails_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.kubeconfig"
    code, out, err = run("--kubeconfig", str(missing), "graph")
    assert (code, out) == (1, "")
    assert err == f"kgctl: cannot read kubeconfig {missing}: No such file or directory\n"


def test_console_script_runs_from_a_shell() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kilo.cli.kgctl", *FILE, "graph"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, REFERENCE_DOT + "\n")


def test_a_dump_on_standard_input() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kilo.cli.kgctl", "--backend", "file", "--file", "-", "graph"],
        input=EXAMPLE_DUMP.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert (result.returncode, result.stdout.decode(), result.stderr) == (
        0,
        REFERENCE_DOT + "\n",
        b"",
    )


# --- the kilo-k8s-cli.md examples through the command line -----------------------------------

B_KEY = "IgDTEvasUvxisSAmfBKh8ngFmc2leZBvkRwYBhkybUg="
P_KEY = "GY5aT1N9dTR/nJnT1N2f4ClZWVj0jOAld0r8ysWLyjg="


def node_dump(name: str, ip: str, pod_cidr: str, key: str, **extra: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                "kilo.squat.ai/endpoint": f"{ip}:51820",
                "kilo.squat.ai/internal-ip": f"{ip}/24",
                "kilo.squat.ai/key": key,
                "kilo.squat.ai/last-seen": "1764000000",
                **extra,
            },
        },
        "spec": {"podCIDR": pod_cidr},
    }


def full_mesh_dump(tmp_path: Path) -> list[str]:
    return write_dump(
        tmp_path,
        [
            node_dump(
                "a",
                "172.18.0.2",
                "10.42.0.0/24",
                str(PUBLIC_KEYS["alpha"]),
                **{"kilo.squat.ai/granularity": "full"},
            ),
            node_dump(
                "b", "172.18.0.3", "10.42.1.0/24", B_KEY, **{"kilo.squat.ai/granularity": "full"}
            ),
            {
                "apiVersion": "kilo.squat.ai/v1alpha1",
                "kind": "Peer",
                "metadata": {"name": "p"},
                "spec": {"allowedIPs": ["10.5.0.1/32"], "publicKey": P_KEY},
            },
        ],
    )


def test_graph_of_the_full_mesh_example(tmp_path: Path) -> None:
    dump = full_mesh_dump(tmp_path)
    assert run(*dump, "graph") == (0, golden.text("full-mesh.dot") + "\n", "")
    assert run(*dump, "graph", "--mesh-granularity", "full") == run(*dump, "graph")


def test_showconf_node_of_the_full_mesh_example(tmp_path: Path) -> None:
    # full-mesh-a.conf is kilo-k8s-cli.md §4.5, with B_KEY and P_KEY.
    assert run(*full_mesh_dump(tmp_path), "showconf", "node", "a") == (
        0,
        golden.text("full-mesh-a.conf"),
        "",
    )


def test_showconf_as_peer_yaml_of_the_kind_cluster_example(tmp_path: Path) -> None:
    names = [
        "kind-cluster-kilo-control-plane",
        "kind-cluster-kilo-worker",
        "kind-cluster-kilo-worker2",
    ]
    objects = [
        node_dump(name, f"172.18.0.{i + 2}", f"10.42.{i}.0/24", str(PUBLIC_KEYS[key]))
        for i, (name, key) in enumerate(zip(names, ["alpha", "beta", "gamma"], strict=True))
    ]
    code, out, err = run(
        *write_dump(tmp_path, objects),
        "--mesh-granularity",
        "location",
        "showconf",
        "node",
        names[0],
        "--as-peer",
        "-o",
        "yaml",
        "--allowed-ips",
        "10.43.0.0/16",
    )
    assert (code, err) == (0, "")
    assert out == (
        "apiVersion: kilo.squat.ai/v1alpha1\n"
        "kind: Peer\n"
        "metadata:\n"
        "  name: kind-cluster-kilo-control-plane\n"
        "spec:\n"
        "  allowedIPs:\n"
        "  - 10.42.0.0/24\n"
        "  - 172.18.0.2/32\n"
        "  - 10.42.1.0/24\n"
        "  - 172.18.0.3/32\n"
        "  - 10.42.2.0/24\n"
        "  - 172.18.0.4/32\n"
        "  - 10.4.0.1/32\n"
        "  - 10.43.0.0/16\n"
        "  endpoint:\n"
        "    dnsOrIP:\n"
        "      ip: 172.18.0.2\n"
        "    port: 51820\n"
        f"  publicKey: {PUBLIC_KEYS['alpha']}\n"
    )


def test_plan_node_alpha_reproduces_the_iptables_example() -> None:
    code, out, _ = run(
        *FILE, "plan", "node", "alpha", "--service-cidr", "10.96.0.0/12", "-o", "json"
    )
    assert code == 0
    plan = json.loads(out)
    names = {"kilo0": "kilo0", "<private>": "ens4", "tunl0": "tunl0"}

    def route_text(r: dict[str, Any]) -> str:
        parts = [r["dst"]]
        if "gw" in r:
            parts += ["via", r["gw"]]
        parts += ["dev", names[r["dev"]], "proto", "static"]
        if r["onlink"]:
            parts.append("onlink")
        if "src" in r:
            parts += ["src", r["src"]]
        if "table" in r:
            parts += ["table", str(r["table"])]
        return " ".join(parts)

    assert [route_text(r) for r in plan["routes"]] == golden.lines("alpha.routes")
    assert len(plan["rules"]) == len(golden.lines("alpha.rules"))
    append = [e["text"] for e in plan["iptables"]["append"]]
    prepend = [e["text"] for e in plan["iptables"]["prepend"]]
    assert append == ipt.IPIP_APPEND + ipt.NAT_APPEND
    assert prepend == [
        ipt.accept_ipip("10.128.0.2/32"),
        ipt.accept_ipip("10.128.0.3/32"),
        ipt.jump_nat("10.2.0.0/24"),
        *ipt.SEGMENT_RETURNS,
        *ipt.PEER_RULES,
    ]


def test_a_command_group_without_subcommand_prints_its_help() -> None:
    code, out, err = run("showconf")
    assert (code, err) == (0, "")
    assert out.startswith("usage: kgctl showconf [-h]")
    assert "node|peer ..." in out


# --- robustness and command-line details ------------------------------------------------------


def test_deeply_nested_dumps_fail_cleanly(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    # 100000 levels crash libyaml's composer (a segmentation fault), 600 PyYAML's (recursion).
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, out, err = run("--backend", "file", "--file", str(deep), "graph")
    assert (code, out) == (1, "")
    assert err == (
        f"kgctl: cluster dump {deep} is nested more than 100 levels deep at line 1, "
        "column 101; refusing it\n"
    )


def test_plan_of_a_node_whose_pod_cidr_is_the_last_address(tmp_path: Path) -> None:
    objects = [node_dump("a", "203.0.113.1", "255.255.255.255/32", str(PUBLIC_KEYS["alpha"]))]
    code, out, err = run(
        *write_dump(tmp_path, objects), "--mesh-granularity", "full", "plan", "node", "a"
    )
    assert (code, err) == (0, "")
    assert "## Tunnel" not in out


def test_duplicate_names_keep_the_last_object_and_warn(tmp_path: Path) -> None:
    objects = reference_objects()
    stale = copy.deepcopy(objects[0])
    stale["metadata"]["annotations"]["kilo.squat.ai/endpoint"] = "198.51.100.77:51820"
    code, out, err = run(*write_dump(tmp_path, [stale, *objects]), "graph")
    assert (code, out) == (0, REFERENCE_DOT + "\n")
    assert err == (
        "kgctl: warning: node 'alpha': metadata.name='alpha' appears 2 times in the input; "
        "only the last one is used\n"
    )


def test_showconf_options_may_come_before_the_kind() -> None:
    expected = run(*FILE, "showconf", "node", "alpha", "--as-peer", "-o", "yaml")
    assert expected[0] == 0
    assert run(*FILE, "showconf", "--as-peer", "-o", "yaml", "node", "alpha") == expected
    assert run("showconf", *FILE, "-o", "yaml", "node", "alpha", "--as-peer") == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--p", "1", "graph"], "invalid choice: '1'"),
        (["--port", "_5", "graph"], 'invalid argument "_5" for "--port" flag: strconv.ParseInt'),
        (["--port", "5__0", "graph"], 'strconv.ParseInt: parsing "5__0": invalid syntax'),
        (["--port", "0x", "graph"], 'strconv.ParseInt: parsing "0x": invalid syntax'),
        (["--port", "09", "graph"], 'strconv.ParseInt: parsing "09": invalid syntax'),
        (["--port", "0", "graph"], "invalid port: port must be in range [1:65535], but got 0"),
        (["--port=-0x10", "graph"], "port must be in range [1:65535], but got -16"),
        (["--port", "1" * 20, "graph"], "value out of range"),
    ],
)
def test_abbreviations_and_numbers_go_does_not_read_are_refused(
    argv: list[str], message: str
) -> None:
    code, out, err = run(*FILE, *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    ("given", "port"),
    [("0xca6c", 51820), ("0XCA6C", 51820), ("+51820", 51820), ("51_820", 51820), ("010", 8)],
)
def test_port_takes_gos_integer_syntax_as_kilos_int_flag(given: str, port: int) -> None:
    # Kilo's --port is a pflag int: strconv.ParseInt(s, 0, 64), where 010 is octal.
    code, out, err = run(*FILE, f"--port={given}", "showconf", "node", "alpha")
    assert (code, err) == (0, "")
    assert f"ListenPort = {port}\n" in out


def test_bool_flags_take_gos_values_after_an_equals_sign() -> None:
    expected = run(*FILE, "showconf", "node", "alpha", "--as-peer", "-o", "yaml")
    assert expected[0] == 0
    for value in ("true", "1", "t", "T", "TRUE", "True"):
        assert run(*FILE, "showconf", "node", "alpha", f"--as-peer={value}", "-o=yaml") == expected
    # As pflag: a bare --as-peer never takes the next word as its value.
    assert run(*FILE, "showconf", "node", "--as-peer", "alpha", "-o", "yaml") == expected
    assert run(*FILE, "showconf", "--as-peer", "node", "alpha", "-o", "yaml") == expected
    plain = run(*FILE, "showconf", "node", "alpha")
    assert plain == (0, ALPHA_CONF, "")
    for value in ("false", "0", "f", "F", "FALSE", "False"):
        assert run(*FILE, "showconf", "node", "alpha", f"--as-peer={value}") == plain
    code, out, err = run(*FILE, "showconf", "node", "alpha", "--as-peer=yes")
    assert (code, out) == (2, "")
    assert err == (
        'kgctl: argument --as-peer: invalid argument "yes" for "--as-peer" flag: '
        'strconv.ParseBool: parsing "yes": invalid syntax\n'
    )
    assert run(*FILE, "--respect-last-seen=false", "graph") == run(*FILE, "graph")


def test_help_command_prints_the_help_of_the_command_it_names() -> None:
    assert run("help") == (0, kgctl.build_parser().format_help(), "")
    assert run("help")[1].startswith("usage: kgctl")
    code, out, err = run("help", "showconf", "node")
    assert (code, err) == (0, "")
    assert out.startswith("usage: kgctl showconf node")
    assert "--as-peer" in out
    # As cobra's: a later word that is no command is ignored.
    assert run("help", "showconf", "x") == run("help", "showconf")
    assert "~/.config/fish/completions/kgctl.fish" in run("help", "completion", "fish")[1]
    code, out, err = run("help", "bogus")
    assert (code, out) == (2, "")
    assert err.startswith('kgctl: unknown help topic "bogus"; the commands are: graph, showconf')


def test_completion_prints_the_script_of_each_shell() -> None:
    for shell in ("bash", "zsh", "fish", "powershell"):
        code, out, err = run("completion", shell)
        assert (code, err) == (0, "")
        assert "kgctl __complete" in out.replace("__completeNoDesc", "__complete")
        assert out.endswith("\n")
    code, out, _ = run("completion", "zsh", "--no-descriptions")
    assert "__completeNoDesc" in out
    assert "__completeNoDesc" not in run("completion", "zsh")[1]
    # A command group without its subcommand prints its help, as cobra's.
    code, out, _ = run("completion")
    assert code == 0
    assert out.startswith("usage: kgctl completion")
    code, out, err = run("completion", "tcsh")
    assert (code, out) == (2, "")
    assert "invalid choice: 'tcsh'" in err


def test_respect_last_seen_keeps_fresh_nodes_ready(tmp_path: Path) -> None:
    objects = reference_objects()
    now = str(int(__import__("time").time()))
    for obj in objects:
        if obj["kind"] == "Node":
            obj["metadata"]["annotations"]["kilo.squat.ai/last-seen"] = now
    dump = write_dump(tmp_path, objects)
    assert run(*dump, "--respect-last-seen", "graph") == (0, REFERENCE_DOT + "\n", "")
    # Two of the four nodes stop checking in: they drop out of the mesh.
    for obj in objects[2:4]:
        obj["metadata"]["annotations"]["kilo.squat.ai/last-seen"] = "1764000000"
    code, out, _ = run(*write_dump(tmp_path, objects, "stale.yaml"), "--respect-last-seen", "graph")
    assert code == 0
    assert '"gamma"' not in out and '"delta"' not in out and '"alpha"' in out


def test_plan_rules_of_alpha_and_gamma_through_the_cli() -> None:
    code, out, _ = run(*FILE, "plan", "node", "alpha")
    assert code == 0
    rules = out.split("## IP rules\n")[1].split("\n\n")[0].splitlines()
    assert rules == golden.lines("alpha.rules")
    code, out, _ = run(*FILE, "plan", "node", "gamma")
    assert code == 0
    assert (
        'prepend IPv4 nat -A POSTROUTING -d 172.31.100.0/24 -m comment --comment "Kilo: jump to '
        'NAT chain" -j KILO-NAT\n'
    ) in out


def test_plan_crosssubnet_keeps_beta_on_the_private_interface() -> None:
    code, out, _ = run(
        *FILE, "plan", "node", "beta", "--encapsulate", "crosssubnet", "--private-interface", "ens4"
    )
    assert code == 0
    routes = out.split("## Routes (proto static)\n")[1].split("\n\n")[0].splitlines()
    assert routes == golden.lines("beta-unencapsulated.routes")
    assert out.split("## IP rules\n")[1].startswith("(none)")


def test_showconf_peer_uses_the_first_ready_node_by_name_for_nat_endpoints(tmp_path: Path) -> None:
    # A second peer "phone" keeps alive; alpha and gamma saw it at different addresses.
    objects = reference_objects()
    phone = copy.deepcopy(objects[-1])
    phone["metadata"]["name"] = "phone"
    phone["spec"] = {
        "allowedIPs": ["10.5.0.2/32"],
        "persistentKeepalive": 10,
        "publicKey": str(PUBLIC_KEYS["beta"]),
    }
    for index, address in ((0, "198.51.100.10"), (2, "198.51.100.20")):
        objects[index]["metadata"]["annotations"]["kilo.squat.ai/discovered-endpoints"] = (
            json.dumps({str(PUBLIC_KEYS["beta"]): {"IP": address, "Port": 4000, "Zone": ""}})
        )
    dump = write_dump(tmp_path, [*objects, phone])
    # Each leader's own config prefers its own observation...
    assert "Endpoint = 198.51.100.20:4000\n" in run(*dump, "showconf", "node", "gamma")[1]
    assert "Endpoint = 198.51.100.10:4000\n" in run(*dump, "showconf", "node", "alpha")[1]
    # ...and a peer's config is seen from the first ready node by name (alpha), every time.
    code, out, _ = run(*dump, "showconf", "peer", "laptop")
    assert code == 0
    assert out.endswith(
        "[Peer]\nAllowedIPs = 10.5.0.2/32\nEndpoint = 198.51.100.10:4000\n"
        f"PersistentKeepalive = 25\nPublicKey = {PUBLIC_KEYS['beta']}\n"
    )


def test_list_shows_nodes_leaders_and_peers() -> None:
    code, out, err = run(*FILE, "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "NODE",
        "LOCATION",
        "LEADER",
        "ENDPOINT",
        "WIREGUARD-IP",
        "READY",
        "LAST-SEEN",
    ]
    assert lines[1].split()[:6] == ["alpha", "gcp", "yes", "34.1.1.1:51820", "10.4.0.2", "yes"]
    assert lines[2].split()[:6] == ["beta", "gcp", "-", "10.128.0.3:51820", "-", "yes"]
    assert lines[6].split() == ["PEER", "ALLOWED-IPS", "ENDPOINT", "KEEPALIVE"]
    assert lines[7].split() == ["laptop", "10.5.0.1/32", "-", "25"]


def test_list_json_and_wide() -> None:
    code, out, _ = run(*FILE, "list", "-o", "json")
    assert code == 0
    data = json.loads(out)
    gamma = next(n for n in data["nodes"] if n["name"] == "gamma")
    assert (
        gamma["segment"] == "location:aws"
        and gamma["leader"]
        and gamma["wireguardIP"] == "10.4.0.1"
    )
    assert data["peers"][0]["allowedIPs"] == ["10.5.0.1/32"]
    code, out, _ = run(*FILE, "list", "-o", "wide")
    assert "SEGMENT" in out.splitlines()[0] and "node:delta" in out


def test_a_server_that_drips_bytes_cannot_hold_kgctl_past_its_timeout(tmp_path: Path) -> None:
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
                if stop.wait(0.3):
                    return
                conn.sendall(bytes([byte]))

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    config = tmp_path / "drip.kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    try:
        code, out, err = run("--kubeconfig", str(config), "--timeout", "1", "graph")
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert (code, out) == (1, "")
    assert err == f"kgctl: http://127.0.0.1:{port} did not answer within --timeout 1 s\n"


def test_kubeconfig_variable_naming_no_existing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "typo"))
    code, _, err = run("graph")
    assert code == 1
    assert err == f"kgctl: none of the files in KUBECONFIG exists: {tmp_path / 'typo'}\n"


def test_text_that_cannot_be_encoded_is_escaped_not_a_crash() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    escaping = kgctl._escaping(stream)
    escaping.write("location \ud800bad\n")
    escaping.flush()
    assert raw.getvalue() == b"location \\ud800bad\n"


def test_list_escapes_control_characters_and_cuts_huge_cells(tmp_path: Path) -> None:
    objects = copy.deepcopy(reference_objects())
    annotations = objects[0]["metadata"]["annotations"]  # alpha
    annotations["kilo.squat.ai/location"] = "\u202eevil\x1b[31mred\x00"
    objects[1]["metadata"]["annotations"]["kilo.squat.ai/location"] = "z" * 100_000  # beta
    code, out, _ = run(*write_dump(tmp_path, objects), "list")
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out and "\x00" not in out
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["alpha", "\\u202eevil\\x1b[31mred\\x00"]
    assert lines[2].split()[:2] == ["beta", "z" * 252 + "…"]


def test_plan_takes_an_empty_cni_path_without_cni_and_any_valid_interface_names() -> None:
    code, out, err = run(
        *FILE,
        "plan",
        "node",
        "beta",
        "--cni=false",
        "--cni-path=",
        "--interface=wg-kilo.0",
        "--private-interface=ens4",
    )
    assert (code, err) == (0, "")
    assert "## WireGuard interface wg-kilo.0\n" in out
    assert "not managed (--cni=false)" in out


KGCTL_FLAGS = [
    "--port",
    "--topology-label",
    "--mesh-granularity",
    "--subnet",
    "--timeout",
    "--output",
    "--allowed-ips",
    "--interface",
    "--private-interface",
    "--cni-path",
    "--encapsulate",
    "--service-cidr",
]


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([["graph"], ["showconf", "node"], ["plan", "node"], ["list"]]),
    st.text(max_size=10),
    st.lists(
        st.tuples(st.sampled_from(KGCTL_FLAGS), st.text(max_size=10)).map(
            lambda pair: f"{pair[0]}={pair[1]}"
        ),
        max_size=3,
    ),
)
def test_a_command_line_mistake_is_always_one_line(
    command: list[str], name: str, flags: list[str]
) -> None:
    argv = [*FILE, *command, *([name] if command[-1] == "node" else []), *flags]
    code, _, err = run(*argv)
    assert code in (0, 1, 2)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("kgctl: ")


def test_offline_commands_do_not_import_the_kubernetes_client() -> None:
    # A quarter of a second of every offline command's time went into importing lightkube
    # and its HTTP client; only the commands that talk to a cluster need them. Then 0.1 s
    # more into asyncio (connect, multicluster link --watch) and cryptography (deriving a
    # public key), which no offline view uses.
    probe = (
        "import sys, kilo.cli.kgctl\n"
        "heavy = ('lightkube', 'httpx', 'kilo.adapters.kubernetes', 'kilo.adapters.kubeconfig',\n"
        "         'asyncio', 'cryptography')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "command",
    [["list"], ["graph"], ["showconf", "node", "alpha"], ["plan", "node", "alpha"]],
    ids=lambda argv: argv[0],
)
def test_a_view_runs_without_the_cycle_collector_and_restores_it(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # A view of a 5000-node dump spent a tenth to a fifth of its CPU time in the cyclic
    # collector walking what it had built (and would keep anyway); a test process, or a
    # command that keeps running, must get the collector back.
    seen: list[bool] = []
    translate = cluster_mod.translate_cluster

    def watching(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return translate(*args, **kwargs)

    monkeypatch.setattr(cluster_mod, "translate_cluster", watching)
    assert gc.isenabled()
    code, _, err = run(*FILE, *command)
    assert code == 0, err
    assert seen == [False]
    assert gc.isenabled()


def test_kgctl_s_own_process_exits_with_its_heap_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a command on a 5000-node dump leaves in the core's memos took the interpreter's
    # final collections 0.4 s to walk; kgctl's own process (main() reading sys.argv)
    # freezes it, a caller running a command in-process (main(argv)) does not.
    assert gc.get_freeze_count() == 0
    code, _, err = run(*FILE, "graph")
    assert code == 0, err
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(sys, "argv", ["kgctl", *FILE, "graph"])
    out, err_stream = io.StringIO(), io.StringIO()
    try:
        assert kgctl.main(out=out, err=err_stream) == 0, err_stream.getvalue()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert out.getvalue() == REFERENCE_DOT + "\n"


# --- kgctl with kg --leader-election=lease ------------------------------------------------------


def _live(
    monkeypatch: pytest.MonkeyPatch, objects: list[dict[str, Any]], leases: list[Any] | None
) -> None:
    nodes = [o for o in objects if o["kind"] == "Node"]
    peers = [o for o in objects if o["kind"] == "Peer"]
    monkeypatch.setattr(commands, "_read_live", lambda *a, **k: (nodes, peers, leases))


def _lease_objects(annotate: dict[str, str]) -> list[dict[str, Any]]:
    now = str(int(time.time()))
    objects = copy.deepcopy(reference_objects())
    for obj in objects:
        if obj["kind"] == "Node":
            obj["metadata"]["annotations"]["kilo.squat.ai/last-seen"] = now
            obj["metadata"]["annotations"].update(annotate)
    return objects


def test_a_live_cluster_with_lease_election_shows_the_lease_holders_as_leaders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    renewed = datetime.datetime.now(datetime.UTC).isoformat()
    lease: dict[str, Any] = {
        "metadata": {"name": leadership.lease_name("gcp")},
        "spec": {"holderIdentity": "beta", "leaseDurationSeconds": 6, "renewTime": renewed},
    }
    taking_part = {leadership.ANNOTATION: leadership.MODE}
    _live(monkeypatch, _lease_objects(taking_part), [lease])
    code, by_lease, err = run("graph")
    assert (code, err) == (0, "")
    # What Kilo's rule gives when it prefers beta (the leader annotation).
    forced = _lease_objects(taking_part)
    for obj in forced:
        if obj["metadata"]["name"] == "beta":
            obj["metadata"]["annotations"]["kilo.squat.ai/leader"] = "true"
    _live(monkeypatch, forced, None)
    assert run("graph") == (0, by_lease, "")
    # Without the Lease (or with it lapsed), Kilo's rule: alpha.
    _live(monkeypatch, _lease_objects(taking_part), [])
    by_rule = run("graph")[1]
    assert by_rule != by_lease
    stale = dict(lease, spec=dict(lease["spec"], renewTime="2020-01-01T00:00:00+00:00"))
    _live(monkeypatch, _lease_objects(taking_part), [stale])
    assert run("graph")[1] == by_rule
    # A node that does not take part (Go Kilo): Kilo's rule for every location, as kg.
    _live(monkeypatch, _lease_objects({}), [lease])
    assert run("graph")[1] == by_rule
