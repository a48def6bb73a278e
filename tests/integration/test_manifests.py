"""The manifests and the chart against the real kube-apiserver, and their drift from the chart.

Every committed manifest and the chart rendered for every flavour, mode and WireGuard kind
(kernel, userspace, heterogeneous) is applied with server-side dry run (nothing is stored); the
CRDs and namespaces they need are installed for real (the Peer CRD, a test-only PodMonitor
CRD, the namespaces kilo and monitoring, which this module removes). The RBAC is proven with
the objects created for real and service-account tokens: the agent's ClusterRole equals
manifests/rbac.yaml everywhere, the webhook's grants exactly its list/watch, nkml may get and
patch nodes, kube-prometheus' Prometheus may list and watch the agents' pods, and cert-gen
runs as its own account. Everything created here is removed again (the API server is shared).
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Namespace, Node, Pod, Secret, ServiceAccount

from kilo.adapters import kubeconfig, kubernetes
from kilo.sandbox.controlplane import ControlPlane, build_helm
from tests.apiserver import rules_of, wait_served
from tests.manifests import (
    CHART,
    GENERATOR,
    MANIFESTS,
    Obj,
    containers,
    find,
    generated_files,
    helm_template,
    load,
    load_file,
    one,
)

FIELD_MANAGER = "kilo-manifest-test"
FLAVOURS = ("kubeadm", "k3s", "bootkube", "typhoon")
MODES = ("cni", "flannel", "cilium")
WIREGUARD: tuple[bool | str, ...] = (False, True, "heterogeneous")
MATRIX = list(itertools.product(FLAVOURS, MODES, WIREGUARD))
AGENTS = ("kilo", "kilo-userspace")
PodMonitor = create_namespaced_resource("monitoring.coreos.com", "v1", "PodMonitor", "podmonitors")
POD_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {"kind": "PodMonitor", "plural": "podmonitors", "singular": "podmonitor"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def variant_id(variant: tuple[str, str, bool | str]) -> str:
    flavour, mode, userspace = variant
    kind = {False: "", True: "-userspace", "heterogeneous": "-heterogeneous"}[userspace]
    return f"{flavour}-{mode}{kind}"


def render_variant(helm: Path, variant: tuple[str, str, bool | str]) -> str:
    flavour, mode, userspace = variant
    return helm_template(
        helm,
        f"--set=flavour={flavour}",
        f"--set=mode={mode}",
        f"--set=userspace={str(userspace).lower()}",
        "--set=peerValidation.enabled=true",
        "--set=podMonitor.enabled=true",
    )


def from_dict(resource: Any, data: Obj) -> Any:
    return resource.from_dict(data)


@pytest.fixture(scope="module")
def helm() -> Path:
    return build_helm()


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Iterator[Client]:
    with Client(
        KubeConfig.from_file(str(control_plane.admin_kubeconfig)), trust_env=False
    ) as client:
        yield client


class Created:
    """Objects this module created for real, removed in reverse order."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.objects: list[tuple[Any, str, str | None]] = []

    def ensure(self, obj: Any) -> Any:
        """Create ``obj`` unless it exists; only what this call created is removed later."""
        meta = obj.metadata
        try:
            created = self.client.create(obj)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            return obj
        self.objects.append((type(obj), meta.name, meta.namespace))
        return created

    def track(self, resource: Any, name: str, namespace: str | None = None) -> None:
        self.objects.append((resource, name, namespace))

    def remove_all(self) -> None:
        for resource, name, namespace in reversed(self.objects):
            with contextlib.suppress(ApiError):
                if namespace is None:
                    self.client.delete(resource, name)
                else:
                    self.client.delete(resource, name, namespace=namespace)
            if resource is Namespace:
                finalize(self.client, name)
        self.objects.clear()


