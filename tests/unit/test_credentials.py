"""The agent's credential plugin has a time limit (kilo.adapters.credentials): real plugin
scripts that hang, or leave a child holding their output, are stopped and named; the
agent's list, watch and writes fail like any failing plugin instead of waiting for ever."""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable
from pathlib import Path

import pytest
from lightkube import AsyncClient, Client
from lightkube.config.client_adapter import ExecAuth
from lightkube.core.exceptions import ConfigError
from lightkube.resources.core_v1 import Node

from kilo.adapters import credentials, kubeconfig, kubernetes, watchstream
from kilo.errors import BackendError
from tests import bad_kubeconfigs

TIMEOUT = 0.5


def hanging(directory: Path) -> str:
    """A plugin that writes its pid, then never answers."""
    return f"#!/bin/sh\necho $$ > {directory / 'plugin.pid'}\nexec sleep 1000\n"


def leaving_a_child(directory: Path) -> str:
    """A plugin that prints a token and exits, but leaves a child holding its output."""
    return (
        "#!/bin/sh\n"
        f"sleep 1000 &\necho $! > {directory / 'plugin.pid'}\n"
        """echo '{"status": {"token": "t"}}'\n"""
    )


def gone(pid_file: Path) -> bool:
    """Whether the process ends (a SIGKILL is delivered after kill() returns: a pidfd says
    when it has exited, whoever reaps it)."""
    pid = int(pid_file.read_text())
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], 10)
    finally:
        os.close(fd)
    return bool(readable)


def command(directory: Path, script: str) -> list[str]:
    plugin = directory / "credential-plugin"
    plugin.write_text(script)
    plugin.chmod(0o755)
    return [str(plugin)]


@pytest.mark.parametrize("script", [hanging, leaving_a_child])
def test_a_plugin_that_does_not_answer_is_stopped(
    tmp_path: Path, script: Callable[[Path], str]
) -> None:
    argv = command(tmp_path, script(tmp_path))
    with pytest.raises(ConfigError, match=rf"printed no credentials within {TIMEOUT:g} s"):
        credentials.run_plugin(argv, dict(os.environ), TIMEOUT)
    assert gone(tmp_path / "plugin.pid")
    with pytest.raises(ConfigError, match=rf"printed no credentials within {TIMEOUT:g} s"):
        asyncio.run(credentials.run_plugin_async(argv, dict(os.environ), TIMEOUT))
    assert gone(tmp_path / "plugin.pid")


def test_a_plugin_run_from_a_cancelled_task_is_stopped(tmp_path: Path) -> None:
    started = tmp_path / "started"
    os.mkfifo(started)
    argv = command(
        tmp_path,
        f"#!/bin/sh\necho $$ > {tmp_path / 'plugin.pid'}\necho > {started}\nexec sleep 1000\n",
    )

    async def main() -> None:
        task = asyncio.create_task(credentials.run_plugin_async(argv, dict(os.environ), 600))
        await asyncio.to_thread(started.read_text)  # the plugin is running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert gone(tmp_path / "plugin.pid")


def endless(stream: str) -> Callable[[Path], str]:
    def script(directory: Path) -> str:
        redirect = " >&2" if stream == "stderr" else ""
        return f"#!/bin/sh\necho $$ > {directory / 'plugin.pid'}\nexec yes{redirect}\n"

    script.__name__ = f"endless_{stream}"
    return script


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_plugin_that_prints_without_end_is_stopped(tmp_path: Path, stream: str) -> None:
    """Its output is bounded, not kept until the time limit (yes prints GBs a minute)."""
    plugin = command(tmp_path, endless(stream)(tmp_path))
    message = f"printed more than 1 MiB on {stream} and was stopped"
    with pytest.raises(ConfigError, match=message):
        credentials.run_plugin(plugin, dict(os.environ), 60)
    assert gone(tmp_path / "plugin.pid")
    with pytest.raises(ConfigError, match=message):
        asyncio.run(credentials.run_plugin_async(plugin, dict(os.environ), 60))
    assert gone(tmp_path / "plugin.pid")


