"""``kg webhook`` as a process behind a real kube-apiserver's ValidatingWebhookConfiguration.

The webhook runs as ``python -m kilo.agent webhook`` on loopback with a serving certificate
from a test CA, and reads Nodes and Peers with a service account that has only the rules
it needs (``WEBHOOK_RULES``). Other integration modules share the API server and create
Peers, so the webhook configuration selects only Peers labelled ``kilo-test: webhook``
(one test drops the selector inside a narrow try/finally), and it is deleted, and seen to
be gone, before the webhook process ends.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Node, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding
from lightkube.types import PatchType

from kilo.adapters import kubernetes
from kilo.sandbox.controlplane import (
    CertificateAuthority,
    ControlPlane,
    _b64,
    free_port,
    pem_cert,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = "GY5aT1N9dTR/nJnT1N2f4ClZWVj0jOAld0r8ysWLyjg="
LABEL = {"kilo-test": "webhook"}
CONFIG = "kilo-test-peer-validation"
WEBHOOK = "peers.kilo-test.squat.ai"
ACCOUNT = "kilo-test-peer-validation"
DENIED = f'admission webhook "{WEBHOOK}" denied the request: '
# What the webhook needs to read the cluster (reported for manifests/peer-validation.yaml).
WEBHOOK_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
    {"apiGroups": ["kilo.squat.ai"], "resources": ["peers"], "verbs": ["list", "watch"]},
]
NODES = {
    "webhook-gcp-1": {"podCIDR": "10.77.1.0/24", "podCIDRs": ["10.77.1.0/24", "fd00:77:1::/64"]},
    "webhook-aws-1": {"podCIDR": "10.77.2.0/24"},
}
LAPTOP = "webhook-laptop"


def from_dict(resource: Any, data: dict[str, Any]) -> Any:
    return resource.from_dict(data)


def peer(name: str, *allowed_ips: str, key: str = KEY, labelled: bool = True) -> Any:
    metadata: dict[str, Any] = {"name": name}
    if labelled:
        metadata["labels"] = dict(LABEL)
    return from_dict(
        kubernetes.Peer,
        {"metadata": metadata, "spec": {"allowedIPs": list(allowed_ips), "publicKey": key}},
    )


def delete_quietly(client: Client, resource: Any, name: str, **kwargs: Any) -> None:
    with contextlib.suppress(ApiError):
        client.delete(resource, name, **kwargs)


def poll(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """For what cannot be awaited: the API server's view of webhook configurations."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Process:
    """The webhook process with its log lines collected as they arrive."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=ROOT,
        )
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"msg": raw.decode(errors="replace")}
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        self.stderr = self.popen.stderr.read()

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                if self.popen.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(f"the webhook exited: {self.lines} {self.stderr!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no such log line in {self.lines}")
                self._changed.wait(remaining)

    def messages(self) -> list[str]:
        with self._changed:
            return [str(line.get("msg")) for line in self.lines]

    def terminate(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        for reader in self._readers:
            reader.join(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
        return self.popen.returncode


@dataclass
class Webhook:
    process: Process
    port: int
    metrics_port: int
    ca_file: Path
    ca_bundle: str

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def post(
        self, body: bytes, *, content_type: str = "application/json", path: str = "/validate"
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.tls(), timeout=10
        )
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def metrics(self) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            assert response.status == 200
            return response.read().decode()
        finally:
            connection.close()


def webhook_argv(pki: dict[str, Path], port: int, metrics_port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kilo.agent",
        "webhook",
        f"--cert-file={pki['cert']}",
        f"--key-file={pki['key']}",
        f"--listen=127.0.0.1:{port}",
        f"--listen-metrics=127.0.0.1:{metrics_port}",
        *extra,
    ]


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Iterator[Client]:
    with Client(
        KubeConfig.from_file(str(control_plane.admin_kubeconfig)), trust_env=False
    ) as client:
        yield client


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("webhook-pki")
    ca = CertificateAuthority.create("kilo-test-webhook-ca")
    cert, key = ca.issue("peer-validation", server_ips=("127.0.0.1",), client=False)
    paths = {
        "ca": directory / "ca.crt",
        "cert": directory / "tls.crt",
        "key": directory / "tls.key",
    }
    paths["ca"].write_bytes(pem_cert(ca.cert))
    paths["cert"].write_bytes(cert)
    paths["key"].write_bytes(key)
    paths["key"].chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def peer_crd(admin: Client) -> None:
    for obj in load_all_yaml((ROOT / "manifests" / "crds.yaml").read_text()):
        try:
            admin.create(obj)
        except ApiError as exc:
            if exc.status.code != 409:
                raise

    def established() -> bool:
        crd = admin.get(CustomResourceDefinition, "peers.kilo.squat.ai")
        conditions = crd.status.conditions if crd.status else None
        return any(c.type == "Established" and c.status == "True" for c in conditions or [])

    poll(established, "the Peer CRD to be established")


@pytest.fixture(scope="module")
def account(
    admin: Client, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A kubeconfig of a service account granted exactly WEBHOOK_RULES."""
    admin.create(
        from_dict(ServiceAccount, {"metadata": {"name": ACCOUNT, "namespace": "kube-system"}})
    )
    admin.create(from_dict(ClusterRole, {"metadata": {"name": ACCOUNT}, "rules": WEBHOOK_RULES}))
    admin.create(
        from_dict(
            ClusterRoleBinding,
            {
                "metadata": {"name": ACCOUNT},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": ACCOUNT,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": "kube-system"}
                ],
            },
        )
    )
    try:
        token = admin.create(
            from_dict(
                ServiceAccount.Token,
                {
                    "metadata": {"name": ACCOUNT, "namespace": "kube-system"},
                    "spec": {"expirationSeconds": 3600},
                },
            ),
            ACCOUNT,
            namespace="kube-system",
        )
        path = tmp_path_factory.mktemp("webhook-account") / "kubeconfig"
        yield control_plane.write_kubeconfig(path, ACCOUNT, token=token.status.token)
    finally:
        delete_quietly(admin, ClusterRoleBinding, ACCOUNT)
        delete_quietly(admin, ClusterRole, ACCOUNT)
        delete_quietly(admin, ServiceAccount, ACCOUNT, namespace="kube-system")