def finalize(client: Client, name: str) -> None:
    """Without a controller manager a deleted Namespace stays Terminating: finish it."""
    with contextlib.suppress(ApiError):
        ns = client.get(Namespace, name)
        assert ns.spec is not None
        ns.spec.finalizers = []
        client.replace(from_dict(Namespace.Finalize, ns.to_dict()), name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.get(Namespace, name)
        except ApiError as exc:
            if exc.status.code == 404:
                return
            raise
        time.sleep(0.1)
    raise AssertionError(f"namespace {name} was not removed")


@pytest.fixture(scope="module")
def cluster(admin: Client) -> Iterator[Created]:
    """The CRDs and the Namespace the manifests need, for real."""
    created = Created(admin)
    try:
        for obj in load_all_yaml((MANIFESTS / "crds.yaml").read_text()):
            created.ensure(obj)
        created.ensure(from_dict(CustomResourceDefinition, POD_MONITOR_CRD))
        wait_served(admin, "peers.kilo.squat.ai", kubernetes.Peer)
        wait_served(admin, "podmonitors.monitoring.coreos.com", PodMonitor)
        # The webhook's objects live in a namespace of their own, the dashboard's ConfigMap in
        # Grafana's; dry-run cannot create them for the objects in them.
        created.ensure(from_dict(Namespace, {"metadata": {"name": "kilo"}}))
        created.ensure(from_dict(Namespace, {"metadata": {"name": "monitoring"}}))
        yield created
    finally:
        created.remove_all()


def dry_run_apply(client: Client, text: str) -> list[Any]:
    results = []
    for obj in load_all_yaml(text):
        results.append(client.apply(obj, field_manager=FIELD_MANAGER, force=True, dry_run=True))
    return results


def check_applied(client: Client, text: str) -> None:
    objects = load(text)
    results = dry_run_apply(client, text)
    assert [(r.kind, r.metadata.name) for r in results] == [
        (o["kind"], o["metadata"]["name"]) for o in objects
    ]
    for result in results:
        if result.kind == "DaemonSet":
            # The server defaulted and validated the pod template, and stored nothing.
            pod = result.spec.template.spec
            assert pod.containers[0].terminationMessagePath == "/dev/termination-log"
            with pytest.raises(ApiError) as missing:
                client.get(DaemonSet, result.metadata.name, namespace=result.metadata.namespace)
            assert missing.value.status.code == 404


# --- drift ---------------------------------------------------------------------------------------


def test_the_committed_manifests_are_what_the_chart_renders(helm: Path, tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(GENERATOR), str(tmp_path)],
        env={**os.environ, "HELM": str(helm)},
        check=True,
        capture_output=True,
    )
    generated = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in generated_files()}
    assert sorted(generated) == sorted(committed)
    for name, text in generated.items():
        assert committed[name] == text, f"manifests/{name} is stale: run manifests/generate.sh"


def test_helm_lint(helm: Path) -> None:
    everything = [
        "--set=flavour=k3s",
        "--set=userspace=heterogeneous",
        "--set=peerValidation.enabled=true",
        "--set=podMonitor.enabled=true",
        "--set=kubePrometheusRole.enabled=true",
        "--set=dashboard.enabled=true",
        "--set=kubeRouter.enabled=true",
        "--set=multicluster.enabled=true",
        "--set=multicluster.remoteAccount=true",
        '--set-json=multicluster.serviceCIDRs=["10.43.0.0/16"]',
    ]
    for values in (
        [],
        ["--set=flavour=k3s", "--set=userspace=true", "--set=mode=flannel"],
        everything,
    ):
        result = subprocess.run(
            [str(helm), "lint", "--strict", str(CHART), *values],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "namespace", "message"),
    [
        (["--set=flavour=rancher"], "kube-system", "flavour"),
        (["--set=mode=calico"], "kube-system", "mode"),
        (["--set=userspace=sometimes"], "kube-system", "userspace"),
        (["--set=agent.extraArgs={subnet=10.5.0.0/16}"], "kube-system", "extraArgs"),
        (["--set=multicluster.name=East_1"], "kube-system", "/multicluster/name"),
        ([], "kilo", "install into kube-system or set agent.kubeconfig=in-cluster"),
        (["--set=flavour=typhoon"], "kilo", "install into kube-system"),
    ],
    ids=[
        "flavour",
        "mode",
        "userspace",
        "extra-args-without-dashes",
        "link-name",
        "kubeadm-namespace",
        "typhoon-namespace",
    ],
)
def test_the_chart_refuses_values_that_cannot_work(
    helm: Path, values: list[str], namespace: str, message: str
) -> None:
    result = subprocess.run(
        [str(helm), "template", "kilo", str(CHART), "--namespace", namespace, *values],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_another_namespace_works_with_the_in_cluster_config(helm: Path) -> None:
    objects = load(helm_template(helm, "--set=agent.kubeconfig=in-cluster", namespace="net"))
    daemonset = one(objects, "DaemonSet")
    assert daemonset["metadata"]["namespace"] == "net"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["namespace"] == "net"
    kg = daemonset["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--kubeconfig") for a in kg["args"])


