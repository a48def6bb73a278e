"""The Kubernetes backend: Nodes and Kilo Peers through the API server (lightkube).

Thin: objects leave this module as plain dicts, exactly as the API returns them, and are
translated by the pure core. Every failure becomes a :class:`~kilo.errors.BackendError`
whose message names the server, or the verb and resource that RBAC denied.

* :class:`ClusterReader` lists once (``kgctl``: Nodes, Peers, kg's Leases);
  :class:`PeerStore` gets, creates and deletes one Peer (``kgctl connect``).
* the ``Informer``, which keeps a local cache current with list + watch (resuming after a
  dropped connection, and on ``410 Gone`` listing again so that no deletion is lost),
  lives in :mod:`kilo.adapters.informer`; what it and this module's readers share (the
  ``Peer`` resource, ``ReadNode``, ``RESOURCES``, ``as_dict``) in
  :mod:`kilo.adapters.resources`. Both are re-exported here: ``kubernetes.Informer``
  and the rest keep working.
* failures are described by :mod:`kilo.adapters.apierrors`; events are the core's
  :class:`~kilo.mesh.events.Event` values, which the loops consume without this module.
* :func:`patch_node_annotations` writes only the given keys (a JSON merge patch), and
  :func:`remove_node_annotations` deletes only the keys that are present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx2
from lightkube import ApiError, Client
from lightkube import ConfigError as LightkubeConfigError
from lightkube.config.kubeconfig import SingleConfig
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from kilo.adapters.apierrors import REQUEST_ERRORS, describe_error, describe_failure
from kilo.adapters.informer import Informer, watch_decoders
from kilo.adapters.resources import (
    PEER_GROUP,
    PEER_VERSION,
    RESOURCES,
    Peer,
    ReadNode,
    _to_dict,
    as_dict,
)
from kilo.errors import BackendError

# With this module's own names, those of the informer and the resources that kilo, its
# tests and benchmarks import from here (re-exported).
__all__ = [
    "RESOURCES",
    "ClusterReader",
    "Informer",
    "Peer",
    "PeerStore",
    "ReadNode",
    "_to_dict",
    "as_dict",
    "patch_node_annotations",
    "remove_node_annotations",
    "watch_decoders",
]


class ClusterReader:
    """Lists Nodes and Peers once, for ``kgctl``."""

    def __init__(self, config: SingleConfig, *, timeout: float = 10.0) -> None:
        self.config = config
        self.server = config.cluster.server
        try:
            self._client = Client(config, timeout=httpx2.Timeout(timeout), trust_env=False)
        except (LightkubeConfigError, OSError, ValueError) as exc:
            raise BackendError(f"cannot use the credentials for {self.server}: {exc}") from exc

    def _list(self, resource: str) -> list[dict[str, Any]]:
        res = RESOURCES[resource]
        kind, api_version = (
            ("Node", "v1") if resource == "nodes" else ("Peer", f"{PEER_GROUP}/{PEER_VERSION}")
        )
        try:
            return [as_dict(o, kind=kind, api_version=api_version) for o in self._client.list(res)]
        except REQUEST_ERRORS as exc:
            raise BackendError(
                describe_failure(exc, self.config, verb="list", resource=resource)
            ) from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ClusterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def nodes(self) -> list[dict[str, Any]]:
        return self._list("nodes")

    def peers(self) -> list[dict[str, Any]]:
        return self._list("peers")

    def leases(self, namespace: str) -> list[dict[str, Any]]:
        """The Leases of ``namespace`` (kg --leader-election=lease's, among others)."""
        try:
            return [
                as_dict(o, kind="Lease", api_version="coordination.k8s.io/v1")
                for o in self._client.list(Lease, namespace=namespace)
            ]
        except REQUEST_ERRORS as exc:
            raise BackendError(
                describe_failure(exc, self.config, verb="list", resource="leases")
                + f" (namespace {namespace!r})"
            ) from exc


class PeerStore:
    """Get, create, apply and delete single Kilo Peers (``kgctl connect``, ``kgctl
    multicluster``)."""

    def __init__(self, config: SingleConfig, *, timeout: float = 10.0) -> None:
        self.config = config
        self.server = str(config.cluster.server)
        try:
            self._client = Client(config, timeout=httpx2.Timeout(timeout), trust_env=False)
        except (LightkubeConfigError, OSError, ValueError) as exc:
            raise BackendError(f"cannot use the credentials for {self.server}: {exc}") from exc

    def _fail(self, exc: BaseException, verb: str, name: str) -> BackendError:
        return BackendError(
            describe_failure(exc, self.config, verb=verb, resource="peers") + f" (Peer {name!r})"
        )

    def get(self, name: str) -> dict[str, Any] | None:
        """The Peer ``name``, or ``None`` when there is none (the CRD missing is an error)."""
        try:
            obj = self._client.get(Peer, name)
        except ApiError as exc:
            if _object_not_found(exc, name):
                return None
            raise self._fail(exc, "get", name) from exc
        except REQUEST_ERRORS as exc:
            raise self._fail(exc, "get", name) from exc
        return as_dict(obj, kind="Peer", api_version=f"{PEER_GROUP}/{PEER_VERSION}")

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create the Peer ``obj``; ``None`` when one of that name exists already."""
        name = str(obj.get("metadata", {}).get("name", ""))
        try:
            created = self._client.create(Peer.from_dict(dict(obj)))
        except ApiError as exc:
            if exc.status.code == 409:
                return None
            raise self._fail(exc, "create", name) from exc
        except REQUEST_ERRORS as exc:
            raise self._fail(exc, "create", name) from exc
        return as_dict(created, kind="Peer", api_version=f"{PEER_GROUP}/{PEER_VERSION}")

    def apply(self, obj: Mapping[str, Any], *, field_manager: str) -> None:
        """Create or replace the Peer ``obj`` by server-side apply (``kubectl apply
        --server-side``), owning every field it sets as ``field_manager``."""
        name = str(obj.get("metadata", {}).get("name", ""))
        try:
            self._client.apply(Peer.from_dict(dict(obj)), field_manager=field_manager, force=True)
        except REQUEST_ERRORS as exc:
            raise self._fail(exc, "apply", name) from exc

    def delete(self, name: str) -> bool:
        """Delete the Peer ``name``; ``False`` when it was already gone."""
        try:
            self._client.delete(Peer, name)
        except ApiError as exc:
            if _object_not_found(exc, name):
                return False
            raise self._fail(exc, "delete", name) from exc
        except REQUEST_ERRORS as exc:
            raise self._fail(exc, "delete", name) from exc
        return True

    def close(self) -> None:
        self._client.close()


def _object_not_found(exc: ApiError, name: str) -> bool:
    """A 404 about the object itself, not about its resource type (a missing CRD)."""
    details = exc.status.details
    return exc.status.code == 404 and details is not None and details.name == name


def patch_node_annotations(
    client: Client, name: str, annotations: Mapping[str, str | None]
) -> None:
    """Set (or, with ``None``, remove) exactly these annotations with one merge patch."""
    if not annotations:
        return
    body = {"metadata": {"annotations": dict(annotations)}}
    try:
        client.patch(Node, name, body, patch_type=PatchType.MERGE)
    except (ApiError, httpx2.HTTPError, OSError) as exc:
        raise BackendError(
            describe_error(exc, str(client.config.cluster.server), verb="patch", resource="nodes")
            + f" (node {name!r})"
        ) from exc


def remove_node_annotations(client: Client, name: str, keys: Iterable[str]) -> None:
    """Remove those of ``keys`` that are present; absent keys are not an error.

    A merge patch with ``null`` values deletes what is there and ignores what is not, unlike
    Kilo's JSON patch of ``remove`` operations, which fails as a whole if one key is missing.
    """
    patch_node_annotations(client, name, dict.fromkeys(keys))