@pytest.fixture(scope="module")
def cluster_objects(admin: Client, peer_crd: None) -> Iterator[None]:
    """Two Nodes with pod CIDRs and one Peer, there before the webhook starts."""
    try:
        for name, spec in NODES.items():
            admin.create(from_dict(Node, {"metadata": {"name": name}, "spec": spec}))
        admin.create(peer(LAPTOP, "10.78.0.0/24"))
        yield
    finally:
        delete_quietly(admin, kubernetes.Peer, LAPTOP)
        for name in NODES:
            delete_quietly(admin, Node, name)


def webhook_configuration(bundle: str, port: int, *, selector: bool = True) -> Any:
    hook: dict[str, Any] = {
        "name": WEBHOOK,
        "clientConfig": {"url": f"https://127.0.0.1:{port}/validate", "caBundle": bundle},
        "rules": [
            {
                "apiGroups": ["kilo.squat.ai"],
                "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["peers"],
                "scope": "Cluster",
            }
        ],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
    }
    if selector:
        hook["objectSelector"] = {"matchLabels": dict(LABEL)}
    return from_dict(
        ValidatingWebhookConfiguration, {"metadata": {"name": CONFIG}, "webhooks": [hook]}
    )


def denial_of(admin: Client, obj: Any) -> str | None:
    """The webhook's denial of creating ``obj``, or ``None`` (the object is deleted again)."""
    try:
        admin.create(obj)
    except ApiError as exc:
        message = exc.status.message or ""
        if message.startswith(DENIED):
            assert exc.status.code == 400
            return message[len(DENIED) :]
        raise
    admin.delete(kubernetes.Peer, obj.metadata.name)
    return None


def judged(admin: Client, *, labelled: bool) -> bool:
    """Whether the API server sends Peers (labelled or not) to the webhook now."""
    return (
        denial_of(admin, peer("webhook-probe", "10.79.9.9/32", key="!" * 44, labelled=labelled))
        is not None
    )


@pytest.fixture(scope="module")
def webhook(
    admin: Client,
    pki: dict[str, Path],
    account: Path,
    cluster_objects: None,
) -> Iterator[Webhook]:
    port, metrics_port = free_port(), free_port()
    process = Process(
        webhook_argv(pki, port, metrics_port, f"--kubeconfig={account}", "--log-level=debug")
    )
    registered = False
    try:
        process.wait_for_log(lambda line: line.get("msg") == "starting webhook server")
        synced = process.wait_for_log(
            lambda line: "cluster state is synced" in str(line.get("msg"))
        )
        assert synced["nodes"] >= len(NODES) and synced["peers"] >= 1
        bundle = _b64(pki["ca"].read_bytes())
        admin.create(webhook_configuration(bundle, port))
        registered = True
        poll(lambda: judged(admin, labelled=True), "the webhook configuration to take effect")
        yield Webhook(process, port, metrics_port, pki["ca"], bundle)
    finally:
        if registered:
            delete_quietly(admin, ValidatingWebhookConfiguration, CONFIG)
            # Other modules create Peers: the API server must have forgotten the webhook
            # before the process ends, or their Peers would fail on a dead webhook.
            poll(lambda: not judged(admin, labelled=True), "the webhook configuration to go")
            poll(lambda: not judged(admin, labelled=False), "the webhook configuration to go")
        process.terminate()


