"""A real control plane: etcd and kube-apiserver on loopback, with TLS and RBAC.

The binaries come from ``go/build.sh`` next to this module (built once from the Go module
proxy into a cache outside the clone: ``~/.cache/kilo-controlplane/<hash of the pinned
go.mod and go.sum>``). By default everything listens on 127.0.0.1 only; every file lives in
one directory (a temporary one unless ``workdir`` is given); ``stop()`` ends both
processes, also after a failed start. The testbed runs both inside a network namespace
(``netns``) with the API server bound to that namespace's addresses: etcd then stays on the
namespace's loopback, where ``compact_etcd`` (which talks to it from the calling process)
cannot reach it.

:class:`AttachedControlPlane` is the guest's view of a control plane that runs elsewhere
(the host of a virtual machine, :mod:`kilo.sandbox.vm`): the same kubeconfigs and
readiness check, from the CA and the :class:`Attachment` the host wrote into a directory.

Why one module of about 600 lines: the certificates, the kubeconfigs, etcd and the API
server are started, checked and stopped as one thing, and the attached view reads exactly
what the host side writes.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kilo.errors import SandboxError

# Package data: the script and the pinned go.mod/go.sum it builds from.
BUILD_SCRIPT = Path(__file__).resolve().parent / "go" / "build.sh"
SERVICE_CIDR = "10.96.0.0/12"


class ControlPlaneError(SandboxError):
    """The control plane could not be built, started or reached."""


def _build(mode: str, on_progress: Callable[[str], None] | None) -> Path:
    """Run ``build.sh mode``; its last stdout line is the result. Its step lines (stderr)
    go to ``on_progress`` when given, else straight to our stderr."""
    argv = ["bash", str(BUILD_SCRIPT), mode]
    if on_progress is None:
        try:
            result = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True)
        except subprocess.CalledProcessError as exc:
            raise ControlPlaneError(f"{BUILD_SCRIPT} {mode} exited with {exc.returncode}") from exc
        return Path(result.stdout.strip().splitlines()[-1])
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as build:
        assert build.stdout is not None and build.stderr is not None
        # build.sh writes its one result line to stdout at the very end, so reading stderr
        # to the end first cannot block on a full stdout pipe.
        for line in build.stderr:
            tail.append(line.rstrip("\n"))
            on_progress(line.rstrip("\n"))
        out = build.stdout.read()
        code = build.wait()
    if code != 0 or not out.strip():
        raise ControlPlaneError(
            f"{BUILD_SCRIPT} {mode} exited with {code}: " + " / ".join(tail)[-2000:]
        )
    return Path(out.strip().splitlines()[-1])


def build_binaries(*, on_progress: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse) etcd and kube-apiserver; return the directory holding ``bin/``."""
    return _build("controlplane", on_progress)


def cached_binaries() -> Path | None:
    """The directory of already built binaries, or None if a build is needed (needs Go)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "check"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return Path(result.stdout.strip().splitlines()[-1])


def build_helm(*, on_progress: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse) helm, pinned in go/helm; return the binary's path."""
    return _build("helm", on_progress)


def build_prometheus(*, on_progress: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse) Prometheus, pinned in go/prometheus; return the binary's path."""
    return _build("prometheus", on_progress)


