"""Find and load the Kubernetes client configuration the way kubectl does.

Order: an explicit ``--kubeconfig`` file; else the files named in ``KUBECONFIG`` (a
colon-separated list, merged: the first file that defines a cluster, user or context wins,
and the first ``current-context`` wins); else ``~/.kube/config``; else the in-cluster
service account. Relative paths inside a file are resolved against that file's directory
before merging.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from lightkube import ConfigError as LightkubeConfigError
from lightkube import KubeConfig
from lightkube.config.kubeconfig import SingleConfig

from kilo.errors import BackendError

DEFAULT_KUBECONFIG = "~/.kube/config"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

_PATH_FIELDS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BackendError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BackendError(f"kubeconfig {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BackendError(f"kubeconfig {path} is not a kubeconfig (not a mapping)")
    _absolutise(data, path.parent)
    return data


def _absolutise(data: dict[str, Any], base: Path) -> None:
    for section, fields in (("clusters", _PATH_FIELDS["cluster"]), ("users", _PATH_FIELDS["user"])):
        entries = data.get(section) or []
        if not isinstance(entries, list):
            raise BackendError(f"kubeconfig {base}: {section} is not a list")
        for entry in entries:
            inner = entry.get(section[:-1]) if isinstance(entry, Mapping) else None
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
        for section in ("clusters", "users", "contexts"):
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
    """The client configuration to use; raises :class:`BackendError` naming what is wrong."""
    env = os.environ if environ is None else environ
    paths = kubeconfig_paths(explicit, env)
    if not paths:
        try:
            config = KubeConfig.from_service_account(service_account=service_account)
        except LightkubeConfigError as exc:
            raise BackendError(
                "no kubeconfig found (tried --kubeconfig, KUBECONFIG and ~/.kube/config) and "
                f"not running in a cluster ({exc})"
            ) from exc
        return _single(config, "in-cluster service account")
    documents = [_read(path) for path in paths]
    merged = merge(documents)
    source = ":".join(str(p) for p in paths)
    try:
        config = KubeConfig.from_dict(merged, fname=paths[0])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BackendError(f"kubeconfig {source} is not a valid kubeconfig: {exc}") from exc
    return _single(config, source)


def _single(config: KubeConfig, source: str) -> SingleConfig:
    try:
        single = config.get()
    except LightkubeConfigError as exc:
        raise BackendError(f"kubeconfig {source}: {exc}") from exc
    if single is None or single.cluster is None or not single.cluster.server:
        raise BackendError(f"kubeconfig {source}: the current context names no API server")
    return single