# --- through the API server -------------------------------------------------------------------


def test_a_valid_peer_is_created(admin: Client, webhook: Webhook) -> None:
    try:
        created = admin.create(peer("webhook-valid", "10.79.0.0/24"))
        assert created.metadata.name == "webhook-valid"
    finally:
        delete_quietly(admin, kubernetes.Peer, "webhook-valid")


def test_a_peer_with_an_invalid_key_is_denied_with_kilos_message(
    admin: Client, webhook: Webhook
) -> None:
    # The CRD's schema lets 44 characters through; Kilo's validation does not.
    assert denial_of(admin, peer("webhook-bad-key", "10.79.1.0/24", key="!" * 44)) == (
        "WireGuard public key is not base64 encoded: illegal base64 data at input byte 0"
    )


def test_a_peer_overlapping_another_peer_is_denied_naming_it(
    admin: Client, webhook: Webhook
) -> None:
    assert denial_of(admin, peer("webhook-overlap", "10.78.0.9/32")) == (
        f"allowed IP 10.78.0.9/32 overlaps allowed IP 10.78.0.0/24 of peer {LAPTOP}"
    )


@pytest.mark.parametrize(
    ("allowed_ip", "conflict"),
    [
        ("10.77.1.0/25", "the pod CIDR 10.77.1.0/24 of node webhook-gcp-1"),
        ("fd00:77:1::5/128", "the pod CIDR fd00:77:1::/64 of node webhook-gcp-1"),
        ("10.77.0.0/16", "the pod CIDR 10.77.2.0/24 of node webhook-aws-1"),
    ],
)
def test_a_peer_overlapping_a_pod_cidr_is_denied_naming_the_node(
    admin: Client, webhook: Webhook, allowed_ip: str, conflict: str
) -> None:
    assert denial_of(admin, peer("webhook-pods", allowed_ip)) == (
        f"allowed IP {allowed_ip} overlaps {conflict}"
    )


def test_an_update_of_a_peer_to_itself_is_allowed(admin: Client, webhook: Webhook) -> None:
    current = admin.get(kubernetes.Peer, LAPTOP)
    replaced = admin.replace(current)
    assert replaced.spec["allowedIPs"] == ["10.78.0.0/24"]
    # Growing into free space is an UPDATE the webhook allows too; into a pod CIDR it is not.
    admin.patch(
        kubernetes.Peer,
        LAPTOP,
        {"spec": {"allowedIPs": ["10.78.0.0/23"]}},
        patch_type=PatchType.MERGE,
    )
    with pytest.raises(ApiError) as caught:
        admin.patch(
            kubernetes.Peer,
            LAPTOP,
            {"spec": {"allowedIPs": ["10.78.0.0/23", "10.77.2.1/32"]}},
            patch_type=PatchType.MERGE,
        )
    assert caught.value.status.message == (
        DENIED + "allowed IP 10.77.2.1/32 overlaps the pod CIDR 10.77.2.0/24 of node webhook-aws-1"
    )
    admin.patch(
        kubernetes.Peer,
        LAPTOP,
        {"spec": {"allowedIPs": ["10.78.0.0/24"]}},
        patch_type=PatchType.MERGE,
    )


def test_peers_created_while_running_are_checked_against(admin: Client, webhook: Webhook) -> None:
    try:
        admin.create(peer("webhook-phone", "10.79.5.0/24"))
        # The watch delivers the new Peer shortly after; until then the probe is created.
        poll(
            lambda: denial_of(admin, peer("webhook-probe", "10.79.5.5/32")) is not None,
            "the webhook to see the new Peer",
        )
        assert denial_of(admin, peer("webhook-probe", "10.79.5.5/32")) == (
            "allowed IP 10.79.5.5/32 overlaps allowed IP 10.79.5.0/24 of peer webhook-phone"
        )
        admin.delete(kubernetes.Peer, "webhook-phone")
        poll(
            lambda: denial_of(admin, peer("webhook-probe", "10.79.5.5/32")) is None,
            "the webhook to see the Peer deleted",
        )
    finally:
        delete_quietly(admin, kubernetes.Peer, "webhook-phone")
        delete_quietly(admin, kubernetes.Peer, "webhook-probe")