# Ports handed out by this process: nothing holds a port between ``free_port`` and the
# server binding it, so the same one must not be handed out twice.
_HANDED_OUT: set[int] = set()
_LOWEST_PORT = 10000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback TCP port nothing listens on, for a server started a moment later.

    Taken below the kernel's ephemeral range: a port the kernel hands out (bind to 0)
    is the kind every outgoing connection is given too, so one of the many connections a
    test suite opens could take it before etcd binds it (CI saw "bind: address already
    in use"). Below the range only an explicit bind competes for it."""
    low, _ = _ephemeral_range()
    candidates = list(range(_LOWEST_PORT, low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- PKI ---------------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server_names: tuple[str, ...] = (),
        server_ips: tuple[str, ...] = (),
        client: bool = True,
    ) -> tuple[bytes, bytes]:
        """A certificate and key (PEM) signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        if server_names or server_ips:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if server_names or server_ips:
            alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            alt_names += [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        return pem_cert(builder.sign(self.key, hashes.SHA256())), _pem_key(key)


# --- the control plane -------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver in one directory; use as a context manager."""

    def __init__(
        self,
        binaries: Path,
        *,
        workdir: Path | None = None,
        netns: str | None = None,
        bind_address: str = "127.0.0.1",
        advertise_address: str | None = None,
        server_host: str = "127.0.0.1",
        extra_sans: tuple[str, ...] = (),
        service_cidr: str = SERVICE_CIDR,
    ) -> None:
        """``server_host`` is the address this process uses to reach the API server (the
        ``server`` of ``admin_kubeconfig``); ``extra_sans`` are further IP addresses or DNS
        names the serving certificate is valid for; with ``netns`` both processes run in
        that network namespace; ``service_cidr`` is the Services' range (a second cluster
        beside the first needs one of its own)."""
        self.binaries = binaries
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="kilo-controlplane-"))
        self.netns = netns
        self.bind_address = bind_address
        self.advertise_address = advertise_address or bind_address
        self.extra_sans = extra_sans
        self.service_cidr = service_cidr
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.server = f"https://{server_host}:{self.port}"
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self.ca = CertificateAuthority.create("kilo-test-ca")
        self.pki = self.workdir / "pki"
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"

    # --- files ---

    def _write(self, name: str, data: bytes, mode: int = 0o600) -> Path:
        path = self.pki / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def _prepare(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        self._write("ca.crt", pem_cert(self.ca.cert), 0o644)
        names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        # The kubernetes Service's address: the first of the Services' range.
        ips = ["127.0.0.1", str(ipaddress.ip_network(self.service_cidr)[1])]
        for san in (self.advertise_address, *self.extra_sans):
            try:
                ipaddress.ip_address(san)
            except ValueError:
                names.append(san)
            else:
                ips.append(san)
        cert, key = self.ca.issue(
            "kube-apiserver",
            server_names=tuple(dict.fromkeys(names)),
            server_ips=tuple(dict.fromkeys(ips)),
            client=False,
        )
        self._write("apiserver.crt", cert, 0o644)
        self._write("apiserver.key", key)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._write("sa.key", _pem_key(sa_key))
        self._write(
            "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            0o644,
        )
        self.write_kubeconfig(self.admin_kubeconfig, "admin", organizations=("system:masters",))

    def write_kubeconfig(
        self,
        path: Path,
        user: str,
        *,
        organizations: tuple[str, ...] = (),
        token: str | None = None,
        server: str | None = None,
        namespace: str | None = None,
    ) -> Path:
        """A kubeconfig for ``user`` (client certificate, or a bearer token); ``server``
        overrides the URL, for clients that reach the API server by another address;
        ``namespace`` is the context's (a pod's service account namespace, for kg)."""
        credentials: dict[str, str]
        if token is not None:
            credentials = {"token": token}
        else:
            cert, key = self.ca.issue(user, organizations=organizations)
            credentials = {
                "client-certificate-data": _b64(cert),
                "client-key-data": _b64(key),
            }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kilo-test",
                    "cluster": {
                        "server": server or self.server,
                        "certificate-authority-data": _b64(pem_cert(self.ca.cert)),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [
                {
                    "name": "kilo-test",
                    "context": {
                        "cluster": "kilo-test",
                        "user": user,
                        **({"namespace": namespace} if namespace else {}),
                    },
                }
            ],
            "current-context": "kilo-test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # --- processes ---

    def start(self) -> ControlPlane:
        try:
            self._prepare()
            self._start_etcd()
            self._start_apiserver()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _netns_prefix(self) -> list[str]:
        # ``ip netns exec`` execs the command, so the process (and its group) stays ours.
        return [] if self.netns is None else ["ip", "netns", "exec", self.netns]

    def _log(self, name: str) -> int:
        return os.open(self.workdir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _start_etcd(self) -> None:
        bin_etcd = self.binaries / "bin" / "etcd"
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        log = self._log("etcd")
        self.etcd = subprocess.Popen(
            [
                *self._netns_prefix(),
                str(bin_etcd),
                "--name=kilo-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=kilo-test={peer}",
                "--log-level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        os.close(log)

    def _start_apiserver(self) -> None:
        bin_apiserver = self.binaries / "bin" / "kube-apiserver"
        pki = self.pki
        log = self._log("kube-apiserver")
        self.apiserver = subprocess.Popen(
            [
                *self._netns_prefix(),
                str(bin_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--bind-address={self.bind_address}",
                f"--advertise-address={self.advertise_address}",
                # The kubernetes Service endpoint may not be a loopback address.
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.port}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--authorization-mode=RBAC",
                "--enable-priority-and-fairness=false",
                "--watch-cache=true",
                "--v=1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        os.close(log)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        cert, key = self.ca.issue("readiness-probe", organizations=("system:masters",))
        cert_path = self._write("probe.crt", cert, 0o644)
        key_path = self._write("probe.key", key)
        context.load_cert_chain(str(cert_path), str(key_path))
        return context

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/readyz`` until the apiserver (and its RBAC bootstrap) is ready."""
        context = self.ssl_context()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, process in (("etcd", self.etcd), ("kube-apiserver", self.apiserver)):
                if process is not None and process.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {process.returncode}:\n{self.tail(name)}"
                    )
            try:
                with urllib.request.urlopen(
                    f"{self.server}/readyz", context=context, timeout=5
                ) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                exc.close()  # an HTTP error keeps its response (and socket) open
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {timeout} s ({last}):\n{self.tail('kube-apiserver')}"
        )

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now, so that old resourceVersions are gone."""
        url = f"http://127.0.0.1:{self.etcd_port}/v3/kv/range"
        request = urllib.request.Request(url, data=b'{"key": "AA=="}', method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            revision = int(json.load(r)["header"]["revision"])
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.etcd_port}/v3/kv/compaction",
            data=json.dumps({"revision": revision, "physical": True}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30):
            pass
        return revision

    def restart_apiserver(self) -> None:
        _terminate(self.apiserver)
        self._start_apiserver()
        self.wait_ready()

    def stop(self) -> None:
        _terminate(self.apiserver)
        _terminate(self.etcd)
        self.apiserver = self.etcd = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class Attachment:
    """How a guest reaches a control plane that runs on its host: the API server listens
    on ``address:port`` at the far end of the link ``link`` (the guest's NIC ``nic`` has
    ``guest_ip`` on it); ``host_link`` is the /30 the guest's testbed uses for its own host
    link, which the API server's certificate names."""

    port: int
    address: str
    guest_ip: str
    link: str
    nic: str
    host_link: str

    FILE = "attachment.json"

    def dumps(self) -> str:
        return json.dumps(
            {
                "port": self.port,
                "address": self.address,
                "guest_ip": self.guest_ip,
                "link": self.link,
                "nic": self.nic,
                "host_link": self.host_link,
            }
        )

    @classmethod
    def load(cls, directory: Path) -> Attachment:
        path = directory / cls.FILE
        try:
            data = json.loads(path.read_text())
            return cls(
                port=int(data["port"]),
                address=str(data["address"]),
                guest_ip=str(data["guest_ip"]),
                link=str(data["link"]),
                nic=str(data["nic"]),
                host_link=str(data["host_link"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ControlPlaneError(f"{path}: not a control plane attachment: {exc}") from exc


def write_attachment(plane: ControlPlane, directory: Path, attachment: Attachment) -> None:
    """What :class:`AttachedControlPlane` needs, in ``directory`` (mode 0700): the
    attachment, the CA's certificate and key (a throw-away CA for one run)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    (directory / Attachment.FILE).write_text(attachment.dumps())
    (directory / "ca.crt").write_bytes(pem_cert(plane.ca.cert))
    key = directory / "ca.key"
    key.write_bytes(_pem_key(plane.ca.key))
    key.chmod(0o600)


class AttachedControlPlane(ControlPlane):
    """A control plane started elsewhere, reached at ``https://<server_host>:<port>``:
    ``start`` only writes the admin kubeconfig and waits until the API server answers;
    ``stop`` leaves it running (its owner stops it)."""

    def __init__(self, directory: Path, *, workdir: Path, server_host: str) -> None:
        self.attachment = Attachment.load(directory)
        try:
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            key = serialization.load_pem_private_key(
                (directory / "ca.key").read_bytes(), password=None
            )
        except (OSError, ValueError) as exc:
            raise ControlPlaneError(f"{directory}: cannot load the CA: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ControlPlaneError(f"{directory}/ca.key: not an EC key")
        self.binaries = directory
        self._own_workdir = False
        self.workdir = workdir
        self.netns = None
        self.bind_address = self.advertise_address = self.attachment.address
        self.extra_sans = ()
        self.port = self.attachment.port
        self.etcd_port = self.etcd_peer_port = 0
        self.server = f"https://{server_host}:{self.port}"
        self.etcd = self.apiserver = None
        self.ca = CertificateAuthority(key, cert)
        self.pki = self.workdir / "pki"
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"

    def start(self) -> AttachedControlPlane:
        self.pki.mkdir(parents=True, exist_ok=True)
        self._write("ca.crt", pem_cert(self.ca.cert), 0o644)
        self.write_kubeconfig(self.admin_kubeconfig, "admin", organizations=("system:masters",))
        self.wait_ready()
        return self

    def restart_apiserver(self) -> None:
        raise ControlPlaneError("an attached control plane is restarted by its owner")

    def compact_etcd(self) -> int:
        raise ControlPlaneError("an attached control plane's etcd is not reachable")

    def stop(self) -> None:
        pass


class Starting:
    """``plane.start()`` in a daemon thread, so that the caller builds the rest of its
    network while etcd and the API server come up (the testbed, the VM's host side).
    :meth:`wait` joins the thread and returns the error the start ended with, if any."""

    def __init__(self, plane: ControlPlane, *, name: str) -> None:
        self.plane = plane
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name=name, daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.plane.start()
        except BaseException as exc:
            self.error = exc

    def wait(self, timeout: float | None = None) -> BaseException | None:
        """The start's error once it has ended (None: ready, or still under way after
        ``timeout`` seconds)."""
        self._thread.join(timeout)
        return self.error


def _terminate(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
