"""cert-gen: the Peer validation webhook's TLS Secret and the CA the API server trusts for it.

Runs once in the cert-gen Job (the Kilo image, uid 1000) as the kilo-peer-validation service
account, which may only create Secrets and read the one named here in the webhook's namespace,
and read and update the one ValidatingWebhookConfiguration named here. Idempotent: an existing
Secret is kept (delete it and rerun the Job to rotate), and the CA in its ca.crt is written
into every webhook of the configuration. Settings come from the Job's environment.
"""

import base64
import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.core_v1 import Secret

from kilo.adapters import kubeconfig

NAMESPACE = os.environ["KILO_WEBHOOK_NAMESPACE"]
SERVICE = os.environ["KILO_WEBHOOK_SERVICE"]
SECRET = os.environ["KILO_WEBHOOK_SECRET"]
CONFIGURATION = os.environ["KILO_WEBHOOK_CONFIGURATION"]
# No rotation happens by itself, so the certificates outlive any cluster.
VALIDITY = datetime.timedelta(days=3650)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def generate() -> dict[str, bytes]:
    """A CA and a serving certificate for the Service's DNS names, as Secret data."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{SERVICE}-ca"))
        .issuer_name(_name(f"{SERVICE}-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    # The API server calls the webhook as <service>.<namespace>.svc.
    names = [SERVICE, f"{SERVICE}.{NAMESPACE}", f"{SERVICE}.{NAMESPACE}.svc"]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[-1]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {"ca.crt": _pem(ca), "tls.crt": _pem(cert), "tls.key": key_pem}


def ensure_secret(client: Client) -> str:
    """The base64 CA of the webhook's Secret, creating the Secret when it is missing."""
    try:
        secret = client.get(Secret, SECRET, namespace=NAMESPACE)
    except ApiError as exc:
        if exc.status.code != 404:
            raise
        data = {k: base64.b64encode(v).decode("ascii") for k, v in generate().items()}
        secret = Secret(
            metadata=ObjectMeta(name=SECRET, namespace=NAMESPACE),
            type="kubernetes.io/tls",
            data=data,
        )
        try:
            client.create(secret)
            print(f"cert-gen: created Secret {NAMESPACE}/{SECRET}", flush=True)
        except ApiError as create_exc:
            if create_exc.status.code != 409:  # another run created it meanwhile
                raise
            secret = client.get(Secret, SECRET, namespace=NAMESPACE)
    data = secret.data or {}
    ca = data.get("ca.crt") or data.get("tls.crt")
    if not ca:
        raise SystemExit(f"cert-gen: Secret {NAMESPACE}/{SECRET} has neither ca.crt nor tls.crt")
    return ca


def point_webhooks_at(client: Client, ca: str) -> None:
    configuration = client.get(ValidatingWebhookConfiguration, CONFIGURATION)
    changed = False
    for webhook in configuration.webhooks or []:
        if webhook.clientConfig.caBundle != ca:
            webhook.clientConfig.caBundle = ca
            changed = True
    if changed:
        client.replace(configuration)
        print(f"cert-gen: CA written into ValidatingWebhookConfiguration {CONFIGURATION}")
    else:
        print(f"cert-gen: ValidatingWebhookConfiguration {CONFIGURATION} already trusts the CA")


def main() -> None:
    with Client(kubeconfig.load(), trust_env=False) as client:
        point_webhooks_at(client, ensure_secret(client))


if __name__ == "__main__":
    main()
