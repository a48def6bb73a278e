"""The manifests beside the agent's: the heterogeneous WireGuard variant with nkml, kube-router
for NetworkPolicies, and the monitoring set (PodMonitor, kube-prometheus Role, Grafana
dashboard), read from the committed files as Kilo's users apply them.

The API server accepts each of them and the accounts get what their roles say in
tests/integration/test_manifests.py; the dashboard's queries run against real agents in
tests/e2e/test_dashboard.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from kilo.agent import command_line
from kilo.cli import kgctl
from tests.manifests import (
    CHART,
    DASHBOARD,
    DASHBOARD_MANIFEST,
    MANIFESTS,
    Container,
    Obj,
    containers,
    find,
    load_file,
    one,
    pod_specs,
    rendered_files,
)

HETEROGENEOUS = load_file(MANIFESTS / "kilo-k3s-userspace-heterogeneous.yaml")
KUBE_ROUTER = load_file(MANIFESTS / "kube-router.yaml")
WG_EXPORTER = load_file(MANIFESTS / "wg-exporter.yaml")
ROLE = load_file(MANIFESTS / "wg-exporter-role-kube-prometheus.yaml")
NKML_LABEL = "nkml.squat.ai/wireguard"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def pod(daemonset: Obj) -> Obj:
    spec: Obj = daemonset["spec"]["template"]["spec"]
    return spec


def container(objects: list[Obj], name: str) -> Container:
    (found,) = [c for c in containers(objects) if c.name == name]
    return found


def rules(role: Obj) -> set[tuple[str, str, str, str]]:
    return {
        (group, resource, verb, name)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
        for name in rule.get("resourceNames", ["*"])
    }


def without(obj: Obj, *paths: tuple[str, ...]) -> Obj:
    copied = copy.deepcopy(obj)
    for path in paths:
        target = copied
        for key in path[:-1]:
            target = target[key]
        target.pop(path[-1], None)
    return copied


# --- kilo-k3s-userspace-heterogeneous.yaml ----------------------------------------------------


def test_heterogeneous_runs_kernel_wireguard_where_nkml_found_the_module_else_the_sidecar() -> None:
    kernel = one(HETEROGENEOUS, "DaemonSet", "kilo")
    userspace = one(HETEROGENEOUS, "DaemonSet", "kilo-userspace")
    assert pod(kernel)["nodeSelector"] == {NKML_LABEL: "true"}
    assert pod(userspace)["nodeSelector"] == {NKML_LABEL: "false"}
    # Disjoint selectors: neither DaemonSet adopts the other's pods.
    labels = [d["spec"]["selector"]["matchLabels"] for d in (kernel, userspace)]
    assert labels[0]["app.kubernetes.io/name"] != labels[1]["app.kubernetes.io/name"]
    for daemonset in (kernel, userspace):
        assert (
            daemonset["spec"]["template"]["metadata"]["labels"]
            == (daemonset["spec"]["selector"]["matchLabels"])
        )
    # Apart from the node selector, each pod is exactly the pod of a variant tested on its own.
    for daemonset, reference in ((kernel, "kilo-k3s.yaml"), (userspace, "kilo-k3s-userspace.yaml")):
        (alone,) = find(load_file(MANIFESTS / reference), "DaemonSet")
        ignore = (("nodeSelector",),)
        assert without(pod(daemonset), *ignore) == without(pod(alone), *ignore)
    # The ConfigMaps both use are rendered once.
    assert [c["metadata"]["name"] for c in find(HETEROGENEOUS, "ConfigMap")] == ["kilo"]


def test_nkml_sets_the_label_the_agents_select_and_keeps_it_when_it_stops() -> None:
    nkml = one(HETEROGENEOUS, "DaemonSet", "nkml")
    c = container([nkml], "nkml")
    assert c.spec["image"] == VALUES["nkml"]["image"] == "ghcr.io/leonnicolas/nkml:0.1.2"
    args = c.spec["args"]
    # nkml labels <prefix>/<module>; the prefix is its default, nkml.squat.ai.
    assert "--label-mod=wireguard" in args
    assert not any(a.startswith("--label-prefix") for a in args)
    assert NKML_LABEL == "nkml.squat.ai/" + "wireguard"
    assert "--hostname=$(NODE_NAME)" in args
    # Removing the label on stop would make Kubernetes delete the node's agent.
    assert "--no-clean-up" in args
    listen = next(a for a in args if a.startswith("--listen-address="))
    assert listen.startswith("--listen-address=127.0.0.1:") and not listen.endswith(":1107")
    # Where the agents run, before any pod network: the host's network, Kilo's tolerations,
    # the same kubeconfig source (k3s: generated for nkml's own account).
    kernel = one(HETEROGENEOUS, "DaemonSet", "kilo")
    assert pod(nkml)["hostNetwork"] is True
    for key in ("tolerations", "priorityClassName"):
        assert pod(nkml)[key] == pod(kernel)[key]
    assert "--kubeconfig=/etc/kubernetes/kubeconfig" in args
    assert c.mounts()["/etc/kubernetes"] == {"name": "kubeconfig", "emptyDir": {}}
    init = [x.name for x in c.siblings() if x.init]
    assert init == ["generate-kubeconfig", "wireguard-probe"]
    generate = container([nkml], "generate-kubeconfig")
    assert generate.spec == container([kernel], "generate-kubeconfig").spec


def test_nkml_has_its_own_account_and_the_kilo_role_stays_least_privilege() -> None:
    """Kilo runs nkml as the kilo account and adds get on nodes to the kilo ClusterRole;
    here nkml's own account may get and patch nodes, and the kilo role is rbac.yaml's."""
    nkml = one(HETEROGENEOUS, "DaemonSet", "nkml")
    assert pod(nkml)["serviceAccountName"] == "nkml"
    assert rules(one(HETEROGENEOUS, "ClusterRole", "nkml")) == {
        ("", "nodes", "get", "*"),
        ("", "nodes", "patch", "*"),
    }
    binding = one(HETEROGENEOUS, "ClusterRoleBinding", "nkml")
    assert binding["roleRef"]["name"] == "nkml"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nkml", "namespace": "kube-system"}
    ]
    reference = one(load_file(MANIFESTS / "rbac.yaml"), "ClusterRole")
    assert one(HETEROGENEOUS, "ClusterRole", "kilo") == reference
    assert ("", "nodes", "get", "*") not in rules(reference)


def test_the_chart_renders_nkml_only_for_the_heterogeneous_variant() -> None:
    for path in rendered_files():
        names = [d["metadata"]["name"] for d in find(load_file(path), "DaemonSet")]
        expected = path.name == "kilo-k3s-userspace-heterogeneous.yaml"
        assert ("nkml" in names) == expected, path.name


# --- kube-router.yaml --------------------------------------------------------------------------


def test_kube_router_runs_only_its_firewall_with_kilos_image_and_flags() -> None:
    c = container(KUBE_ROUTER, "kube-router")
    # Kilo's manifest names the image without a tag (the latest kube-router); so does ours,
    # from values.yaml (kubeRouter.image), where a cluster can pin one.
    assert c.spec["image"] == VALUES["kubeRouter"]["image"] == "cloudnativelabs/kube-router"
    assert c.spec["args"] == [
        "--run-router=false",
        "--run-firewall=true",
        "--run-service-proxy=false",
    ]
    assert "command" not in c.spec
    assert c.spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 20244}


def test_kube_router_shares_the_iptables_lock_and_never_touches_the_cni_config() -> None:
    (daemonset,) = find(KUBE_ROUTER, "DaemonSet")
    assert pod(daemonset)["hostNetwork"] is True
    c = container(KUBE_ROUTER, "kube-router")
    mounts = c.mounts()
    assert set(mounts) == {"/lib/modules", "/run/xtables.lock"}
    # The same lock as kg's (and kube-proxy's): iptables-legacy serialises on it.
    kg = container(load_file(MANIFESTS / "kilo-kubeadm.yaml"), "kilo")
    assert mounts["/run/xtables.lock"]["hostPath"] == kg.mounts()["/run/xtables.lock"]["hostPath"]
    assert mounts["/lib/modules"]["hostPath"] == {"path": "/lib/modules"}
    # No CNI directory of any flavour, no Kilo state: the CNI config stays Kilo's alone.
    agent_paths = {
        volume["hostPath"]["path"]
        for path in rendered_files()
        if path.name.startswith("kilo-")
        for owner, spec in pod_specs(load_file(path))
        if owner.startswith("DaemonSet/kilo")
        for volume in spec.get("volumes", [])
        if "hostPath" in volume
    }
    assert {"/etc/cni/net.d", "/etc/kubernetes/cni/net.d", "/opt/cni/bin"} <= agent_paths
    router_paths = {v["hostPath"]["path"] for v in pod(daemonset)["volumes"]}
    assert router_paths & agent_paths == {"/run/xtables.lock"}


def test_kube_router_reads_what_its_firewall_needs() -> None:
    (daemonset,) = find(KUBE_ROUTER, "DaemonSet")
    assert pod(daemonset)["serviceAccountName"] == "kube-router"
    assert rules(one(KUBE_ROUTER, "ClusterRole", "kube-router")) == {
        ("", "nodes", "get", "*"),
        *(
            ("", resource, verb, "*")
            for resource in ("endpoints", "namespaces", "nodes", "pods", "services")
            for verb in ("list", "watch")
        ),
        ("networking.k8s.io", "networkpolicies", "list", "*"),
        ("networking.k8s.io", "networkpolicies", "watch", "*"),
    }
    assert one(KUBE_ROUTER, "ClusterRoleBinding", "kube-router")["subjects"] == [
        {"kind": "ServiceAccount", "name": "kube-router", "namespace": "kube-system"}
    ]


# --- the monitoring set ------------------------------------------------------------------------


def selected(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_the_podmonitor_scrapes_every_agent_and_nothing_else() -> None:
    monitor = one(load_file(MANIFESTS / "podmonitor.yaml"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kube-system"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    # The node's name is the instance, as the dashboard's legends expect.
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"}
    ]
    for path in rendered_files():
        for obj in find(load_file(path), "DaemonSet") + find(load_file(path), "Deployment"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            kg = obj["metadata"]["name"] in ("kilo", "kilo-userspace")
            assert selected(monitor["spec"]["selector"], labels) == kg, path.name
            if kg:
                ports = container([obj], "kilo").spec["ports"]
                assert {"containerPort": 1107, "name": "metrics"} in ports


def test_wg_exporter_is_the_podmonitor_and_the_dashboard_since_kg_exports_wireguard_metrics() -> (
    None
):
    assert sorted(o["kind"] for o in WG_EXPORTER) == ["ConfigMap", "PodMonitor"]
    assert one(WG_EXPORTER, "PodMonitor") == one(
        load_file(MANIFESTS / "podmonitor.yaml"), "PodMonitor"
    )
    configmap = one(WG_EXPORTER, "ConfigMap", "kilo-dashboard")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(configmap["data"]) == ["kilo.json"]
    assert json.loads(configmap["data"]["kilo.json"]) == json.loads(DASHBOARD.read_text())
    assert DASHBOARD_MANIFEST.read_text() == DASHBOARD.read_text()
    assert not find(WG_EXPORTER, "DaemonSet")  # no exporter runs: kg is the exporter


def test_the_kube_prometheus_role_lets_prometheus_list_and_watch_pods_beside_the_agents() -> None:
    role = one(ROLE, "Role", "kilo-prometheus")
    assert role["metadata"]["namespace"] == "kube-system"
    assert rules(role) == {("", "pods", "list", "*"), ("", "pods", "watch", "*")}
    binding = one(ROLE, "RoleBinding", "kilo-prometheus")
    assert binding["metadata"]["namespace"] == "kube-system"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "kilo-prometheus",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}
    ]
    assert sorted(o["kind"] for o in ROLE) == ["Role", "RoleBinding"]


def test_the_agent_flags_of_every_kg_container_are_accepted_in_the_new_variant() -> None:
    for c in containers(HETEROGENEOUS):
        if c.owner.startswith("DaemonSet/kilo") and c.name == "kilo":
            args = [a.replace("$(NODE_NAME)", "node-a") for a in c.spec["args"]]
            parsed: Any = command_line.read(args, hostname_fallback=lambda: None)
            assert parsed.wireguard.create_interface is (c.owner == "DaemonSet/kilo")


MULTICLUSTER = load_file(MANIFESTS / "multicluster.yaml")
MULTICLUSTER_REMOTE = load_file(MANIFESTS / "multicluster-remote.yaml")
LINK_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["kilo.squat.ai"],
        "resources": ["peers"],
        "verbs": ["list", "watch", "create", "patch", "delete"],
    },
]


def test_the_multicluster_deployment_runs_the_link_with_the_secrets_kubeconfig() -> None:
    """One replica of ``kgctl multicluster link --watch`` as the unprivileged user kilo: this
    cluster in-cluster, the other through the Secret's kubeconfig, every flag accepted by
    kgctl's own parser. The roles are proven against API servers in
    tests/integration/test_multicluster.py."""
    deployment = one(MULTICLUSTER, "Deployment", "kilo-multicluster")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (link,) = list(containers([deployment]))
    command = link.spec["command"]
    assert command[:3] == ["kgctl", "multicluster", "link"]
    assert not any(a.startswith("--kubeconfig") for a in command)
    args = kgctl.build_parser().parse_args(command[1:])
    assert (args.watch, args.name, args.resync_period) == (True, "kilo", 30.0)
    remote = Path(args.remote_kubeconfig)
    secret = link.mounts()[str(remote.parent)]["secret"]
    assert secret == {
        "secretName": VALUES["multicluster"]["remoteKubeconfigSecret"],
        "items": [{"key": "kubeconfig", "path": remote.name}],
    }
    assert link.pod["serviceAccountName"] == "kilo-multicluster"
    assert link.pod["securityContext"]["runAsUser"] == 1000
    assert link.spec["securityContext"]["readOnlyRootFilesystem"] is True
    binding = one(MULTICLUSTER, "ClusterRoleBinding", "kilo-multicluster")
    assert binding["subjects"][0]["name"] == "kilo-multicluster"
    assert one(MULTICLUSTER, "ClusterRole", "kilo-multicluster")["rules"] == LINK_RULES


def test_the_remote_side_is_the_same_role_for_its_own_account_and_nothing_else() -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in MULTICLUSTER_REMOTE) == [
        ("ClusterRole", "kilo-multicluster"),
        ("ClusterRoleBinding", "kilo-multicluster-remote"),
        ("Secret", "kilo-multicluster-remote-token"),
        ("ServiceAccount", "kilo-multicluster-remote"),
    ]
    assert one(MULTICLUSTER_REMOTE, "ClusterRole")["rules"] == LINK_RULES
    token = one(MULTICLUSTER_REMOTE, "Secret")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"] == {
        "kubernetes.io/service-account.name": "kilo-multicluster-remote"
    }
    # Off by default: the agent's manifests carry none of it.
    assert VALUES["multicluster"]["enabled"] is False
    for path in rendered_files():
        if path.name.startswith("kilo-"):
            assert not find(load_file(path), "Deployment", "kilo-multicluster"), path.name