def test_without_the_object_selector_every_peer_is_judged(admin: Client, webhook: Webhook) -> None:
    unlabelled = peer("webhook-unlabelled", "10.77.1.9/32", labelled=False)
    assert denial_of(admin, unlabelled) is None  # the selector leaves it alone
    current = admin.get(ValidatingWebhookConfiguration, CONFIG)
    current.webhooks = webhook_configuration(
        webhook.ca_bundle, webhook.port, selector=False
    ).webhooks
    admin.replace(current)
    try:
        poll(lambda: judged(admin, labelled=False), "the selector to be dropped")
        assert denial_of(admin, unlabelled) == (
            "allowed IP 10.77.1.9/32 overlaps the pod CIDR 10.77.1.0/24 of node webhook-gcp-1"
        )
    finally:
        current = admin.get(ValidatingWebhookConfiguration, CONFIG)
        current.webhooks = webhook_configuration(webhook.ca_bundle, webhook.port).webhooks
        admin.replace(current)
        poll(lambda: not judged(admin, labelled=False), "the selector to be restored")
        delete_quietly(admin, kubernetes.Peer, "webhook-unlabelled")


# --- direct requests --------------------------------------------------------------------------


def test_a_keepalive_wireguard_cannot_hold_is_denied_deviation(
    admin: Client, webhook: Webhook
) -> None:
    obj = peer("webhook-keepalive", "10.79.2.0/24")
    obj.spec["persistentKeepalive"] = 10**12
    assert denial_of(admin, obj) == (
        "persistent keepalive must be at most 65535 seconds (WireGuard's maximum); "
        "got 1000000000000"
    )


def test_a_huge_invalid_cidr_is_echoed_short_in_the_answer_and_the_log(
    admin: Client, webhook: Webhook
) -> None:
    # Through the API server (which takes up to 3 MiB) and straight to the webhook.
    shown = "9" * 79 + "…"
    message = f'failed to parse "{shown}" as a valid IP address: invalid CIDR address: {shown}'
    assert denial_of(admin, peer("webhook-huge-cidr", "9" * 2_000_000)) == message
    status, answer = webhook.post(review_body("webhook-huge-cidr", "9" * 5_000_000))
    assert status == 200
    assert json.loads(answer)["response"]["status"]["message"] == message
    assert len(answer) < 500
    logged = webhook.process.wait_for_log(
        lambda line: line.get("name") == "webhook-huge-cidr" and "reason" in line
    )
    assert logged["reason"] == message


def test_an_unknown_operation_shares_one_metrics_label(webhook: Webhook) -> None:
    review = json.loads(review_body("webhook-odd-operation", "10.79.3.0/24"))
    for index in range(3):
        review["request"]["operation"] = f"OPERATION-{index}-" + "X" * 1000
        status, _ = webhook.post(json.dumps(review).encode())
        assert status == 200
    text = webhook.metrics()
    assert 'admission_requests_total{operation="other",response="allowed"} 3.0' in text
    assert "OPERATION-" not in text


def test_bad_requests_are_400_with_clear_messages_and_the_process_lives_on(
    webhook: Webhook,
) -> None:
    v1 = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    cases = [
        (b"{}", "text/plain", b"received Content-Type=text/plain, expected application/json\n"),
        (
            json.dumps({**v1, "apiVersion": "admission.k8s.io/v1beta1", "request": {}}).encode(),
            "application/json",
            b"only API v1 is supported\n",
        ),
        (b"\x00garbage", "application/json", b"Request could not be decoded: the body is not JSON"),
        (json.dumps(v1).encode(), "application/json", b"the AdmissionReview has no request\n"),
        (
            json.dumps({**v1, "request": {"uid": "x", "operation": "CREATE"}}).encode(),
            "application/json",
            b"could not unmarshal extension to peer spec: request.object is empty\n",
        ),
    ]
    for body, content_type, message in cases:
        status, answer = webhook.post(body, content_type=content_type)
        assert status == 400
        assert answer.startswith(message), answer
    assert webhook.post(b"{}", path="/")[0] == 404
    assert webhook.process.popen.poll() is None
    assert "got invalid peer spec" in webhook.process.messages()