# --- server-side dry run -------------------------------------------------------------------------


# kube-router's container is privileged, as in Kilo's manifest; this API server refuses
# privileged containers (--allow-privileged defaults to false), which proves that Kilo's own
# need none, so it is checked on its own below.
PRIVILEGED = {"kube-router.yaml"}


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(MANIFESTS.glob("*.yaml")) if p.name not in PRIVILEGED],
    ids=lambda p: p.name,
)
def test_every_committed_manifest_is_accepted(admin: Client, cluster: Created, path: Path) -> None:
    check_applied(admin, path.read_text())


def test_kube_router_is_refused_only_for_being_privileged(admin: Client, cluster: Created) -> None:
    text = (MANIFESTS / "kube-router.yaml").read_text()
    with pytest.raises(ApiError) as refused:
        dry_run_apply(admin, text)
    assert refused.value.status.code == 422
    assert refused.value.status.message == (
        'DaemonSet.apps "kube-router" is invalid: spec.template.spec.containers[0]'
        ".securityContext.privileged: Forbidden: disallowed by cluster policy"
    )
    objects = load(text)
    (container,) = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"] == {"privileged": True}
    del container["securityContext"]
    check_applied(admin, yaml.safe_dump_all(objects))


@pytest.mark.parametrize("variant", MATRIX, ids=variant_id)
def test_every_chart_variant_is_accepted(
    admin: Client, cluster: Created, helm: Path, variant: tuple[str, str, bool | str]
) -> None:
    text = render_variant(helm, variant)
    objects = load(text)
    kinds = {o["kind"] for o in objects}
    assert {"DaemonSet", "PodMonitor", "ValidatingWebhookConfiguration", "Job"} <= kinds
    check_applied(admin, text)


# --- RBAC ----------------------------------------------------------------------------------------


def granted_cluster_roles(objects: list[Obj], namespace: str, account: str) -> list[Obj]:
    """The ClusterRoles (and Roles) bound to one service account."""
    roles = []
    for binding in [*find(objects, "ClusterRoleBinding"), *find(objects, "RoleBinding")]:
        subjects = binding.get("subjects", [])
        if any(
            s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == namespace
            for s in subjects
        ):
            ref = binding["roleRef"]
            roles.append(one(objects, ref["kind"], ref["name"]))
    return roles


def normalised(rules: list[Obj]) -> set[tuple[str, str, str, str]]:
    return {
        (group, resource, verb, name)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
        for name in rule.get("resourceNames", ["*"])
    }


RBAC_RULES = normalised(one(load_file(MANIFESTS / "rbac.yaml"), "ClusterRole")["rules"])
LEASE_RULES = normalised(one(load_file(MANIFESTS / "rbac.yaml"), "Role")["rules"])
NKML_RULES = {("", "nodes", "get", "*"), ("", "nodes", "patch", "*")}
WEBHOOK_RULES = {
    ("", "nodes", "list", "*"),
    ("", "nodes", "watch", "*"),
    ("kilo.squat.ai", "peers", "list", "*"),
    ("kilo.squat.ai", "peers", "watch", "*"),
}


def test_rbac_yaml_is_the_least_privilege_set() -> None:
    expected = {
        ("", "nodes", "list", "*"),
        ("", "nodes", "watch", "*"),
        ("", "nodes", "patch", "*"),
        ("kilo.squat.ai", "peers", "list", "*"),
        ("kilo.squat.ai", "peers", "watch", "*"),
        # For Kilo's Go kg, which gets the Peer CRD at start-up (see the role's comment).
        ("apiextensions.k8s.io", "customresourcedefinitions", "get", "peers.kilo.squat.ai"),
    }
    assert expected == RBAC_RULES
    # kg --leader-election=lease, in the agent's namespace only (delete: the stale Leases
    # of locations without nodes).
    assert {
        ("coordination.k8s.io", "leases", verb, "*")
        for verb in ("get", "list", "watch", "create", "update", "delete")
    } == LEASE_RULES
    assert one(load_file(MANIFESTS / "rbac.yaml"), "Role")["metadata"]["namespace"] == "kube-system"


