"""``kg webhook`` from the image, serving in a network namespace of the test's own.

The container gets the TLS Secret at /run/secrets/tls (as the manifests mount it), listens
where its arguments say, and is asked by a client in the same namespace to review one valid
and one invalid Peer; then SIGTERM must end it with status 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from kilo.sandbox import podman
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert
from tests import image_harness

KEY = "E9XeEuW/aDE0+Wqn2QXOKstuNYQPPr/itKha2hhOETE="
CLIENT = """
import http.client, json, ssl, sys
ca, port, body = sys.argv[1], int(sys.argv[2]), sys.argv[3]
connection = http.client.HTTPSConnection(
    "127.0.0.1", port, context=ssl.create_default_context(cafile=ca), timeout=10
)
connection.request("POST", "/validate", body=body, headers={"Content-Type": "application/json"})
response = connection.getresponse()
print(json.dumps({"status": response.status, "body": json.loads(response.read())}))
"""


def review(public_key: str) -> str:
    peer = {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": "laptop"},
        "spec": {"allowedIPs": ["10.5.0.1/32"], "publicKey": public_key},
    }
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": "CREATE", "object": peer},
        }
    )


def ask(netns: str, ca: Path, port: int, body: str) -> dict[str, Any]:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT, str(ca), str(port), body],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert isinstance(answer, dict)
    return answer


def listen_port(args: tuple[str, ...]) -> int:
    listen = next(a for a in args if a.startswith("--listen="))
    return int(listen.rsplit(":", 1)[1])


def serves(image: str, args: tuple[str, ...], security: podman.Security, tmp_path: Path) -> None:
    authority = CertificateAuthority.create("kilo-image-test")
    cert, key = authority.issue("peer-validation", server_ips=("127.0.0.1",), client=False)
    secret = tmp_path / "tls"  # a Secret volume: world-readable files
    secret.mkdir(mode=0o755)
    secret.chmod(0o755)
    for file, data in (("tls.crt", cert), ("tls.key", key)):
        (secret / file).write_bytes(data)
        (secret / file).chmod(0o644)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(pem_cert(authority.cert))
    with image_harness.network_namespace() as netns:
        container = podman.Container(
            image=image,
            name=image_harness.name(),
            args=args,
            mounts=(podman.Mount(source=str(secret), target="/run/secrets/tls", read_only=True),),
            network=f"ns:/run/netns/{netns}",
            security=security,
        )
        with image_harness.running(container) as webhook:
            webhook.wait_for_line(lambda line: '"starting webhook server"' in line)
            port = listen_port(args)
            allowed = ask(netns, ca, port, review(KEY))
            denied = ask(netns, ca, port, review("not a key"))
            assert webhook.stop() == 0, webhook.output
    assert allowed["status"] == 200
    assert allowed["body"]["response"]["allowed"] is True, allowed
    assert denied["body"]["response"]["allowed"] is False, denied
    assert '"shutting down webhook server gracefully"' in webhook.output
