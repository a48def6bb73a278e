"""What a failing API server or credential plugin looks like through the Kubernetes adapter.

Real parts only: a local HTTP server on 127.0.0.1 that answers every request with one
error, and credential plugins that are real shell scripts run by lightkube.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lightkube import AsyncClient

from kilo.adapters import kubeconfig, kubernetes
from kilo.errors import BackendError
from tests import bad_kubeconfigs


def short(text: str) -> str:
    """A value as messages echo it: cut at 80 characters."""
    return text if len(text) <= 80 else text[:79] + "…"


def list_nodes(path: Path) -> str:
    config = kubeconfig.load(str(path), environ={})
    with pytest.raises(BackendError) as caught, kubernetes.ClusterReader(config) as reader:
        reader.nodes()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("status", "content_type", "body", "said"),
    [
        (
            500,
            "application/json",
            bad_kubeconfigs.status_body(500, "etcdserver: timed out"),
            "etcdserver: timed out",
        ),
        # lightkube fails to decode these as a Status: the HTTP status must still show.
        (500, "application/json", b"internal error\n", "internal error"),
        (
            500,
            "application/json",
            b'{"kind": "Status", "code": "x"}',
            '{"kind": "Status", "code": "x"}',
        ),
        (503, "application/json; charset=utf-8", bad_kubeconfigs.status_body(503, "busy"), "busy"),
        (
            502,
            "text/html",
            b"\n<html><body>Bad Gateway</body></html>\nmore\n",
            "<html><body>Bad Gateway</body></html>",
        ),
        (500, "text/plain", b"", ""),
    ],
    ids=["status", "json-not-a-status", "status-of-the-wrong-shape", "charset", "html", "empty"],
)
def test_an_error_answer_names_its_status_and_message(
    tmp_path: Path, status: int, content_type: str, body: bytes, said: str
) -> None:
    with bad_kubeconfigs.ErrorServer(status, body, content_type=content_type) as server:
        message = list_nodes(bad_kubeconfigs.server_kubeconfig(tmp_path, server.url))
    detail = f": {said}" if said else ""
    assert message == f"cannot list nodes on {server.url}{detail} (HTTP {status})"


def test_a_long_error_message_is_cut(tmp_path: Path) -> None:
    body = bad_kubeconfigs.status_body(500, "x" * 10_000)
    with bad_kubeconfigs.ErrorServer(500, body) as server:
        message = list_nodes(bad_kubeconfigs.server_kubeconfig(tmp_path, server.url))
    assert message == f"cannot list nodes on {server.url}: {'x' * 199}… (HTTP 500)"


def test_a_success_that_is_not_kubernetes_is_named_as_such(tmp_path: Path) -> None:
    with bad_kubeconfigs.ErrorServer(
        200, b"<html>a captive portal</html>", content_type="text/html"
    ) as server:
        message = list_nodes(bad_kubeconfigs.server_kubeconfig(tmp_path, server.url))
    assert message.startswith(
        f"{server.url} did not answer like a Kubernetes API server when trying to list nodes: "
    )


@pytest.mark.parametrize(
    ("script", "said"),
    [
        (
            bad_kubeconfigs.FAILING_PLUGIN,
            'exited with status 3: error: could not get a token: the session of "alice" expired',
        ),
        ("#!/bin/sh\nexit 1\n", "exited with status 1 and printed nothing on stderr"),
        (
            "#!/bin/sh\necho not json\n",
            "did not print an ExecCredential with status.token (Expecting value: line 1 "
            "column 1 (char 0))",
        ),
        (
            "#!/bin/sh\necho '{\"status\": {}}'\n",
            "did not print an ExecCredential with status.token ('token')",
        ),
        (
            "#!/bin/sh\nprintf '\\377\\376' >&2\nexit 1\n",
            "wrote output that is not UTF-8 text",
        ),
    ],
    ids=["fails", "fails-silently", "not-json", "no-token", "binary-stderr"],
)
def test_a_failing_credential_plugin_is_named_not_the_server(
    tmp_path: Path, script: str, said: str
) -> None:
    with bad_kubeconfigs.ErrorServer(200, b"{}") as server:
        path = bad_kubeconfigs.plugin_kubeconfig(tmp_path, server.url, script)
        message = list_nodes(path)
        assert server.requests == 0
    plugin = short(str(tmp_path / "credential-plugin"))
    assert message == f'kubeconfig {path}: the credential plugin "{plugin}" of user "u" {said}'


def test_a_credential_plugin_that_vanished_after_loading_cannot_be_run(tmp_path: Path) -> None:
    with bad_kubeconfigs.ErrorServer(200, b"{}") as server:
        path = bad_kubeconfigs.plugin_kubeconfig(
            tmp_path, server.url, bad_kubeconfigs.FAILING_PLUGIN
        )
        config = kubeconfig.load(str(path), environ={})
        (tmp_path / "credential-plugin").unlink()
        with pytest.raises(BackendError) as caught, kubernetes.ClusterReader(config) as reader:
            reader.nodes()
    plugin = short(str(tmp_path / "credential-plugin"))
    assert str(caught.value) == (
        f'kubeconfig {path}: cannot run the credential plugin "{plugin}" of user "u": No such '
        "file or directory"
    )


def test_peer_store_names_the_status_and_the_peer(tmp_path: Path) -> None:
    with bad_kubeconfigs.ErrorServer(500, bad_kubeconfigs.status_body(500, "boom")) as server:
        config = kubeconfig.load(
            str(bad_kubeconfigs.server_kubeconfig(tmp_path, server.url)), environ={}
        )
        store = kubernetes.PeerStore(config)
        try:
            with pytest.raises(BackendError) as caught:
                store.get("laptop")
        finally:
            store.close()
    assert str(caught.value) == f"cannot get peers on {server.url}: boom (HTTP 500) (Peer 'laptop')"


def test_peer_store_names_a_failing_credential_plugin(tmp_path: Path) -> None:
    with bad_kubeconfigs.ErrorServer(200, b"{}") as server:
        path = bad_kubeconfigs.plugin_kubeconfig(
            tmp_path, server.url, bad_kubeconfigs.FAILING_PLUGIN
        )
        store = kubernetes.PeerStore(kubeconfig.load(str(path), environ={}))
        try:
            with pytest.raises(
                BackendError, match=r"the credential plugin .* exited with status 3"
            ):
                store.create({"metadata": {"name": "laptop"}, "spec": {}})
        finally:
            store.close()


async def first_event(informer: kubernetes.Informer) -> object:
    events = informer.events()
    try:
        return await anext(events)
    finally:
        await events.aclose()


def test_the_informer_stops_on_a_failing_credential_plugin_before_its_first_list(
    tmp_path: Path,
) -> None:
    """A plugin that fails is misconfiguration, like an RBAC refusal: kg exits naming it."""

    async def main() -> str:
        with bad_kubeconfigs.ErrorServer(200, b"{}") as server:
            path = bad_kubeconfigs.plugin_kubeconfig(
                tmp_path, server.url, bad_kubeconfigs.FAILING_PLUGIN
            )
            config = kubeconfig.load(str(path), environ={})
            async with AsyncClient(config, trust_env=False) as client:
                informer = kubernetes.Informer(
                    client, "nodes", server=server.url, retry_refusals=True
                )
                with pytest.raises(BackendError) as caught:
                    await first_event(informer)
            return str(caught.value)

    message = asyncio.run(main())
    assert message.startswith(f"kubeconfig {tmp_path / 'plugin.kubeconfig'}: the credential plugin")
    assert message.endswith(
        'exited with status 3: error: could not get a token: the session of "alice" expired'
    )


def test_the_informer_retries_a_server_error_and_reports_it(tmp_path: Path) -> None:
    async def main() -> list[str]:
        reported: list[str] = []
        retried = asyncio.Event()

        def on_error(message: str) -> None:
            reported.append(message)
            retried.set()

        with bad_kubeconfigs.ErrorServer(
            500, bad_kubeconfigs.status_body(500, "etcd is down")
        ) as server:
            config = kubeconfig.load(
                str(bad_kubeconfigs.server_kubeconfig(tmp_path, server.url)), environ={}
            )
            async with AsyncClient(config, trust_env=False) as client:
                informer = kubernetes.Informer(
                    client, "nodes", server=server.url, retry_refusals=True, on_error=on_error
                )
                task = asyncio.create_task(first_event(informer))
                await retried.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            return [m.replace(server.url, "SERVER") for m in reported]

    assert asyncio.run(main())[0] == "cannot watch nodes on SERVER: etcd is down (HTTP 500)"