@pytest.mark.parametrize("variant", MATRIX, ids=variant_id)
def test_every_variant_grants_the_agent_exactly_rbac_yaml(
    helm: Path, variant: tuple[str, str, bool | str]
) -> None:
    objects = load(render_variant(helm, variant))
    daemonsets = {d["metadata"]["name"]: d for d in find(objects, "DaemonSet")}
    heterogeneous = variant[2] == "heterogeneous"
    assert sorted(daemonsets) == (["kilo", "kilo-userspace", "nkml"] if heterogeneous else ["kilo"])
    for name, daemonset in daemonsets.items():
        account = daemonset["spec"]["template"]["spec"]["serviceAccountName"]
        roles = granted_cluster_roles(objects, "kube-system", account)
        if name in AGENTS:
            assert [r["kind"] for r in roles] == ["ClusterRole", "Role"]
            assert roles[1]["metadata"]["namespace"] == "kube-system"
            assert normalised(roles[1]["rules"]) == LEASE_RULES
        else:
            assert [r["kind"] for r in roles] == ["ClusterRole"]
        assert normalised(roles[0]["rules"]) == (RBAC_RULES if name in AGENTS else NKML_RULES)
    webhook = one(objects, "Deployment", "peer-validation-server")
    account = webhook["spec"]["template"]["spec"]["serviceAccountName"]
    roles = granted_cluster_roles(objects, "kilo", account)
    assert [normalised(r["rules"]) for r in roles] == [WEBHOOK_RULES]


def service_account_kubeconfig(
    plane: ControlPlane, client: Client, namespace: str, name: str, path: Path
) -> Path:
    request = from_dict(
        ServiceAccount.Token,
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"expirationSeconds": 3600}},
    )
    token = client.create(request, name, namespace=namespace)
    return plane.write_kubeconfig(path, name, token=token.status.token)


@pytest.fixture(scope="module")
def webhook_objects(admin: Client, cluster: Created) -> Iterator[list[Obj]]:
    """peer-validation.yaml's accounts and roles, and its webhook configuration made inert."""
    objects = load_file(MANIFESTS / "peer-validation.yaml")
    created = Created(admin)
    try:
        for obj in objects:
            if obj["kind"] in (
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ):
                created.ensure(load_all_yaml(yaml.safe_dump(obj))[0])
        # The real name (cert-gen may only touch that one), but matching no object: other
        # tests create Peers meanwhile and no webhook server runs here.
        configuration = one(objects, "ValidatingWebhookConfiguration")
        configuration["webhooks"][0]["objectSelector"] = {
            "matchLabels": {"kilo-test.invalid/never": "true"}
        }
        created.ensure(from_dict(ValidatingWebhookConfiguration, configuration))
        created.track(Secret, "peer-validation-webhook-tls", "kilo")
        yield objects
    finally:
        created.remove_all()


def test_the_webhook_account_may_list_and_watch_nodes_and_peers_and_nothing_else(
    admin: Client, control_plane: ControlPlane, webhook_objects: list[Obj], tmp_path: Path
) -> None:
    config = service_account_kubeconfig(
        control_plane, admin, "kilo", "peer-validation-server", tmp_path / "webhook.kubeconfig"
    )
    admin.create(from_dict(Node, {"metadata": {"name": "manifest-test-node"}}))
    try:
        with Client(kubeconfig.load(str(config)), trust_env=False) as client:
            assert rules_of(client, "kilo") == {
                ("", "nodes"): {"list", "watch"},
                ("kilo.squat.ai", "peers"): {"list", "watch"},
            }
            names = [n.metadata.name for n in client.list(Node) if n.metadata is not None]
            assert "manifest-test-node" in names
            list(client.list(kubernetes.Peer))
            for event, seen in client.watch(Node, fields={"metadata.name": "manifest-test-node"}):
                assert seen.metadata is not None
                assert (event, seen.metadata.name) == ("ADDED", "manifest-test-node")
                break
            with pytest.raises(ApiError) as denied:
                client.patch(Node, "manifest-test-node", {"metadata": {"labels": {"a": "b"}}})
            assert denied.value.status.code == 403
    finally:
        admin.delete(Node, "manifest-test-node")