def test_metrics_show_the_webhooks_counters(admin: Client, webhook: Webhook) -> None:
    denial_of(admin, peer("webhook-bad-key", "10.79.1.0/24", key="!" * 44))
    webhook.post(b"garbage")
    text = webhook.metrics()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['admission_requests_total{operation="CREATE",response="denied"}'] >= 1
    assert values['admission_requests_total{operation="CREATE",response="allowed"}'] >= 0
    assert values['http_requests_total{handler="/validate",method="POST"}'] >= 2
    assert values["errors_total"] >= 1
    assert (
        "# HELP admission_requests_total The number of received admission reviews requests" in text
    )
    assert "process_start_time_seconds" in values
    # No prometheus_client _created series: kg webhook turns them off, as Kilo has none.
    assert "_created" not in text


# --- the process ------------------------------------------------------------------------------


def review_body(name: str, *allowed_ips: str) -> bytes:
    obj = {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": {"allowedIPs": list(allowed_ips), "publicKey": KEY},
    }
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "u", "operation": "CREATE", "object": obj},
        }
    ).encode()


@pytest.mark.usefixtures("account", "cluster_objects")  # the role, and objects to overlap
def test_until_rbac_allows_reading_the_cluster_only_kilos_checks_run(
    admin: Client, control_plane: ControlPlane, pki: dict[str, Path], tmp_path: Path
) -> None:
    name = "kilo-test-webhook-late"
    admin.create(
        from_dict(ServiceAccount, {"metadata": {"name": name, "namespace": "kube-system"}})
    )
    port, metrics_port = free_port(), free_port()
    process: Process | None = None
    try:
        token = admin.create(
            from_dict(
                ServiceAccount.Token,
                {"metadata": {"name": name, "namespace": "kube-system"}, "spec": {}},
            ),
            name,
            namespace="kube-system",
        )
        config = control_plane.write_kubeconfig(
            tmp_path / "late.kubeconfig", name, token=token.status.token
        )
        process = Process(webhook_argv(pki, port, metrics_port, f"--kubeconfig={config}"))
        refused = process.wait_for_log(lambda line: str(line.get("msg")).startswith("cannot read"))
        assert refused["level"] == "error"
        assert "forbidden" in refused["error"]
        hook = Webhook(process, port, metrics_port, pki["ca"], "")
        status, body = hook.post(review_body("late", "10.77.1.0/25"))
        assert (status, json.loads(body)["response"]["allowed"]) == (200, True)
        warning = process.wait_for_log(
            lambda line: str(line.get("msg")).startswith("peer allowed;")
        )
        assert warning["level"] == "warn"
        # Granted the rules, the webhook syncs on its next retry and checks overlaps.
        admin.create(
            from_dict(
                ClusterRoleBinding,
                {
                    "metadata": {"name": name},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": ACCOUNT,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": name, "namespace": "kube-system"}
                    ],
                },
            )
        )
        process.wait_for_log(lambda line: "cluster state is synced" in str(line.get("msg")), 60)
        status, body = hook.post(review_body("late", "10.77.1.0/25"))
        assert json.loads(body)["response"]["status"]["message"] == (
            "allowed IP 10.77.1.0/25 overlaps the pod CIDR 10.77.1.0/24 of node webhook-gcp-1"
        )
    finally:
        if process is not None:
            process.terminate()
        delete_quietly(admin, ClusterRoleBinding, name)
        delete_quietly(admin, ServiceAccount, name, namespace="kube-system")


def test_sigterm_shuts_the_webhook_down_with_status_0(pki: dict[str, Path], tmp_path: Path) -> None:
    # No kubeconfig anywhere: Kilo's checks only, as Kilo's webhook runs.
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {"HOME": str(tmp_path)}
    process = Process(webhook_argv(pki, free_port(), free_port()), env=env)
    try:
        process.wait_for_log(lambda line: line.get("msg") == "starting webhook server")
        os.killpg(process.popen.pid, signal.SIGTERM)
        assert process.popen.wait(15) == 0
    finally:
        process.terminate()
    messages = process.messages()
    assert any(m.startswith("no Kubernetes configuration: ") for m in messages)
    assert "received signal" in messages
    assert "shutting down webhook server gracefully" in messages
    assert process.stderr == b""


def test_a_missing_certificate_is_one_line_and_status_1(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    argv = webhook_argv(pki, free_port(), free_port())
    argv[4] = f"--cert-file={tmp_path / 'missing.crt'}"
    done = subprocess.run(argv, capture_output=True, check=False, timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"cannot read --cert-file {tmp_path / 'missing.crt'}: No such file or directory\n"
    )
