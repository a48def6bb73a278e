"""The webhook's view of the cluster: Nodes' pod CIDRs and valid Peers, for the overlap checks.

A :class:`ClusterWatcher` keeps Nodes and Peers with two Informers in an asyncio loop in a
background thread and publishes an immutable :class:`ClusterView` that request threads read
without locks. Until both caches have synced the view says so, and Peers are judged with
Kilo's checks only: the API server is never kept waiting for the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from kilo.agent.serving import SHUTDOWN_GRACE_SECONDS
from kilo.errors import BackendError
from kilo.mesh import admission
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import Peer
from kilo.mesh.text import shorten

if TYPE_CHECKING:
    from lightkube.config.kubeconfig import SingleConfig

NOT_SYNCED = (
    "the cluster state has not been synced yet: judging with Kilo's checks only, "
    "without the allowed-IP overlap checks"
)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the overlap checks read: never mutated once published."""

    synced: bool = False
    peers: Mapping[str, Peer] = field(default_factory=lambda: MappingProxyType({}))
    pod_cidrs: Mapping[str, tuple[IPNetwork, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )


UNSYNCED = ClusterView()


class ClusterWatcher:
    """Nodes' pod CIDRs and valid Peers, kept current by two Informers in a background thread.

    ``view`` is an immutable snapshot; a new one is published only when a pod CIDR or a
    Peer's allowed IPs change, so the frequent ``last-seen`` patches of nodes cost nothing.
    A refused first list (RBAC, a missing CRD) is logged and retried with backoff; the
    webhook keeps answering with Kilo's checks in the meantime.
    """

    def __init__(
        self,
        config: SingleConfig,
        *,
        logger: logging.LoggerAdapter[logging.Logger],
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self._config = config
        self._log = logger
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self.view: ClusterView = UNSYNCED
        self._pod_cidrs: dict[str, tuple[IPNetwork, ...]] = {}
        self._peers: dict[str, Peer] = {}
        self._synced: set[str] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> None:
        """Start the thread; raises :class:`BackendError` if no API client can be built."""
        self._thread = threading.Thread(target=self._main, name="kilo-webhook-cluster", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise BackendError(
                f"cannot use the credentials for {self._config.cluster.server}: {self._start_error}"
            ) from self._start_error

    def current(self) -> ClusterView:
        return self.view

    def stop(self, timeout: float = SHUTDOWN_GRACE_SECONDS) -> None:
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # a thread's boundary: report, never die silently
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
            else:
                self._log.exception("the cluster watcher failed; Kilo's checks only from now on")
                self.view = UNSYNCED

    async def _run(self) -> None:
        from lightkube import AsyncClient

        from kilo.adapters import credentials

        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            # A credential plugin that hangs must not stop the webhook for good.
            client = credentials.bound_client(AsyncClient(self._config, trust_env=False))
        except Exception as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        if self._stopping:
            await client.close()
            return
        async with client:
            tasks = [
                asyncio.create_task(self._follow(client, resource))
                for resource in ("nodes", "peers")
            ]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, client: Any, resource: str) -> None:
        from kilo.adapters import credentials, kubernetes

        server = str(self._config.cluster.server)

        def on_error(message: str) -> None:
            self._log.warning(
                f"the watch of {resource} failed; retrying", fields={"error": message}
            )

        informer = kubernetes.Informer(
            client,
            resource,
            server=server,
            retry_refusals=True,
            on_error=on_error,
            plugin_timeout=credentials.PLUGIN_TIMEOUT,
        )
        delay = self._retry_initial
        while True:
            events = informer.events()
            waiter = asyncio.create_task(self._wait_listed(informer, resource))
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        self.apply_event(resource, event.type, event.name, event.obj)
            except BackendError as exc:
                # Refused before the first list (RBAC, the CRD): misconfiguration, but the
                # webhook must keep answering, so keep trying.
                self._log.error(
                    f"cannot read {resource}; {NOT_SYNCED} until it can; retrying in {delay:g} s",
                    fields={"error": str(exc)},
                )
            except Exception as exc:
                self._log.error(
                    f"reading {resource} failed; retrying in {delay:g} s",
                    fields={"error": f"{type(exc).__name__}: {exc}"},
                )
            finally:
                waiter.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _wait_listed(self, informer: Any, resource: str) -> None:
        await informer.listed()
        self.listed(resource, informer.cache)

    def listed(self, resource: str, cache: Mapping[str, Mapping[str, Any]]) -> None:
        """The first list of ``resource`` is complete (called in the watcher's loop only)."""
        if resource in self._synced:
            return
        for name, obj in list(cache.items()):
            self._update(resource, name, obj)
        self._synced.add(resource)
        if self._synced == {"nodes", "peers"}:
            self._log.info(
                "the cluster state is synced; checking allowed IPs for overlaps",
                fields={"nodes": len(self._pod_cidrs), "peers": len(self._peers)},
            )
        self._publish()

    def apply_event(self, resource: str, kind: str, name: str, obj: Mapping[str, Any]) -> None:
        """One watch event (called in the watcher's loop only)."""
        changed = self._update(resource, name, None if kind == "DELETED" else obj)
        if changed:
            self._publish()

    def _update(self, resource: str, name: str, obj: Mapping[str, Any] | None) -> bool:
        """Record one object (``None``: deleted); whether the view changes.

        An object that cannot be read (a bug) keeps its last known state and is logged:
        one object must never keep the webhook from following the cluster.
        """
        try:
            return self._record(resource, name, obj)
        except Exception as exc:
            self._log.error(
                "could not read an object; it keeps its last known state",
                fields={
                    "resource": resource,
                    "name": shorten(name, 253),
                    "error": shorten(f"{type(exc).__name__}: {exc}", 200),
                },
            )
            return False

    def _record(self, resource: str, name: str, obj: Mapping[str, Any] | None) -> bool:
        if resource == "nodes":
            cidrs = admission.pod_cidrs_of(obj) if obj is not None else ()
            if self._pod_cidrs.get(name, ()) == cidrs:
                return False
            if cidrs:
                self._pod_cidrs[name] = cidrs
            else:
                self._pod_cidrs.pop(name, None)
            return True
        from kilo.mesh.translate import translate_peer

        # An invalid Peer is not in the mesh, so its allowed IPs cannot conflict.
        peer = translate_peer(obj).value if obj is not None else None
        previous = self._peers.get(name)
        if (previous.allowed_ips if previous else None) == (peer.allowed_ips if peer else None):
            return False
        if peer is not None:
            self._peers[name] = peer
        else:
            self._peers.pop(name, None)
        return True

    def _publish(self) -> None:
        self.view = ClusterView(
            synced=self._synced == {"nodes", "peers"},
            peers=MappingProxyType(dict(self._peers)),
            pod_cidrs=MappingProxyType(dict(self._pod_cidrs)),
        )


__all__ = ["NOT_SYNCED", "UNSYNCED", "ClusterView", "ClusterWatcher"]