def create_accounts(created: Created, objects: list[Obj], names: tuple[str, ...]) -> None:
    for obj in objects:
        if obj["metadata"]["name"] in names and obj["kind"] in (
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ):
            created.ensure(load_all_yaml(yaml.safe_dump(obj))[0])


def test_nkml_may_get_and_label_nodes_and_nothing_else(
    admin: Client, control_plane: ControlPlane, cluster: Created, tmp_path: Path
) -> None:
    """What nkml does with the account of kilo-k3s-userspace-heterogeneous.yaml: get its
    Node, patch its label (a strategic merge patch, as nkml sends)."""
    created = Created(admin)
    try:
        objects = load_file(MANIFESTS / "kilo-k3s-userspace-heterogeneous.yaml")
        create_accounts(created, objects, ("nkml",))
        admin.create(from_dict(Node, {"metadata": {"name": "manifest-test-nkml"}}))
        created.track(Node, "manifest-test-nkml")
        config = service_account_kubeconfig(
            control_plane, admin, "kube-system", "nkml", tmp_path / "nkml.kubeconfig"
        )
        with Client(kubeconfig.load(str(config)), trust_env=False) as client:
            assert rules_of(client, "kube-system") == {("", "nodes"): {"get", "patch"}}
            assert client.get(Node, "manifest-test-nkml").metadata is not None
            client.patch(
                Node,
                "manifest-test-nkml",
                {"metadata": {"labels": {"nkml.squat.ai/wireguard": "false"}}},
            )
            node = admin.get(Node, "manifest-test-nkml")
            assert node.metadata is not None and node.metadata.labels is not None
            assert node.metadata.labels["nkml.squat.ai/wireguard"] == "false"
            with pytest.raises(ApiError) as denied:
                list(client.list(Node))
            assert denied.value.status.code == 403
    finally:
        created.remove_all()


def test_kube_prometheus_may_list_and_watch_the_agents_pods_and_nothing_else(
    admin: Client, control_plane: ControlPlane, cluster: Created, tmp_path: Path
) -> None:
    """wg-exporter-role-kube-prometheus.yaml for monitoring/prometheus-k8s."""
    created = Created(admin)
    try:
        objects = load_file(MANIFESTS / "wg-exporter-role-kube-prometheus.yaml")
        created.ensure(
            from_dict(
                ServiceAccount, {"metadata": {"name": "prometheus-k8s", "namespace": "monitoring"}}
            )
        )
        create_accounts(created, objects, ("kilo-prometheus",))
        config = service_account_kubeconfig(
            control_plane, admin, "monitoring", "prometheus-k8s", tmp_path / "prom.kubeconfig"
        )
        with Client(kubeconfig.load(str(config)), trust_env=False) as client:
            assert rules_of(client, "kube-system") == {("", "pods"): {"list", "watch"}}
            list(client.list(Pod, namespace="kube-system"))
            assert rules_of(client, "default") == {}
            with pytest.raises(ApiError) as denied:
                list(client.list(Pod, namespace="default"))
            assert denied.value.status.code == 403
    finally:
        created.remove_all()


