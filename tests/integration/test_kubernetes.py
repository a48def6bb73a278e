"""The Kubernetes backend and kgctl against a real kube-apiserver (with etcd and RBAC)."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from lightkube import ApiError, AsyncClient, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.core.generic_client import GenericAsyncClient
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Node, ServiceAccount
from lightkube.types import PatchType

from kilo.adapters import informer as informer_module
from kilo.adapters import kubeconfig, kubernetes, watchstream
from kilo.cli import kgctl
from kilo.errors import BackendError
from kilo.mesh import translate
from kilo.mesh.events import Event, EventType
from kilo.sandbox import kubelet
from kilo.sandbox.controlplane import ControlPlane, free_port
from tests import golden
from tests.examples import PUBLIC_KEYS, reference_objects

ROOT = Path(__file__).resolve().parents[2]


def from_dict(resource: Any, data: dict[str, Any]) -> Any:
    """A lightkube object from a plain dict (typed loosely: lightkube's stubs say DictMixin)."""
    return resource.from_dict(data)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kgctl.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def admin_client(control_plane: ControlPlane) -> Iterator[Client]:
    with Client(
        KubeConfig.from_file(str(control_plane.admin_kubeconfig)), trust_env=False
    ) as client:
        yield client


def apply_manifest(client: Client, path: Path) -> None:
    for obj in load_all_yaml(path.read_text()):
        try:
            client.create(obj)
        except ApiError as exc:
            if exc.status.code != 409:
                raise


@pytest.fixture(scope="module")
def cluster(admin_client: Client) -> Iterator[Client]:
    """The reference cluster (kilo-mesh.md §2.3) created through the API, checked in now."""
    client = admin_client
    apply_manifest(client, ROOT / "manifests" / "crds.yaml")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = client.get(CustomResourceDefinition, "peers.kilo.squat.ai")
        conditions = crd.status.conditions if crd.status else None
        if any(c.type == "Established" and c.status == "True" for c in conditions or []):
            break
        time.sleep(0.2)
    apply_manifest(client, ROOT / "manifests" / "rbac.yaml")
    now = str(int(time.time()))
    for obj in copy.deepcopy(reference_objects()):
        if obj["kind"] == "Node":
            obj["metadata"]["annotations"][translate.LAST_SEEN] = now
            client.create(from_dict(Node, obj))
        else:
            client.create(from_dict(kubernetes.Peer, obj))
    yield client
    for obj in reference_objects():
        if obj["kind"] == "Node":
            client.delete(Node, obj["metadata"]["name"])
        else:
            client.delete(kubernetes.Peer, obj["metadata"]["name"])


def live_dump(client: Client, path: Path) -> Path:
    """What ``kubectl get nodes,peers.kilo.squat.ai -o yaml`` would write."""
    items = [kubernetes.as_dict(n, kind="Node", api_version="v1") for n in client.list(Node)]
    items += [
        kubernetes.as_dict(p, kind="Peer", api_version="kilo.squat.ai/v1alpha1")
        for p in client.list(kubernetes.Peer)
    ]
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


COMMANDS = [
    ["graph"],
    ["showconf", "node", "alpha"],
    ["showconf", "node", "gamma", "--as-peer", "-o", "yaml"],
    ["showconf", "peer", "laptop"],
    ["plan", "node", "beta"],
    ["list", "-o", "json"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_live_output_equals_dump_output(
    cluster: Client, control_plane: ControlPlane, tmp_path: Path, command: list[str]
) -> None:
    dump = live_dump(cluster, tmp_path / "dump.yaml")
    live = run("--kubeconfig", str(control_plane.admin_kubeconfig), *command)
    offline = run("--backend", "file", "--file", str(dump), "--respect-last-seen", *command)
    assert live[0] == 0, live[2]
    assert live == offline


def test_live_graph_matches_the_reference(cluster: Client, control_plane: ControlPlane) -> None:
    assert run("--kubeconfig", str(control_plane.admin_kubeconfig), "graph") == (
        0,
        golden.text("reference.dot") + "\n",
        "",
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"allowedIPs": ["10.5.0.9/32"], "publicKey": "!" * 44}, "spec.publicKey"),
        (
            {
                "allowedIPs": ["10.5.0.300/32"],
                "publicKey": "GY5aT1N9dTR/nJnT1N2f4ClZWVj0jOAld0r8ysWLyjg=",
            },
            "spec.allowedIPs",
        ),
    ],
    ids=["bad-key", "bad-cidr"],
)
def test_invalid_peer_is_reported_and_valid_peers_kept(
    cluster: Client, control_plane: ControlPlane, spec: dict[str, Any], field: str
) -> None:
    cluster.create(from_dict(kubernetes.Peer, {"metadata": {"name": "broken"}, "spec": spec}))
    try:
        code, out, err = run("--kubeconfig", str(control_plane.admin_kubeconfig), "list")
    finally:
        cluster.delete(kubernetes.Peer, "broken")
    assert code == 0
    assert f"kgctl: warning: peer 'broken': {field}=" in err
    assert "laptop" in out and "broken" not in out


