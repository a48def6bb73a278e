"""The Kubernetes resources Kilo reads, and the plain dicts their objects become.

One home for what both halves of the Kubernetes backend share: the one-shot reads and
writes (:mod:`kilo.adapters.kubernetes`) and the watch-backed cache
(:mod:`kilo.adapters.informer`). ``Peer`` is Kilo's CRD; :class:`ReadNode` a Node decoded
without its status; :data:`RESOURCES` and :data:`NAMESPACED` name what is listed and
watched; :func:`as_dict` is an object as the API returns it, less its status and
managedFields. :mod:`kilo.adapters.kubernetes` re-exports those imported from it.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec
from lightkube.core.resource import ApiInfo as ResourceApiInfo
from lightkube.core.resource import GlobalResource, NamespacedResource, ResourceDef
from lightkube.generic_resource import create_global_resource
from lightkube.resources.coordination_v1 import Lease

PEER_GROUP = "kilo.squat.ai"
PEER_VERSION = "v1alpha1"
Peer = create_global_resource(PEER_GROUP, PEER_VERSION, "Peer", "peers")


class _NodeMetadata(msgspec.Struct, omit_defaults=True):
    """A Node's ``metadata`` without ``managedFields`` (server-side-apply bookkeeping,
    never read): msgspec skips the fields a struct does not declare without building
    them. The fields Kilo reads are typed as lightkube's ``ObjectMeta`` types them."""

    name: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    annotations: dict[str, Any] | None = None
    labels: dict[str, Any] | None = None
    namespace: str | None = None
    generateName: Any = None
    generation: Any = None
    creationTimestamp: Any = None
    deletionTimestamp: Any = None
    deletionGracePeriodSeconds: Any = None
    finalizers: Any = None
    ownerReferences: Any = None
    selfLink: Any = None


class ReadNode(GlobalResource, msgspec.Struct, omit_defaults=True):
    """core/v1 Nodes as the cache keeps them: metadata and spec, decoded straight from the
    JSON into what ``to_dict()`` returns.

    Kilo reads a Node's metadata and spec only. Its status is the kubelet's (conditions,
    addresses, the images the node holds): nearly 90 % of a kubelet-registered Node, and
    with managedFields about 9 of the 10 KB of its watch event, which every node's
    check-in sends to every agent (167 a second at 5000 nodes). lightkube's typed ``Node``
    decoded all of it into its models and converted it back. Lists and watches use this
    class; writes (patches) keep the typed ``Node``.
    """

    _api_info = ResourceApiInfo(
        resource=ResourceDef("", "v1", "Node"), plural="nodes", verbs=["list", "watch"]
    )

    apiVersion: str | None = None
    kind: str | None = None
    metadata: _NodeMetadata | None = None
    spec: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return cast(dict[str, Any], msgspec.to_builtins(self))


RESOURCES: dict[str, type[GlobalResource]] = {"nodes": ReadNode, "peers": Peer}
# Watched in one namespace (``Informer(namespace=...)``): the failover Leases.
NAMESPACED: dict[str, type[NamespacedResource]] = {"leases": Lease}


def _to_dict(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = obj.to_dict()
    # Kilo reads a Node's metadata and spec only (see ReadNode; Peers and Leases have no
    # status worth keeping either); managedFields are server-side-apply bookkeeping.
    data.pop("status", None)
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    return data


def as_dict(obj: Any, *, kind: str, api_version: str) -> dict[str, Any]:
    data = _to_dict(obj)
    data.setdefault("apiVersion", api_version)
    data.setdefault("kind", kind)
    return data
