"""Find and load the Kubernetes client configuration the way kubectl does.

Order: an explicit ``--kubeconfig`` file; else the files named in ``KUBECONFIG`` (a
colon-separated list, merged: the first file that defines a cluster, user or context wins,
and the first ``current-context`` wins); else ``~/.kube/config``; else the in-cluster
service account. Relative paths inside a file are resolved against that file's directory
before merging.

Everything that can be checked without the network is checked here, so that ``kg``,
``kg webhook`` and ``kgctl`` stop on a bad kubeconfig before they change anything: each
file is read through :mod:`kilo.adapters.yamlinput` (size, depth and alias bounds), must
be a mapping whose ``clusters``, ``users`` and ``contexts`` are lists of mappings; the
current context, its cluster and its user must exist; the server must be an http(s) URL;
files named by the cluster and user must be readable; a credential plugin must be found;
and an API client must be buildable from the result (certificates, keys). Every failure is
a :class:`BackendError` of one line naming the file, the entry and what is wrong.

One exception, as in client-go: a current context whose cluster is not defined (or is
empty) makes the file an "empty configuration", and inside a cluster the in-cluster
service account is used instead (Kilo's k3s manifests depend on this).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import msgspec
from lightkube import Client, KubeConfig
from lightkube import ConfigError as LightkubeConfigError
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import Cluster, Context, User

from kilo.adapters import yamlinput
from kilo.errors import BackendError
from kilo.mesh.text import one_line, show

DEFAULT_KUBECONFIG = "~/.kube/config"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SECTIONS = ("clusters", "users", "contexts")
# The credential plugin protocols lightkube speaks (lightkube.config.client_adapter.ExecAuth).
EXEC_API_VERSIONS = (
    "client.authentication.k8s.io/v1alpha1",
    "client.authentication.k8s.io/v1beta1",
)

_T = TypeVar("_T")

_PATH_FIELDS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}


def _q(value: object) -> str:
    """A value from the file for a message: quoted, and cut at 80 characters."""
    return f'"{show(value, 78)}"'


def _read(path: Path) -> dict[str, Any]:
    data = yamlinput.read_single(str(path), yamlinput.KUBECONFIG)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BackendError(f"kubeconfig {path} is not a kubeconfig ({_kind(data)}, not a mapping)")
    _check_shape(data, path)
    _absolutise(data, path.parent)
    return data


def _kind(value: object) -> str:
    """What YAML calls the type of ``value``, for messages."""
    names: dict[type, str] = {
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def _check_shape(data: dict[str, Any], path: Path) -> None:
    """Lists of mappings where kubectl expects them; the current-context a string."""
    for section in SECTIONS:
        entries = data.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise BackendError(f"kubeconfig {path}: {section} is not a list")
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise BackendError(
                    f"kubeconfig {path}: {section}[{index}] is {_kind(entry)}, not a mapping"
                )
            singular = section[:-1]
            inner = entry.get(singular)
            if inner is not None and not isinstance(inner, Mapping):
                raise BackendError(
                    f"kubeconfig {path}: {section}[{index}].{singular} is {_kind(inner)}, "
                    "not a mapping"
                )
    current = data.get("current-context")
    if current is not None and not isinstance(current, str):
        raise BackendError(f"kubeconfig {path}: current-context is {_kind(current)}, not a name")


def _absolutise(data: dict[str, Any], base: Path) -> None:
    for section, fields in (("clusters", _PATH_FIELDS["cluster"]), ("users", _PATH_FIELDS["user"])):
        for entry in data.get(section) or []:
            inner = entry.get(section[:-1])
            if not isinstance(inner, dict):
                continue
            for field in fields:
                value = inner.get(field)
                if isinstance(value, str) and value and not Path(value).is_absolute():
                    inner[field] = str(base / value)


def merge(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge kubeconfig documents with kubectl's rules: the first definition wins."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
    seen: dict[str, set[str]] = {k: set() for k in merged}
    for document in documents:
        if not merged.get("current-context") and document.get("current-context"):
            merged["current-context"] = document["current-context"]
        for section in SECTIONS:
            for entry in document.get(section) or []:
                name = entry.get("name") if isinstance(entry, Mapping) else None
                if isinstance(name, str) and name not in seen[section]:
                    seen[section].add(name)
                    merged[section].append(entry)
    return merged


def kubeconfig_paths(explicit: str | None, environ: Mapping[str, str]) -> list[Path]:
    """The kubeconfig files to read, in order; empty means "use the in-cluster config"."""
    if explicit:
        return [Path(explicit).expanduser()]
    listed = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        # Like kubectl: with KUBECONFIG set, ~/.kube/config is never read instead.
        existing = [Path(p).expanduser() for p in listed if Path(p).expanduser().exists()]
        if not existing:
            raise BackendError(f"none of the files in KUBECONFIG exists: {', '.join(listed)}")
        return existing
    default = Path(DEFAULT_KUBECONFIG).expanduser()
    return [default] if default.exists() else []


def load(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    service_account: str = SERVICE_ACCOUNT,
) -> SingleConfig:
    """The client configuration to use; raises :class:`BackendError` naming what is wrong.

    The result's ``fname`` is the file that defines the current context.
    """
    env = os.environ if environ is None else environ
    paths = kubeconfig_paths(explicit, env)
    if not paths:
        try:
            return _in_cluster(service_account)
        except _NotInCluster as exc:
            raise BackendError(
                "no kubeconfig found (tried --kubeconfig, KUBECONFIG and ~/.kube/config) and "
                f"not running in a cluster ({exc})"
            ) from exc
    try:
        return _Files(paths, env).single()
    except _NoCluster as missing:
        # client-go takes a context whose cluster is not defined (or empty) for an empty
        # configuration, and then uses the in-cluster one if it can (clientcmd's
        # DeferredLoadingClientConfig). Kilo's k3s manifests rely on that: the kubeconfig
        # their init container writes names a cluster "kilo" that it never defines.
        try:
            return _in_cluster(service_account)
        except _NotInCluster:
            raise missing from None


class _NotInCluster(Exception):
    """Why the in-cluster configuration cannot be used."""


class _NoCluster(BackendError):
    """The current context's cluster is not defined, or defines nothing (client-go's
    "empty configuration")."""


def _in_cluster(service_account: str) -> SingleConfig:
    try:
        single = KubeConfig.from_service_account(service_account=service_account).get()
    except (LightkubeConfigError, KeyError) as exc:
        raise _NotInCluster(
            f"{exc.args[0]} is not set" if isinstance(exc, KeyError) else str(exc)
        ) from exc
    assert single is not None
    return single


class _Files:
    """The merged kubeconfig files, and which file each entry comes from."""

    def __init__(self, paths: list[Path], environ: Mapping[str, str]) -> None:
        self.paths = paths
        self.environ = environ
        self.documents = [(path, _read(path)) for path in paths]
        self.merged = merge([document for _, document in self.documents])
        self.source = ":".join(str(p) for p in paths)

    def origin(self, section: str, name: str) -> Path:
        for path, document in self.documents:
            for entry in document.get(section) or []:
                if entry.get("name") == name:
                    return path
        return self.paths[0]

    def entry(self, section: str, name: str) -> Mapping[str, Any] | None:
        return next((e for e in self.merged[section] if e.get("name") == name), None)

    def single(self) -> SingleConfig:
        current = self.merged.get("current-context")
        if not current:
            if not any(self.merged[section] for section in SECTIONS):
                raise BackendError(f"kubeconfig {self.source} is empty")
            raise BackendError(f"kubeconfig {self.source} sets no current-context")
        context_entry = self.entry("contexts", current)
        if context_entry is None:
            raise BackendError(
                f"kubeconfig {self.source}: the current-context {_q(current)} is not one of "
                "its contexts"
            )
        path = self.origin("contexts", current)
        where = f"kubeconfig {path}: context {_q(current)}"
        context = _convert(context_entry.get("context"), Context, where)

        cluster_entry = self.entry("clusters", context.cluster)
        cluster_where = (
            f"kubeconfig {self.origin('clusters', context.cluster)}: cluster {_q(context.cluster)}"
        )
        raw_cluster = (cluster_entry or {}).get("cluster") or {}
        user = self.user(context, where)
        if cluster_entry is None:
            raise _NoCluster(
                f"{where} names the cluster {_q(context.cluster)}, which is not defined"
            )
        if not raw_cluster:
            raise _NoCluster(f"{cluster_where} has no server")
        if not raw_cluster.get("server"):
            raise BackendError(f"{cluster_where} has no server")
        cluster = _convert(raw_cluster, Cluster, cluster_where)
        _check_files(raw_cluster, _PATH_FIELDS["cluster"], cluster_where)
        tls = bool(
            cluster.certificate_auth
            or cluster.certificate_auth_data
            or cluster.insecure
            or user.client_cert
            or user.client_cert_data
        )
        server = _server_url(cluster.server, tls=tls, where=cluster_where)
        if server != cluster.server:
            cluster = msgspec.structs.replace(cluster, server=server)
        single = SingleConfig(
            context_name=current, context=context, cluster=cluster, user=user, fname=path
        )
        _check_usable(single, f"kubeconfig {path}")
        return single

    def user(self, context: Context, where: str) -> User:
        """The context's user, checked (none: no credentials)."""
        user = User()
        if context.user:
            user_entry = self.entry("users", context.user)
            if user_entry is None:
                raise BackendError(
                    f"{where} names the user {_q(context.user)}, which is not defined"
                )
            user_where = f"kubeconfig {self.origin('users', context.user)}: user {_q(context.user)}"
            raw_user = user_entry.get("user") or {}
            user = _convert(raw_user, User, user_where)
            _check_files(raw_user, _PATH_FIELDS["user"], user_where)
            _check_plugin(user, user_where, self.environ)
        return user