def test_a_plugin_that_answers_gives_its_output_or_its_failure(tmp_path: Path) -> None:
    token = command(tmp_path, """#!/bin/sh\necho '{"status": {"token": "t"}}'\n""")
    assert credentials.run_plugin(token, dict(os.environ), 10) == b'{"status": {"token": "t"}}\n'
    assert (
        asyncio.run(credentials.run_plugin_async(token, dict(os.environ), 10))
        == b'{"status": {"token": "t"}}\n'
    )
    failing = command(tmp_path, bad_kubeconfigs.FAILING_PLUGIN)
    with pytest.raises(ConfigError, match="returned 3: error: could not get a token"):
        credentials.run_plugin(failing, dict(os.environ), 10)
    with pytest.raises(ConfigError, match="returned 3: error: could not get a token"):
        asyncio.run(credentials.run_plugin_async(failing, dict(os.environ), 10))


def test_the_clients_auth_is_replaced_where_lightkube_keeps_it(tmp_path: Path) -> None:
    """bound_client reaches into lightkube's client: this fails if lightkube moves it."""
    path = bad_kubeconfigs.plugin_kubeconfig(tmp_path, "https://127.0.0.1:1", hanging(tmp_path))
    config = kubeconfig.load(str(path), environ={})
    sync = credentials.bound_client(Client(config, trust_env=False), 5)
    try:
        assert isinstance(sync._client._client.auth, credentials.BoundedExecAuth)
    finally:
        sync.close()
    assert config.user is not None and config.user.exec is not None
    bounded = credentials.bounded(ExecAuth(config.user.exec), 5)
    assert credentials.bounded(bounded) is bounded
    assert credentials.bounded(None) is None


def test_the_agents_first_list_names_a_hanging_plugin(tmp_path: Path) -> None:
    """Through the Informer's list (the async flow): kg exits naming the plugin, as for one
    that fails, instead of waiting for ever."""

    async def main() -> str:
        with bad_kubeconfigs.ErrorServer(200, b"{}") as server:
            path = bad_kubeconfigs.plugin_kubeconfig(tmp_path, server.url, hanging(tmp_path))
            config = kubeconfig.load(str(path), environ={})
            client = credentials.bound_client(AsyncClient(config, trust_env=False), TIMEOUT)
            async with client:
                informer = kubernetes.Informer(
                    client, "nodes", server=server.url, retry_refusals=True
                )
                events = informer.events()
                with pytest.raises(BackendError) as caught:
                    await anext(events)
                await events.aclose()
            assert server.requests == 0
            return str(caught.value)

    message = asyncio.run(main())
    plugin = tmp_path / "credential-plugin"
    assert message == (
        f'kubeconfig {tmp_path / "plugin.kubeconfig"}: the credential plugin "{plugin}" of '
        f'user "u" failed: printed no credentials within {TIMEOUT:g} s and was stopped'
    )
    assert gone(tmp_path / "plugin.pid")


def test_the_agents_watch_and_writes_stop_a_hanging_plugin(tmp_path: Path) -> None:
    """The watch's own request (the sync flow, on its opening thread) and a write through
    the sync client are bounded too."""
    with bad_kubeconfigs.ErrorServer(200, b"{}") as server:
        path = bad_kubeconfigs.plugin_kubeconfig(tmp_path, server.url, hanging(tmp_path))
        config = kubeconfig.load(str(path), environ={})

        async def watch() -> None:
            stream = watchstream.Watch(
                watchstream.Connection(config, plugin_timeout=TIMEOUT),
                "/api/v1/nodes",
                {"watch": "true"},
                decode=lambda raw: {"raw": raw},
                connect_timeout=10,
                read_timeout=10,
            )
            try:
                await anext(stream)
            finally:
                await stream.aclose()

        with pytest.raises(ConfigError, match="printed no credentials"):
            asyncio.run(watch())
        assert gone(tmp_path / "plugin.pid")
        api = credentials.bound_client(Client(config, trust_env=False), TIMEOUT)
        try:
            with pytest.raises(ConfigError, match="printed no credentials"):
                api.get(Node, "a")
        finally:
            api.close()
        assert gone(tmp_path / "plugin.pid")
        assert server.requests == 0