def test_cert_gen_creates_the_secret_and_points_the_webhook_at_its_ca(
    admin: Client, control_plane: ControlPlane, webhook_objects: list[Obj], tmp_path: Path
) -> None:
    job = one(webhook_objects, "Job", "cert-gen")
    (cert_gen,) = list(containers([job]))
    account = job["spec"]["template"]["spec"]["serviceAccountName"]
    script = tmp_path / "cert-gen.py"
    configmap = one(webhook_objects, "ConfigMap", "peer-validation-cert-gen")
    script.write_text(configmap["data"]["cert-gen.py"])
    assert cert_gen.spec["command"] == ["python3", "/scripts/cert-gen.py"]
    assert cert_gen.mounts()["/scripts"]["configMap"]["name"] == "peer-validation-cert-gen"
    config = service_account_kubeconfig(
        control_plane, admin, "kilo", account, tmp_path / "cert-gen.kubeconfig"
    )
    env = {
        "PATH": os.environ["PATH"],
        "KUBECONFIG": str(config),
        "HOME": str(tmp_path),
        **{e["name"]: e["value"] for e in cert_gen.spec["env"]},
    }

    def run() -> str:
        result = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "created Secret kilo/peer-validation-webhook-tls" in run()
    secret = admin.get(Secret, "peer-validation-webhook-tls", namespace="kilo")
    assert secret.type == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    configuration = admin.get(ValidatingWebhookConfiguration, "peers.kilo.squat.ai")
    assert configuration.webhooks is not None
    ca_bundle = configuration.webhooks[0].clientConfig.caBundle
    assert ca_bundle is not None
    assert base64.b64decode(ca_bundle) == data["ca.crt"]
    check_serving_certificate(data, "peer-validation.kilo.svc")
    # A second run keeps the Secret and finds the CA in place.
    assert "already trusts the CA" in run()
    again = admin.get(Secret, "peer-validation-webhook-tls", namespace="kilo")
    assert again.data == secret.data


def check_serving_certificate(data: dict[str, bytes], server_name: str) -> None:
    """A TLS handshake as the API server makes it: the CA bundle, the Service's name."""
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca)
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (directory / "tls.crt").write_bytes(data["tls.crt"])
        (directory / "tls.key").write_bytes(data["tls.key"])
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        client_context = ssl.create_default_context(cadata=data["ca.crt"].decode())
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        port = listener.getsockname()[1]
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_context.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                assert tls.recv(2) == b"ok"
        finally:
            thread.join(10)
        assert not errors


def test_the_k3s_kubeconfig_reaches_the_api_server_as_the_kilo_account(
    admin: Client, control_plane: ControlPlane, cluster: Created, tmp_path: Path
) -> None:
    """generate-kubeconfig from kilo-k3s.yaml, against the test API server: kgctl works."""
    from kilo.cli import kgctl

    created = Created(admin)
    try:
        for obj in load_all_yaml((MANIFESTS / "rbac.yaml").read_text()):
            created.ensure(obj)
        agent = tmp_path / "k3s-agent"
        agent.mkdir()
        (agent / "server-ca.crt").write_bytes((control_plane.pki / "ca.crt").read_bytes())
        (agent / "kubelet.kubeconfig").write_text(
            f"apiVersion: v1\nclusters:\n- cluster:\n    server: {control_plane.server}\n"
            "  name: local\nkind: Config\n"
        )
        token_config = service_account_kubeconfig(
            control_plane, admin, "kube-system", "kilo", tmp_path / "sa.kubeconfig"
        )
        token = tmp_path / "token"
        user = kubeconfig.load(str(token_config), environ={}).user
        assert user is not None and user.token
        token.write_text(user.token)
        (generate,) = [
            c
            for c in containers(load_file(MANIFESTS / "kilo-k3s.yaml"))
            if c.name == "generate-kubeconfig"
        ]
        out = tmp_path / "kubeconfig"
        result = subprocess.run(
            ["sh", "-c", generate.spec["command"][2]],
            env={
                "PATH": os.environ["PATH"],
                "KILO_K3S_AGENT_DIR": str(agent),
                "KILO_KUBECONFIG_OUT": str(out),
                "KILO_TOKEN_FILE": str(token),
            },
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        err = io.StringIO()
        code = kgctl.main(
            ["--kubeconfig", str(out), "list", "-o", "json"], out=io.StringIO(), err=err
        )
        assert code == 0, err.getvalue()
        # And it is the kilo account, not more: it may not read Secrets.
        with (
            Client(kubeconfig.load(str(out), environ={}), trust_env=False) as client,
            pytest.raises(ApiError) as denied,
        ):
            list(client.list(Secret, namespace="kube-system"))
        assert denied.value.status.code == 403
    finally:
        created.remove_all()