def service_account_kubeconfig(plane: ControlPlane, client: Client, name: str, path: Path) -> Path:
    request = from_dict(
        ServiceAccount.Token,
        {
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {"expirationSeconds": 3600},
        },
    )
    token = client.create(request, name, namespace="kube-system")
    return plane.write_kubeconfig(path, name, token=token.status.token)


def test_the_shipped_cluster_role_is_enough_for_kgctl_and_the_agent(
    cluster: Client, control_plane: ControlPlane, tmp_path: Path
) -> None:
    config = service_account_kubeconfig(
        control_plane, cluster, "kilo", tmp_path / "kilo.kubeconfig"
    )
    code, out, err = run("--kubeconfig", str(config), "list", "-o", "json")
    assert code == 0, err
    assert [n["name"] for n in json.loads(out)["nodes"]] == ["alpha", "beta", "delta", "gamma"]
    # The agent writes its own node's annotations, and removes them on clean-up.
    with Client(kubeconfig.load(str(config)), trust_env=False) as client:
        kubernetes.patch_node_annotations(client, "beta", {translate.LAST_SEEN: "1"})
        assert annotations_of(cluster, "beta")[translate.LAST_SEEN] == "1"
        # Only the present keys are removed: cni-compatibility-ip is absent, and that is fine.
        kubernetes.remove_node_annotations(
            client, "beta", [translate.CNI_COMPATIBILITY_IP, translate.LAST_SEEN]
        )
        assert translate.LAST_SEEN not in annotations_of(cluster, "beta")
        now = str(int(time.time()))
        kubernetes.patch_node_annotations(client, "beta", {translate.LAST_SEEN: now})


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda c: c.delete(Node, "beta"), "nodes"),
        (
            lambda c: c.create(from_dict(kubernetes.Peer, {"metadata": {"name": "x"}, "spec": {}})),
            "peers",
        ),
        (lambda c: list(c.list(ServiceAccount, namespace="kube-system")), "serviceaccounts"),
    ],
    ids=["delete-nodes", "create-peers", "list-serviceaccounts"],
)
def test_the_shipped_cluster_role_grants_nothing_more(
    cluster: Client, control_plane: ControlPlane, tmp_path: Path, action: Any, message: str
) -> None:
    config = service_account_kubeconfig(
        control_plane, cluster, "kilo", tmp_path / "kilo.kubeconfig"
    )
    with (
        Client(kubeconfig.load(str(config)), trust_env=False) as client,
        pytest.raises(ApiError) as caught,
    ):
        action(client)
    assert caught.value.status.code == 403
    assert message in (caught.value.status.message or "")