def _convert(raw: object, model: type[_T], where: str) -> _T:
    try:
        return msgspec.convert(raw if raw is not None else {}, model)
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        raise BackendError(f"{where}: {one_line(str(exc))}") from exc


def _server_url(server: str, *, tls: bool, where: str) -> str:
    """``server`` as client-go reads it, or an error naming what is wrong with it.

    Like client-go's ``DefaultServerURL``, a server without a scheme (``10.0.0.1:6443``,
    ``k8s.example:6443``) gets ``https://`` when TLS is configured, else ``http://``.
    """
    problem = ""
    try:
        url = httpx2.URL(server)
    except httpx2.InvalidURL as exc:
        problem = str(exc)
    else:
        if url.scheme and url.host:
            if url.scheme not in ("http", "https"):
                problem = "the scheme must be http or https"
            elif url.port is not None and not 0 < url.port < 65536:
                problem = f"port {url.port} is not in 1..65535"
            else:
                return server
        elif "://" in server:
            problem = "it has no host"
    if not problem or "://" not in server:
        candidate = ("https://" if tls else "http://") + server
        try:
            url = httpx2.URL(candidate)
        except httpx2.InvalidURL as exc:
            problem = problem or str(exc)
        else:
            if url.host:
                return candidate
            problem = problem or "it has no host"
    raise BackendError(f"{where}: server {_q(server)} is not a valid URL ({one_line(problem)})")


