"""The failover Leases (kg --leader-election=lease) against a real kube-apiserver, written
and watched as the kilo service account with the shipped role (manifests/rbac.yaml)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ServiceAccount

from kilo.adapters import kubeconfig, kubernetes
from kilo.adapters.leases import LABELS, LeaseWriter, is_ours
from kilo.errors import BackendError
from kilo.mesh import leadership
from kilo.mesh.events import Event, EventType
from kilo.sandbox.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "kube-system"


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Iterator[Client]:
    with Client(
        KubeConfig.from_file(str(control_plane.admin_kubeconfig)), trust_env=False
    ) as client:
        for obj in load_all_yaml((ROOT / "manifests" / "rbac.yaml").read_text()):
            try:
                client.create(obj)
            except ApiError as exc:
                if exc.status.code != 409:
                    raise
        yield client


@pytest.fixture(scope="module")
def kilo_config(admin: Client, control_plane: ControlPlane, tmp_path_factory: Any) -> Path:
    request: Any = ServiceAccount.Token.from_dict(
        {"metadata": {"name": "kilo", "namespace": NAMESPACE}, "spec": {"expirationSeconds": 3600}}
    )
    token = admin.create(request, "kilo", namespace=NAMESPACE)
    path = tmp_path_factory.mktemp("leases") / "kilo.kubeconfig"
    return control_plane.write_kubeconfig(path, "kilo", token=token.status.token)


async def next_event(events: Any, name: str, timeout: float = 10.0) -> Event:
    async with asyncio.timeout(timeout):
        while True:
            event: Event = await anext(events)
            if event.name == name:
                return event


def test_acquire_renew_conflict_and_watch_as_the_kilo_account(
    admin: Client, kilo_config: Path, control_plane: ControlPlane
) -> None:
    name = leadership.lease_name("integration/Location with spaces")

    async def scenario() -> None:
        async with AsyncClient(kubeconfig.load(str(kilo_config)), trust_env=False) as client:
            writer = LeaseWriter(client, NAMESPACE)
            informer = kubernetes.Informer(
                client, "leases", server=control_plane.server, namespace=NAMESPACE
            )
            events = informer.events()
            try:
                assert await writer.write(name, holder="a", duration=6, observed=None)
                created = await next_event(events, name)
                assert created.type == EventType.ADDED
                spec, problems = leadership.parse_lease(created.obj)
                assert problems == ()
                assert spec is not None and (spec.holder, spec.duration) == ("a", 6.0)
                assert created.obj["spec"]["leaseTransitions"] == 0
                # A second create (another node deciding on the same absence) loses.
                assert not await writer.write(name, holder="b", duration=6, observed=None)
                # Renewal, conditional on the observed version.
                assert await writer.write(name, holder="a", duration=6, observed=created.obj)
                renewed = await next_event(events, name)
                assert renewed.type == EventType.MODIFIED
                assert renewed.obj["spec"]["renewTime"] != created.obj["spec"]["renewTime"]
                assert renewed.obj["spec"]["acquireTime"] == created.obj["spec"]["acquireTime"]
                # A write decided on the stale object loses: no two holders.
                assert not await writer.write(name, holder="b", duration=6, observed=created.obj)
                # A takeover counts a transition.
                assert await writer.write(name, holder="b", duration=6, observed=renewed.obj)
                taken = await next_event(events, name)
                assert taken.obj["spec"]["holderIdentity"] == "b"
                assert taken.obj["spec"]["leaseTransitions"] == 1
            finally:
                await events.aclose()

    try:
        asyncio.run(scenario())
    finally:
        admin.delete(Lease, name, namespace=NAMESPACE)


def test_the_role_grants_leases_in_kgs_namespace_only(kilo_config: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(kubeconfig.load(str(kilo_config)), trust_env=False) as client:
            writer = LeaseWriter(client, "default")
            with pytest.raises(BackendError) as caught:
                await writer.write("kilo-leader-x", holder="a", duration=6, observed=None)
            assert "forbidden" in str(caught.value)
            assert "leases" in str(caught.value)

    asyncio.run(scenario())
    with Client(kubeconfig.load(str(kilo_config)), trust_env=False) as client:
        with pytest.raises(ApiError) as denied:
            client.delete(Lease, "kilo-leader-x", namespace="default")
        assert denied.value.status.code == 403


def test_a_stale_lease_is_deleted_only_as_it_was_observed(
    admin: Client, kilo_config: Path, control_plane: ControlPlane
) -> None:
    """The sweeper's delete is conditional on the object it judged stale: a Lease renewed
    (a location that came back) since is kept; one deleted since is no error."""
    name = leadership.lease_name("integration/removed location")

    async def scenario() -> None:
        async with AsyncClient(kubeconfig.load(str(kilo_config)), trust_env=False) as client:
            writer = LeaseWriter(client, NAMESPACE)
            informer = kubernetes.Informer(
                client, "leases", server=control_plane.server, namespace=NAMESPACE
            )
            events = informer.events()
            try:
                assert await writer.write(name, holder="gone-1", duration=6, observed=None)
                created = await next_event(events, name)
                assert is_ours(created.obj)
                assert await writer.write(name, holder="back-1", duration=6, observed=created.obj)
                renewed = await next_event(events, name)
                # Judged on the first version: the renewed Lease stays.
                assert not await writer.delete(name, observed=created.obj)
                kept = admin.get(Lease, name, namespace=NAMESPACE).spec
                assert kept is not None and kept.holderIdentity == "back-1"
                assert await writer.delete(name, observed=renewed.obj)
                deleted = await next_event(events, name)
                assert deleted.type == EventType.DELETED
                assert not await writer.delete(name, observed=renewed.obj)  # gone already
            finally:
                await events.aclose()

    try:
        asyncio.run(scenario())
    finally:
        with contextlib.suppress(ApiError):
            admin.delete(Lease, name, namespace=NAMESPACE)


def test_only_kgs_own_leases_are_candidates_for_deletion() -> None:
    name = leadership.lease_name("x")
    labelled = {"metadata": {"name": name, "labels": dict(LABELS)}}
    assert is_ours(labelled)
    assert not is_ours({"metadata": {"name": name}})  # not labelled: someone else's
    assert not is_ours({"metadata": {"name": "kube-scheduler", "labels": dict(LABELS)}})


def test_a_malformed_lease_from_the_api_costs_only_itself(
    admin: Client, kilo_config: Path, control_plane: ControlPlane
) -> None:
    """What the API accepts but kg cannot use: a huge holder, no duration."""
    hostile = {
        "kilo-leader-hostile-holder": {"holderIdentity": "h" * 4000, "leaseDurationSeconds": 6},
        "kilo-leader-no-duration": {"holderIdentity": "a"},
    }
    for name, spec in hostile.items():
        lease: Any = Lease.from_dict(
            {"metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
        )
        admin.create(lease)

    async def scenario() -> dict[str, tuple[Any, ...]]:
        seen: dict[str, tuple[Any, ...]] = {}
        async with AsyncClient(kubeconfig.load(str(kilo_config)), trust_env=False) as client:
            informer = kubernetes.Informer(
                client, "leases", server=control_plane.server, namespace=NAMESPACE
            )
            events = informer.events()
            try:
                async with asyncio.timeout(10):
                    while set(hostile) - set(seen):
                        event = await anext(events)
                        seen[event.name] = leadership.parse_lease(event.obj)
            finally:
                await events.aclose()
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        for name in hostile:
            admin.delete(Lease, name, namespace=NAMESPACE)
    spec, problems = seen["kilo-leader-hostile-holder"]
    assert spec is None
    assert [p.field for p in problems] == ["spec.holderIdentity"]
    assert len(str(problems[0])) < 300
    spec, problems = seen["kilo-leader-no-duration"]
    assert spec is None
    assert [p.field for p in problems] == ["spec.leaseDurationSeconds"]


def test_kgctl_reads_the_leases_through_the_cluster_reader(
    admin: Client, kilo_config: Path
) -> None:
    name = leadership.lease_name("integration/kgctl")

    async def create() -> None:
        async with AsyncClient(kubeconfig.load(str(kilo_config)), trust_env=False) as client:
            assert await LeaseWriter(client, NAMESPACE).write(
                name, holder="a", duration=6, observed=None
            )

    asyncio.run(create())
    try:
        with kubernetes.ClusterReader(kubeconfig.load(str(kilo_config))) as reader:
            [read] = [o for o in reader.leases(NAMESPACE) if o["metadata"]["name"] == name]
            spec, problems = leadership.parse_lease(read)
            assert problems == () and spec is not None and spec.holder == "a"
            assert leadership.renewed_at(spec.renewed) is not None
            with pytest.raises(BackendError, match="forbidden"):
                reader.leases("default")
    finally:
        admin.delete(Lease, name, namespace=NAMESPACE)