def test_rbac_denial_names_the_verb_and_resource(
    cluster: Client, control_plane: ControlPlane, tmp_path: Path
) -> None:
    cluster.create(
        from_dict(ServiceAccount, {"metadata": {"name": "nobody", "namespace": "kube-system"}})
    )
    try:
        config = service_account_kubeconfig(
            control_plane, cluster, "nobody", tmp_path / "nobody.kubeconfig"
        )
        code, out, err = run("--kubeconfig", str(config), "graph")
    finally:
        cluster.delete(ServiceAccount, "nobody", namespace="kube-system")
    assert (code, out) == (1, "")
    assert err.startswith("kgctl: forbidden: cannot list nodes (")
    assert 'cannot list resource "nodes"' in err


def test_unreachable_server_fails_fast_naming_it(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    config = control_plane.write_kubeconfig(tmp_path / "closed.kubeconfig", "admin")
    text = config.read_text().replace(control_plane.server, f"https://127.0.0.1:{port}")
    config.write_text(text)
    code, out, err = run("--kubeconfig", str(config), "graph")
    assert (code, out) == (1, "")
    assert f"cannot reach the Kubernetes API server at https://127.0.0.1:{port}" in err


def test_silent_server_fails_within_the_timeout(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    # A loopback server that accepts connections and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        config = control_plane.write_kubeconfig(tmp_path / "silent.kubeconfig", "admin")
        config.write_text(
            config.read_text().replace(control_plane.server, f"https://127.0.0.1:{port}")
        )
        started = time.monotonic()
        code, out, err = run("--kubeconfig", str(config), "--timeout", "1", "graph")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()
    assert (code, out) == (1, "")
    assert err == f"kgctl: https://127.0.0.1:{port} did not answer within --timeout 1 s\n"
    assert elapsed < 10  # a hang guard, not a speed target


# --- the watch-backed cache ---------------------------------------------------------------


async def next_event(events: Any, timeout: float = 10.0) -> Event:
    event: Event = await asyncio.wait_for(anext(events), timeout)
    return event


def new_node(name: str) -> Node:
    return cast(
        Node, from_dict(Node, {"metadata": {"name": name, "labels": {"kilo-test": "watch"}}})
    )


def annotations_of(client: Client, name: str) -> dict[str, str]:
    meta = client.get(Node, name).metadata
    assert meta is not None
    return dict(meta.annotations or {})


@pytest.mark.parametrize(
    "with_kubelet_annotations", [False, True], ids=["no-annotations", "kubelet"]
)
def test_the_agents_patches_on_a_kubelet_node_touch_only_kilos_annotations(
    cluster: Client, with_kubelet_annotations: bool
) -> None:
    # A Node as a kubelet registers it, with its own annotations or (Kilo's Go agent panics
    # on such a Node) none at all: the agent's merge patches add and remove Kilo's
    # annotations only; labels, the kubelet's annotations and the status stay.
    name = f"kubelet-{'annotated' if with_kubelet_annotations else 'bare'}"
    obj = kubelet.node(
        name,
        internal_ip="10.9.0.1",
        pod_cidr="10.9.1.0/24",
        kubelet_annotations=with_kubelet_annotations,
    )
    cluster.create(from_dict(Node, obj), field_manager=kubelet.FIELD_MANAGER)
    try:
        created = cluster.get(Node, name).to_dict()
        # The API server keeps the status of a Node on create, as for a kubelet's.
        assert created["status"]["nodeInfo"]["kubeletVersion"] == kubelet.KUBELET_VERSION
        assert len(created["status"]["images"]) == len(kubelet.IMAGES)
        assert ("annotations" in created["metadata"]) is with_kubelet_annotations
        theirs = dict(kubelet.KUBELET_ANNOTATIONS) if with_kubelet_annotations else {}
        ours = {translate.KEY: str(PUBLIC_KEYS["alpha"]), translate.LAST_SEEN: "1"}
        kubernetes.patch_node_annotations(cluster, name, ours)
        assert annotations_of(cluster, name) == {**theirs, **ours}
        kubernetes.remove_node_annotations(cluster, name, translate.AGENT_ANNOTATIONS)
        after = cluster.get(Node, name).to_dict()
        assert after["metadata"].get("annotations", {}) == theirs
        assert after["metadata"]["labels"] == created["metadata"]["labels"]
        assert after["status"] == created["status"]
    finally:
        cluster.delete(Node, name)


def test_watch_delivers_add_update_delete(cluster: Client, control_plane: ControlPlane) -> None:
    async def scenario() -> None:
        config = kubeconfig.load(str(control_plane.admin_kubeconfig))
        async with AsyncClient(config, trust_env=False) as client:
            informer = kubernetes.Informer(client, "nodes", server=control_plane.server)
            events = informer.events()
            initial = {(await next_event(events)).name for _ in range(4)}
            assert initial == {"alpha", "beta", "gamma", "delta"}
            cluster.create(new_node("watched"))
            event = await next_event(events)
            assert (event.type, event.name) == (EventType.ADDED, "watched")
            cluster.patch(
                Node,
                "watched",
                {"metadata": {"annotations": {"a": "b"}}},
                patch_type=PatchType.MERGE,
            )
            event = await next_event(events)
            assert (event.type, event.name) == (EventType.MODIFIED, "watched")
            assert event.obj["metadata"]["annotations"] == {"a": "b"}
            cluster.delete(Node, "watched")
            event = await next_event(events)
            assert (event.type, event.name) == (EventType.DELETED, "watched")
            await events.aclose()

    asyncio.run(scenario())


def test_the_first_lists_events_come_page_by_page_and_the_watch_goes_on_from_its_end(
    cluster: Client, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real API server's pages (continue tokens), two Nodes to a page: the first
    page's events are handed over before the list is complete; the watch then starts from
    the whole list's resourceVersion."""
    # The informer module's own global, which its lists read (kubernetes re-exports only
    # the class: patching kubernetes.LIST_CHUNK would change nothing).
    monkeypatch.setattr(informer_module, "LIST_CHUNK", 2)
    # The pages the API server sent, as lightkube reads them (one response each).
    pages: list[int] = []
    list_chunks = GenericAsyncClient.list_chunks

    async def spy(self: GenericAsyncClient, br: Any) -> AsyncIterator[tuple[str | None, list[Any]]]:
        async for version, chunk in list_chunks(self, br):
            pages.append(len(chunk))
            yield version, chunk

    monkeypatch.setattr(GenericAsyncClient, "list_chunks", spy)

    async def scenario() -> None:
        config = kubeconfig.load(str(control_plane.admin_kubeconfig))
        async with AsyncClient(config, trust_env=False) as client:
            informer = kubernetes.Informer(client, "nodes", server=control_plane.server)
            events = informer.events()
            first = await next_event(events)
            assert informer.relists == 0  # the list goes on
            rest = {(await next_event(events)).name for _ in range(3)}
            assert rest | {first.name} == {"alpha", "beta", "gamma", "delta"}
            cluster.create(new_node("paged"))
            event = await next_event(events)
            assert (event.type, event.name) == (EventType.ADDED, "paged")
            assert informer.relists == 1
            await informer.listed()
            assert pages == [2, 2]  # four Nodes, listed in two pages
            await events.aclose()

    try:
        asyncio.run(scenario())
    finally:
        cluster.delete(Node, "paged")


def test_a_busy_node_watch_read_gathered_loses_no_check_in(
    cluster: Client, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check-ins faster than the (lowered) busy bound: the informer's watch against the
    real API server is read on its timer, the socket's low-water mark raised, and every
    check-in still arrives, in order."""
    monkeypatch.setattr(watchstream, "BUSY_EVENTS", 5)
    monkeypatch.setattr(watchstream, "PACE_WINDOW", 0.3)
    monkeypatch.setattr(watchstream, "GATHER", 0.05)
    marks: list[int] = []
    set_low_water = watchstream.Watch._set_low_water

    def spy(self: watchstream.Watch, size: int) -> None:
        marks.append(size)
        set_low_water(self, size)

    monkeypatch.setattr(watchstream.Watch, "_set_low_water", spy)
    cluster.create(new_node("busy"))
    sent: list[str] = []

    def check_in(value: str) -> None:
        cluster.patch(
            Node,
            "busy",
            {"metadata": {"annotations": {translate.LAST_SEEN: value}}},
            patch_type=PatchType.MERGE,
        )
        sent.append(value)

    def check_ins() -> None:
        # Until the watch gathers and 20 more (however fast this API server is), bounded.
        more = 20
        for n in range(1, 5000):
            check_in(str(n))
            more -= watchstream.GATHER_BYTES in marks
            if not more:
                break
        check_in("end")

    async def scenario() -> list[str]:
        config = kubeconfig.load(str(control_plane.admin_kubeconfig))
        async with AsyncClient(config, trust_env=False) as client:
            informer = kubernetes.Informer(client, "nodes", server=control_plane.server)
            events = informer.events()
            while (await next_event(events)).name != "busy":  # the listing
                pass
            writer = asyncio.create_task(asyncio.to_thread(check_ins))
            seen: list[str] = []
            while "end" not in seen:
                event = await next_event(events)
                if event.name == "busy":
                    seen.append(event.obj["metadata"]["annotations"][translate.LAST_SEEN])
            await writer
            await events.aclose()
            return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        cluster.delete(Node, "busy")
    assert watchstream.GATHER_BYTES in marks
    assert seen == sent


def test_watch_recovers_after_restart_and_compaction_without_losing_deletions(
    cluster: Client, control_plane: ControlPlane
) -> None:
    async def scenario() -> None:
        config = kubeconfig.load(str(control_plane.admin_kubeconfig))
        async with AsyncClient(config, trust_env=False) as client:
            informer = kubernetes.Informer(
                client, "nodes", server=control_plane.server, backoff_initial=0.2, backoff_max=1.0
            )
            events = informer.events()
            cluster.create(new_node("doomed"))
            seen = {(await next_event(events)).name for _ in range(5)}
            assert "doomed" in seen
            # The informer is suspended (not reading): its watch breaks with the restart, and
            # meanwhile a node is deleted, one added, and etcd's history compacted away.
            control_plane.restart_apiserver()
            cluster.delete(Node, "doomed")
            cluster.create(new_node("newcomer"))
            for i in range(20):
                cluster.patch(
                    Node,
                    "newcomer",
                    {"metadata": {"annotations": {"n": str(i)}}},
                    patch_type=PatchType.MERGE,
                )
            control_plane.compact_etcd()
            control_plane.restart_apiserver()
            changes: dict[str, EventType] = {}
            while "doomed" not in changes or "newcomer" not in changes:
                event = await next_event(events, timeout=60)
                changes[event.name] = event.type
            assert changes["doomed"] == EventType.DELETED
            fresh = {
                n.metadata.name: n.metadata.resourceVersion
                for n in cluster.list(Node)
                if n.metadata
            }
            # Let the informer catch up with the last writes, then compare with a fresh list.
            while {k: v["metadata"]["resourceVersion"] for k, v in informer.cache.items()} != fresh:
                await next_event(events, timeout=30)
            assert informer.relists >= 2  # the 410 Gone path, not a lucky resume
            await events.aclose()
            cluster.delete(Node, "newcomer")

    asyncio.run(scenario())


# --- the Peer CRD's schema ----------------------------------------------------------------

KEY = "GY5aT1N9dTR/nJnT1N2f4ClZWVj0jOAld0r8ysWLyjg="


@pytest.mark.parametrize(
    "spec",
    [
        {"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY},
        {"allowedIPs": [], "publicKey": KEY, "persistentKeepalive": 0},
        {"allowedIPs": ["10.5.0.1/24"], "publicKey": KEY, "presharedKey": ""},
        {
            "allowedIPs": ["10.5.0.1/32"],
            "publicKey": KEY,
            "endpoint": {"dnsOrIP": {"ip": "198.51.100.4"}, "port": 65535},
        },
        {
            "allowedIPs": ["10.5.0.1/32"],
            "publicKey": KEY,
            "endpoint": {"dnsOrIP": {"dns": "vpn.example.com"}, "port": 1},
        },
        {
            "allowedIPs": ["10.5.0.1/32"],
            "publicKey": KEY,
            "endpoint": {"dnsOrIP": {"ip": "", "dns": "a.b"}, "port": 51820},
        },
        {
            "allowedIPs": ["10.5.0.1/32"],
            "publicKey": KEY,
            "endpoint": {"dnsOrIP": {"ip": "1.2.3.4", "dns": ""}, "port": 51820},
        },
    ],
    ids=[
        "minimal",
        "empty-allowed-ips",
        "host-bits",
        "ip-endpoint",
        "dns-endpoint",
        "empty-ip",
        "empty-dns",
    ],
)
def test_crd_accepts_what_kilo_accepts(cluster: Client, spec: dict[str, Any]) -> None:
    peer = cluster.create(
        from_dict(kubernetes.Peer, {"metadata": {"name": "accepted"}, "spec": spec})
    )
    cluster.delete(kubernetes.Peer, "accepted")
    assert peer.metadata.name == "accepted"
    assert translate.validate_peer_spec(spec) is None  # Kilo's own validation agrees


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"allowedIPs": ["10.5.0.1/32"], "publicKey": KEY, "persistentKeepalive": -1},
            "persistentKeepalive",
        ),
        (
            {
                "allowedIPs": ["10.5.0.1/32"],
                "publicKey": KEY,
                "endpoint": {"dnsOrIP": {"ip": "1.2.3.4"}, "port": 0},
            },
            "port",
        ),
        (
            {
                "allowedIPs": ["10.5.0.1/32"],
                "publicKey": KEY,
                "endpoint": {"dnsOrIP": {}, "port": 51820},
            },
            "either an endpoint DNS name or IP address",
        ),
        (
            {
                "allowedIPs": ["10.5.0.1/32"],
                "publicKey": KEY,
                "endpoint": {"dnsOrIP": {"dns": "Not_A_Name"}, "port": 51820},
            },
            "dns",
        ),
        ({"allowedIPs": ["10.5.0.1/32"], "publicKey": ""}, "publicKey"),
        ({"allowedIPs": ["10.5.0.1/32"]}, "publicKey"),
    ],
    ids=["negative-keepalive", "port-0", "no-dns-or-ip", "bad-dns", "empty-key", "no-key"],
)
def test_crd_rejects_what_kilo_rejects(cluster: Client, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError) as caught:
        cluster.create(from_dict(kubernetes.Peer, {"metadata": {"name": "rejected"}, "spec": spec}))
    assert caught.value.status.code == 422
    assert message in (caught.value.status.message or "")
    assert translate.validate_peer_spec(spec) is not None  # Kilo rejects it too


def test_the_agent_can_watch_nodes_and_peers_with_the_shipped_role(
    cluster: Client, control_plane: ControlPlane, tmp_path: Path
) -> None:
    config = service_account_kubeconfig(
        control_plane, cluster, "kilo", tmp_path / "kilo.kubeconfig"
    )

    async def scenario() -> None:
        async with AsyncClient(kubeconfig.load(str(config)), trust_env=False) as client:
            for resource, expected in (("nodes", "alpha"), ("peers", "laptop")):
                informer = kubernetes.Informer(client, resource, server=control_plane.server)
                events = informer.events()
                names = set()
                while expected not in names:
                    names.add((await next_event(events)).name)
                await events.aclose()

    asyncio.run(scenario())


def test_a_watch_that_rbac_refuses_fails_instead_of_retrying(
    cluster: Client, control_plane: ControlPlane, tmp_path: Path
) -> None:
    from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding

    cluster.create(
        from_dict(ServiceAccount, {"metadata": {"name": "lister", "namespace": "kube-system"}})
    )
    cluster.create(
        from_dict(
            ClusterRole,
            {
                "metadata": {"name": "lister"},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}],
            },
        )
    )
    cluster.create(
        from_dict(
            ClusterRoleBinding,
            {
                "metadata": {"name": "lister"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "lister",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "lister", "namespace": "kube-system"}
                ],
            },
        )
    )
    try:
        config = service_account_kubeconfig(
            control_plane, cluster, "lister", tmp_path / "lister.kubeconfig"
        )

        async def scenario() -> str:
            async with AsyncClient(kubeconfig.load(str(config)), trust_env=False) as client:
                informer = kubernetes.Informer(client, "nodes", server=control_plane.server)
                events = informer.events()
                try:
                    while True:
                        await next_event(events)
                except BackendError as exc:
                    return str(exc)
                finally:
                    await events.aclose()

        message = asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        cluster.delete(ClusterRoleBinding, "lister")
        cluster.delete(ClusterRole, "lister")
        cluster.delete(ServiceAccount, "lister", namespace="kube-system")
    assert message.startswith("forbidden: cannot watch nodes")


def test_the_shipped_cluster_role_grants_exactly_these_rules(
    cluster: Client, control_plane: ControlPlane, tmp_path: Path
) -> None:
    from lightkube.resources.authorization_v1 import SelfSubjectRulesReview

    config = service_account_kubeconfig(
        control_plane, cluster, "kilo", tmp_path / "kilo.kubeconfig"
    )
    with Client(kubeconfig.load(str(config)), trust_env=False) as client:
        review = client.create(
            from_dict(SelfSubjectRulesReview, {"spec": {"namespace": "kube-system"}})
        )
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in review.status.resourceRules:
        for group in rule.apiGroups or [""]:
            for resource in rule.resources or []:
                granted.setdefault((group, resource), set()).update(rule.verbs)
    # What every authenticated user may do (asking about itself) is not ours to remove.
    everyone = {
        ("authorization.k8s.io", "selfsubjectaccessreviews"),
        ("authorization.k8s.io", "selfsubjectrulesreviews"),
        ("authentication.k8s.io", "selfsubjectreviews"),
        ("certificates.k8s.io", "clustertrustbundles"),  # public CA bundles, readable by all
    }
    assert {k: v for k, v in granted.items() if k not in everyone} == {
        ("", "nodes"): {"list", "watch", "patch"},
        ("kilo.squat.ai", "peers"): {"list", "watch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get"},
        # kg --leader-election=lease, in its own namespace only (tests/integration/test_leases.py);
        # delete: the stale Leases of locations without ready nodes
        ("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update", "delete"},
    }
    [crd_rule] = [
        r for r in review.status.resourceRules if "customresourcedefinitions" in r.resources
    ]
    assert crd_rule.resourceNames == ["peers.kilo.squat.ai"]


def test_the_shipped_cluster_role_is_enough_for_kilos_go_agent(
    cluster: Client, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Every API request Kilo's Go kg makes (kilo-k8s-cli.md §1.6), as its service account:
    the Peer CRD get at start-up (without it Go kg exits), list and watch of Nodes and
    Peers, and the patch of its own Node."""
    from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

    config = service_account_kubeconfig(
        control_plane, cluster, "kilo", tmp_path / "kilo.kubeconfig"
    )
    with Client(kubeconfig.load(str(config)), trust_env=False) as client:
        crd = client.get(CustomResourceDefinition, "peers.kilo.squat.ai")
        assert crd.spec.group == "kilo.squat.ai"
        for resource in (Node, kubernetes.Peer):
            assert list(client.list(resource))
            watch = client.watch(resource, resource_version="0", server_timeout=5)
            next(iter(watch))  # the first event: the watch was allowed
        client.patch(
            Node,
            "beta",
            {"metadata": {"annotations": {translate.LAST_SEEN: str(int(time.time()))}}},
            patch_type=PatchType.MERGE,
        )
        # The get is for Kilo's CRD only.
        with pytest.raises(ApiError) as caught:
            client.get(CustomResourceDefinition, "other.example.com")
        assert caught.value.status.code == 403
