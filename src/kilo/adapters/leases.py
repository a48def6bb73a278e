"""The failover Leases (``coordination.k8s.io/v1``) in kg's namespace: conditional writes.

Thin. Reading is the :class:`~kilo.adapters.informer.Informer` (``"leases"`` with a
namespace); the decision is the core's (:mod:`kilo.mesh.leadership`). Every write is
conditional on the object this node decided on (its ``resourceVersion``, or its absence),
so two nodes that decide at once cannot both win: the loser gets ``False`` and decides
again on the next event. Every other failure is a :class:`~kilo.errors.BackendError`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from kilo.adapters.apierrors import REQUEST_ERRORS, describe_failure, status_code, status_error
from kilo.errors import BackendError
from kilo.mesh.leadership import NAME_PREFIX

# Lets an operator list them: kubectl get leases -l app.kubernetes.io/name=kilo
LABELS = {"app.kubernetes.io/name": "kilo", "app.kubernetes.io/component": "leader-election"}


class LeaseWriter:
    def __init__(self, client: AsyncClient, namespace: str) -> None:
        self._client = client
        self.namespace = namespace

    async def write(
        self,
        name: str,
        *,
        holder: str,
        duration: int,
        observed: Mapping[str, Any] | None,
        now: datetime.datetime | None = None,
    ) -> bool:
        """Hold Lease ``name`` as ``holder`` for ``duration`` seconds from now; ``observed``
        is the object the decision saw (None: it did not exist). False: someone else wrote
        it first."""
        now = now or datetime.datetime.now(datetime.UTC)
        spec = observed.get("spec") if observed is not None else None
        spec = spec if isinstance(spec, Mapping) else {}
        previous = spec.get("holderIdentity")
        transitions = spec.get("leaseTransitions")
        transitions = transitions if isinstance(transitions, int) else 0
        changed = previous != holder
        acquired = now if changed else _time(spec.get("acquireTime")) or now
        lease = Lease(
            metadata=ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels=dict(LABELS),
                resourceVersion=_version(observed),
            ),
            spec=LeaseSpec(
                holderIdentity=holder,
                leaseDurationSeconds=duration,
                acquireTime=acquired,
                renewTime=now,
                leaseTransitions=transitions + (1 if changed and previous else 0),
            ),
        )
        verb = "create" if observed is None else "update"
        try:
            if observed is None:
                await self._client.create(lease)
            else:
                await self._client.replace(lease)
        except REQUEST_ERRORS as exc:
            status = status_error(exc)
            # 409: created or changed since the decision; another node won.
            if status is not None and status_code(status) == 409:
                return False
            raise BackendError(
                describe_failure(exc, self._client.config, verb=verb, resource="leases")
                + f" (Lease {name!r} in namespace {self.namespace!r})"
            ) from exc
        return True

    async def delete(self, name: str, *, observed: Mapping[str, Any]) -> bool:
        """Delete Lease ``name`` if it is still the object ``observed`` (a precondition on
        its ``resourceVersion``: a Lease taken again since is kept). False: it changed or
        is gone already."""
        version = _version(observed)
        if version is None:
            return False
        # lightkube's delete() sends no body; DeleteOptions' preconditions need one, so the
        # request is built by its generic client, as delete() builds it, plus the body.
        generic = self._client._client
        request = generic.prepare_request("delete", Lease, name=name, namespace=self.namespace)
        request.data = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": version},
        }
        try:
            response = await generic.send(  # type: ignore[no-untyped-call]
                generic.build_adapter_request(request)
            )
            generic.handle_response("delete", response, request)
        except REQUEST_ERRORS as exc:
            status = status_error(exc)
            # 409: a failed precondition (written since); 404: deleted since.
            if status is not None and status_code(status) in (404, 409):
                return False
            raise BackendError(
                describe_failure(exc, self._client.config, verb="delete", resource="leases")
                + f" (Lease {name!r} in namespace {self.namespace!r})"
            ) from exc
        return True


def is_ours(obj: Mapping[str, Any]) -> bool:
    """Whether a Lease is one kg writes: its name and every label kg puts on it (the
    namespace holds other controllers' Leases too)."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return False
    name = metadata.get("name")
    labels = metadata.get("labels")
    return (
        isinstance(name, str)
        and name.startswith(NAME_PREFIX)
        and isinstance(labels, Mapping)
        and all(labels.get(key) == value for key, value in LABELS.items())
    )


def _version(observed: Mapping[str, Any] | None) -> str | None:
    metadata = observed.get("metadata") if observed is not None else None
    version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
    return version if isinstance(version, str) else None


def _time(value: object) -> datetime.datetime | None:
    """A MicroTime as the API returns it (RFC 3339 text); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
