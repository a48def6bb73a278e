"""The webhook's shell (kilo.agent.webhook): HTTPS and metrics servers on loopback, the
request handling around the pure decision, TLS and Kubernetes configuration at start-up.

The API server, the Informers and the process (signals, exit status) are exercised in
tests/integration/test_webhook.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kilo.agent import logs, serving, webhook
from kilo.agent.settings import WebhookSettings
from kilo.agent.webhook import app as webhook_app
from kilo.agent.webhook import cluster, tls
from kilo.errors import ConfigError
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert

KEY = "GY5aT1N9dTR/nJnT1N2f4ClZWVj0jOAld0r8ysWLyjg="


def review(allowed_ips: list[str], *, key: str = KEY, operation: str = "CREATE") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "operation": operation,
                "object": {
                    "apiVersion": "kilo.squat.ai/v1alpha1",
                    "kind": "Peer",
                    "metadata": {"name": "new"},
                    "spec": {"allowedIPs": allowed_ips, "publicKey": key},
                },
            },
        }
    ).encode()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger(logs.LOGGER)
    handler = Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def adapter() -> logging.LoggerAdapter[logging.Logger]:
    return logs.get("webhook")


class View:
    def __init__(self) -> None:
        self.value = cluster.UNSYNCED

    def __call__(self) -> cluster.ClusterView:
        return self.value


SYNCED = cluster.ClusterView(
    synced=True,
    peers=MappingProxyType({}),
    pod_cidrs=MappingProxyType({"gcp-1": (ip_network("10.42.1.0/24"),)}),
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("webhook-test-ca")
    cert, key = ca.issue("webhook", server_ips=("127.0.0.1",), client=False)
    other_cert, other_key = ca.issue("other", server_ips=("127.0.0.1",), client=False)
    files = {
        "ca": pem_cert(ca.cert),
        "cert": cert,
        "key": key,
        "other_key": other_key,
        "other_cert": other_cert,
        "garbage": b"not PEM at all\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


class Served:
    def __init__(self, pki: dict[str, Path]) -> None:
        self.registry = CollectorRegistry()
        self.metrics = webhook_app.WebhookMetrics(self.registry)
        self.view = View()
        self.app = webhook_app.WebhookApp(metrics=self.metrics, view=self.view, logger=adapter())
        context = tls.load_tls(str(pki["cert"]), str(pki["key"]))
        self.https = serving.Server("127.0.0.1:0", app=self.app, tls=context, logger=adapter())
        self.http = serving.Server(
            "127.0.0.1:0", app=webhook_app.MetricsApp(self.registry), logger=adapter()
        )
        # The same app without TLS, where a test can half-close its side of the connection.
        self.plain = serving.Server("127.0.0.1:0", app=self.app, logger=adapter())
        self.client_tls = ssl.create_default_context(cafile=str(pki["ca"]))

    def connection(self) -> http.client.HTTPSConnection:
        host, port = self.https.address
        return http.client.HTTPSConnection(host, port, context=self.client_tls, timeout=10)

    def post(
        self,
        body: bytes,
        *,
        path: str = "/validate",
        method: str = "POST",
        content_type: str | None = "application/json",
    ) -> tuple[int, dict[str, str], bytes]:
        connection = self.connection()
        try:
            headers = {} if content_type is None else {"Content-Type": content_type}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def scrape(self) -> str:
        host, port = self.http.address
        connection = http.client.HTTPConnection(host, port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            assert response.status == 200
            return response.read().decode()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def module_served(pki: dict[str, Path]) -> Iterator[Served]:
    served = Served(pki)
    for server in (served.https, served.http, served.plain):
        server.start()
    try:
        yield served
    finally:
        for server in (served.https, served.http, served.plain):
            server.stop(0)


@pytest.fixture
def served(module_served: Served) -> Served:
    module_served.view.value = cluster.UNSYNCED
    return module_served


def sample(served: Served, name: str, labels: dict[str, str] | None = None) -> float:
    value = served.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


# --- /validate over HTTPS ---------------------------------------------------------------------


def test_a_valid_peer_is_allowed_over_https(served: Served) -> None:
    status, headers, body = served.post(review(["10.42.1.0/25"]))
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["response"] == {"uid": "u-1", "allowed": True}


def test_overlaps_are_checked_once_the_view_is_synced(served: Served, records: Records) -> None:
    served.post(review(["10.42.1.0/25"]))
    assert any("has not been synced yet" in m for m in records.messages(logging.WARNING))
    served.view.value = SYNCED
    records.records.clear()
    status, _, body = served.post(review(["10.42.1.0/25"]))
    assert status == 200
    assert json.loads(body)["response"]["status"]["message"] == (
        "allowed IP 10.42.1.0/25 overlaps the pod CIDR 10.42.1.0/24 of node gcp-1"
    )
    assert records.messages(logging.WARNING) == []
    assert "got invalid peer spec" in records.messages(logging.INFO)


def test_metrics_count_requests_reviews_and_errors(served: Served) -> None:
    before = {
        "http": sample(served, "http_requests_total", {"handler": "/validate", "method": "PUT"}),
        "allowed": sample(
            served, "admission_requests_total", {"operation": "UPDATE", "response": "allowed"}
        ),
        "denied": sample(
            served, "admission_requests_total", {"operation": "CREATE", "response": "denied"}
        ),
        "errors": sample(served, "errors_total"),
    }
    served.post(review(["10.9.0.0/24"], operation="UPDATE"), method="PUT")
    served.post(review(["10.9.0.0/24"], key=""), method="PUT")
    served.post(b"garbage", method="PUT")
    served.post(b"{}", method="PUT", content_type="text/plain")
    served.post(b"", path="/other", method="PUT")  # not counted: Kilo counts /validate only
    text = served.scrape()
    assert (
        sample(served, "http_requests_total", {"handler": "/validate", "method": "PUT"})
        == before["http"] + 4
    )
    assert (
        sample(served, "admission_requests_total", {"operation": "UPDATE", "response": "allowed"})
        == before["allowed"] + 1
    )
    assert (
        sample(served, "admission_requests_total", {"operation": "CREATE", "response": "denied"})
        == before["denied"] + 1
    )
    assert sample(served, "errors_total") == before["errors"] + 2
    for line in (
        "# HELP admission_requests_total The number of received admission reviews requests",
        "# HELP http_requests_total The number of received http requests",
        "# HELP errors_total The total number of errors",
        "# TYPE errors_total counter",
    ):
        assert line in text
    assert "process_cpu_seconds_total" in text
    assert "kilo_" not in text


def test_bad_requests_are_400_with_kilos_messages(served: Served) -> None:
    status, headers, body = served.post(b"{}", content_type="text/plain")
    assert (status, body) == (400, b"received Content-Type=text/plain, expected application/json\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = served.post(b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"x"}')
    assert (status, body) == (400, b"only API v1 is supported\n")
    status, _, body = served.post(b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}')
    assert (status, body) == (400, b"the AdmissionReview has no request\n")


@pytest.mark.parametrize("path", ["/", "/validate/", "/metrics", "/validatex"])
def test_other_paths_are_404(served: Served, path: str) -> None:
    status, _, body = served.post(review([]), path=path)
    assert (status, body) == (404, b"404 page not found\n")


def test_any_method_is_served_and_the_query_ignored(served: Served) -> None:
    for method in ("GET", "PATCH", "WHATEVER"):
        status, _, body = served.post(review([]), method=method, path="/validate?timeout=5s")
        assert status == 200, body


def test_keep_alive_serves_several_reviews_on_one_connection(served: Served) -> None:
    connection = served.connection()
    try:
        for _ in range(3):
            connection.request(
                "POST", "/validate", body=review([]), headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 200
            response.read()
    finally:
        connection.close()


def raw(served: Served, data: bytes, *, tls: bool = True) -> bytes:
    """Send ``data`` as is and read until the server closes the connection."""
    sock = socket.create_connection(served.https.address, timeout=10)
    stream: Any = sock
    try:
        if tls:
            stream = served.client_tls.wrap_socket(sock, server_hostname="127.0.0.1")
        stream.sendall(data)
        received = b""
        while chunk := stream.recv(65536):
            received += chunk
        return received
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        stream.close()


def test_a_chunked_body_is_read(served: Served) -> None:
    body = review([])
    head = (
        b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10]) for i in range(0, len(body), 10)
    )
    answer = raw(served, head + chunks + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'"allowed":true' in answer


@pytest.mark.parametrize(
    ("request_bytes", "status", "message"),
    [
        (
            b"POST /validate HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
            413,
            b"request body too large: 999999999 bytes; the limit is 16777216",
        ),
        (b"POST /validate HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, b"invalid Content-Length"),
        (b"POST /validate HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", 400, b"unexpected EOF"),
        (
            b"POST /validate HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
            b"malformed chunk size 'zz'",
        ),
        (
            b"POST /validate HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            b"unsupported Transfer-Encoding 'gzip'",
        ),
    ],
)
def test_a_body_that_cannot_be_read_is_an_error_and_closes_the_connection(
    served: Served, request_bytes: bytes, status: int, message: bytes
) -> None:
    before = sample(served, "errors_total")
    with socket.create_connection(served.plain.address, timeout=10) as sock:
        sock.sendall(request_bytes)
        if message == b"unexpected EOF":
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 %d " % status)
    assert b"Connection: close" in received
    assert message in received
    assert sample(served, "errors_total") == before + 1


def test_garbage_never_stops_the_server(served: Served) -> None:
    raw(served, b"\x16\x03\x01\x00\x05hello", tls=False)  # a broken TLS hello
    raw(served, b"GET / HTTP/1.1\r\n\r\n", tls=False)  # plain HTTP to the HTTPS port
    assert raw(served, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(served, b"POST /validate HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n").startswith(
        b"HTTP/1.1 431 "
    )
    assert served.post(review([]))[0] == 200


def test_a_client_stuck_in_the_handshake_does_not_block_others(served: Served) -> None:
    stuck = socket.create_connection(served.https.address, timeout=10)
    try:
        stuck.sendall(b"\x16\x03\x01")  # the start of a TLS record, then silence
        assert served.post(review([]))[0] == 200
    finally:
        stuck.close()


def test_metrics_server_serves_only_metrics(served: Served) -> None:
    host, port = served.http.address
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/validate")
        response = connection.getresponse()
        assert (response.status, response.read()) == (404, b"404 page not found\n")
        connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Encoding") == "gzip"
        response.read()
    finally:
        connection.close()


def test_stop_waits_for_requests_in_progress(pki: dict[str, Path]) -> None:
    import threading

    entered, release = threading.Event(), threading.Event()

    def slow(request: serving.Request) -> serving.Response:
        entered.set()
        release.wait(10)
        return serving.Response(200, b"done")

    server = serving.Server("127.0.0.1:0", app=slow, logger=adapter())
    server.start()
    result: list[bytes] = []

    def client() -> None:
        connection = http.client.HTTPConnection(*server.address, timeout=10)
        connection.request("GET", "/")
        result.append(connection.getresponse().read())
        connection.close()

    thread = threading.Thread(target=client)
    thread.start()
    assert entered.wait(10)
    assert server.stop(0.05) is False  # still answering
    release.set()
    thread.join(10)
    assert result == [b"done"]
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=2).close()


def test_listen_errors_name_the_address() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^failed to listen on nonsense: listen tcp: address nonsense: missing port",
    ):
        serving.Server(
            "nonsense", app=webhook_app.MetricsApp(CollectorRegistry()), logger=adapter()
        )
    taken = serving.Server(
        "127.0.0.1:0", app=webhook_app.MetricsApp(CollectorRegistry()), logger=adapter()
    )
    try:
        host, port = taken.address
        with pytest.raises(ConfigError, match=rf"^failed to listen on {host}:{port}: "):
            serving.Server(
                f"{host}:{port}", app=webhook_app.MetricsApp(CollectorRegistry()), logger=adapter()
            )
    finally:
        taken.stop(0)


# --- start-up -----------------------------------------------------------------------------


def test_tls_problems_name_the_flag_and_the_file(pki: dict[str, Path], tmp_path: Path) -> None:
    cert, key = str(pki["cert"]), str(pki["key"])
    cases = [
        (("", key), "--cert-file is empty: the webhook serves HTTPS only"),
        ((cert, ""), "--key-file is empty: the webhook serves HTTPS only"),
        (
            (str(tmp_path / "nope.crt"), key),
            f"cannot read --cert-file {tmp_path / 'nope.crt'}: No such file or directory",
        ),
        ((str(pki["garbage"]), key), f"--cert-file {pki['garbage']} holds no PEM certificate"),
        ((cert, str(pki["garbage"])), f"--key-file {pki['garbage']} holds no unencrypted PEM"),
        ((cert, str(pki["other_key"])), f"the certificate in --cert-file {cert} does not match"),
    ]
    for (cert_file, key_file), message in cases:
        with pytest.raises(ConfigError) as caught:
            tls.load_tls(cert_file, key_file)
        assert str(caught.value).startswith(message)
        assert "\n" not in str(caught.value)


def test_kubernetes_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: Records
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    # Nothing to be found: Kilo's checks only, with a warning.
    assert webhook.kube_config(WebhookSettings(), adapter()) is None
    assert any("Kilo's checks only" in m for m in records.messages(logging.WARNING))
    # An explicit kubeconfig that cannot be used is an error, as for kg.
    with pytest.raises(ConfigError, match=r"^failed to create Kubernetes config: "):
        webhook.kube_config(WebhookSettings(kubeconfig=str(tmp_path / "nope")), adapter())
    with pytest.raises(ConfigError, match=r"^failed to create Kubernetes config: "):
        webhook.kube_config(WebhookSettings(master="https://127.0.0.1:1"), adapter())
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://a:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    loaded = webhook.kube_config(
        WebhookSettings(kubeconfig=str(config), master="https://b:6443"), adapter()
    )
    assert loaded is not None
    assert loaded.cluster.server == "https://b:6443"


def test_main_fails_with_one_line_for_a_bad_certificate(pki: dict[str, Path]) -> None:
    import io

    out, err = io.StringIO(), io.StringIO()
    settings = WebhookSettings(cert_file=str(pki["cert"]), key_file=str(pki["other_key"]))
    assert webhook.main(settings, out=out, err=err) == 1
    assert err.getvalue().startswith("the certificate in --cert-file ")
    assert err.getvalue().count("\n") == 1


# --- the cluster view -----------------------------------------------------------------------


def node_object(name: str, *pod_cidrs: str, last_seen: str = "1") -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if pod_cidrs:
        spec = {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}
    annotations = {"kilo.squat.ai/last-seen": last_seen}
    return {"metadata": {"name": name, "annotations": annotations}, "spec": spec}


def peer_object(name: str, *allowed_ips: str, key: str = KEY) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"allowedIPs": list(allowed_ips), "publicKey": key}}


def test_the_view_is_synced_after_both_lists_and_changes_only_with_cidrs(
    records: Records,
) -> None:
    config: Any = None  # never used: the watcher's thread is not started
    watcher = cluster.ClusterWatcher(config, logger=adapter())
    assert watcher.current() is cluster.UNSYNCED
    watcher.listed("nodes", {"a": node_object("a", "10.42.1.0/24"), "b": node_object("b")})
    assert watcher.current().synced is False
    assert dict(watcher.current().pod_cidrs) == {"a": (ip_network("10.42.1.0/24"),)}
    watcher.listed(
        "peers",
        {"laptop": peer_object("laptop", "10.5.0.0/24"), "broken": peer_object("broken", key="")},
    )
    view = watcher.current()
    assert view.synced is True
    assert set(view.peers) == {"laptop"}  # an invalid Peer is not in the mesh: no conflicts
    assert any("synced" in m for m in records.messages(logging.INFO))
    # A node's last-seen patch publishes nothing new; a pod CIDR change does.
    watcher.apply_event("nodes", "MODIFIED", "a", node_object("a", "10.42.1.0/24", last_seen="2"))
    watcher.apply_event("peers", "MODIFIED", "laptop", peer_object("laptop", "10.5.0.0/24"))
    assert watcher.current() is view
    watcher.apply_event("nodes", "ADDED", "c", node_object("c", "10.42.3.0/24", "fd00:3::/64"))
    assert watcher.current().pod_cidrs["c"] == (
        ip_network("10.42.3.0/24"),
        ip_network("fd00:3::/64"),
    )
    assert view.pod_cidrs.get("c") is None  # a published view never changes
    watcher.apply_event("nodes", "DELETED", "a", node_object("a", "10.42.1.0/24"))
    watcher.apply_event("peers", "MODIFIED", "laptop", peer_object("laptop", key=""))
    assert set(watcher.current().pod_cidrs) == {"c"}
    assert dict(watcher.current().peers) == {}
    watcher.apply_event("peers", "MODIFIED", "broken", peer_object("broken", "10.6.0.0/24"))
    assert [str(c) for c in watcher.current().peers["broken"].allowed_ips] == ["10.6.0.0/24"]
    # A second "first list" (after a retry) does not start over.
    watcher.listed("nodes", {})
    assert set(watcher.current().pod_cidrs) == {"c"}