def _check_files(raw: Mapping[str, Any], fields: tuple[str, ...], where: str) -> None:
    for field in fields:
        value = raw.get(field)
        if not isinstance(value, str) or not value:
            continue
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            raise BackendError(
                f"{where}: cannot read {field} {_q(value)}: {exc.strerror or exc}"
            ) from exc


def _check_plugin(user: User, where: str, environ: Mapping[str, str]) -> None:
    plugin = user.exec
    if plugin is None:
        return
    if plugin.apiVersion not in EXEC_API_VERSIONS:
        raise BackendError(
            f"{where}: the credential plugin's apiVersion {_q(plugin.apiVersion)} is not "
            f"supported (supported: {', '.join(EXEC_API_VERSIONS)})"
        )
    # lightkube runs the command with the environment plus exec.env, so its PATH applies.
    search = dict(environ)
    search.update((var.name, var.value) for var in plugin.env or [])
    if not plugin.command or shutil.which(plugin.command, path=search.get("PATH")) is None:
        hint = f" ({one_line(plugin.installHint)})" if plugin.installHint else ""
        raise BackendError(
            f"{where}: the credential plugin {_q(plugin.command)} (exec.command) is not an "
            f"executable file{hint}"
        )


def _check_usable(single: SingleConfig, where: str) -> None:
    """Build, and throw away, an API client: this reads the certificates and keys."""
    try:
        Client(single, trust_env=False).close()
    except (LightkubeConfigError, OSError, ValueError, TypeError, httpx2.InvalidURL) as exc:
        user = f" with user {_q(single.context.user)}" if single.context.user else ""
        problem = f"{where}: cannot use cluster {_q(single.context.cluster)}{user}: "
        problem += one_line(str(exc) or type(exc).__name__)
    else:
        return
    # Not chained: the traceback would keep lightkube's temporary certificate files open
    # until a garbage collection, which then warns about them.
    raise BackendError(problem)


def describe(config: SingleConfig) -> str:
    """Where ``config`` came from, for messages: its file, or the service account."""
    return f"kubeconfig {config.fname}" if config.fname else "the in-cluster service account"
