"""A credential plugin (a kubeconfig's ``users[].user.exec``) with a time limit, for kg.

lightkube runs the plugin (``lightkube.config.client_adapter.ExecAuth``) and waits for it
without a limit. A plugin that hangs (a cloud CLI waiting for a metadata server that never
answers, a child it left holding its output open) then holds every request that needs a
token: the agent's lists, watches and writes stop, silently and for good, on the node
whose plugin hangs. :class:`BoundedExecAuth` gives the plugin ``timeout`` seconds, then
kills its process group and fails the request like any failing plugin: the agent logs it
and retries with backoff. Its output is bounded too (:data:`MAX_OUTPUT` on stdout and on
stderr): lightkube keeps all of it, so a plugin that prints without end (a wrapper script
gone wrong) would fill the node's memory within the time limit.

kgctl keeps lightkube's unbounded wait: its user sees a hanging command and can stop it,
and an interactive login may take a person longer than any bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import Any, TypeVar

import httpx2
from lightkube import AsyncClient, Client
from lightkube.config.client_adapter import ExecAuth
from lightkube.config.models import UserExec
from lightkube.core.exceptions import ConfigError

# A plugin prints a token in a second or two (aws eks get-token, gke-gcloud-auth-plugin);
# a minute is a plugin that will not answer.
PLUGIN_TIMEOUT = 60.0
# An ExecCredential is a token, perhaps a client certificate and key: a few KiB.
MAX_OUTPUT = 1 << 20
_READ = 1 << 16
_DRAIN = 5.0  # seconds to read what a killed plugin left in its pipes


def _timed_out(timeout: float) -> ConfigError:
    return ConfigError(f"printed no credentials within {timeout:g} s and was stopped")


class _TooMuch(Exception):
    """A plugin's stdout or stderr passed :data:`MAX_OUTPUT`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.stream = stream


def _too_much(stream: str) -> ConfigError:
    return ConfigError(f"printed more than {MAX_OUTPUT >> 20} MiB on {stream} and was stopped")


def _stopped(exc: BaseException, timeout: float) -> None:
    """Raise this module's error for why a plugin was stopped, if it is one of ours."""
    if isinstance(exc, subprocess.TimeoutExpired | TimeoutError):
        raise _timed_out(timeout) from None
    if isinstance(exc, _TooMuch):
        raise _too_much(exc.stream) from None


def _failed(command: Sequence[str], code: int, stderr: bytes) -> ConfigError:
    # lightkube's wording, which apierrors.credential_error takes apart.
    return ConfigError(f"Exec {command[0]} returned {code}: {stderr.decode()}")


def _kill(pid: int) -> None:
    """The plugin's process group (it was started in its own session): its children too,
    which may hold its output open after it exited."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_plugin(command: Sequence[str], env: Mapping[str, str], timeout: float) -> bytes:
    """The plugin's output, as lightkube's ``sync_check_output`` gives it, in ``timeout``."""
    proc = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        stdout, stderr = _read_all(proc, deadline)
        proc.wait(max(deadline - time.monotonic(), 0))  # its output closed: it ends now
    except BaseException as exc:
        _kill(proc.pid)
        proc.wait()  # reaped
        _stopped(exc, timeout)
        raise
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if proc.returncode != 0:
        raise _failed(command, proc.returncode, stderr)
    return stdout


def _read_all(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
    """The plugin's stdout and stderr up to their end, each bounded by :data:`MAX_OUTPUT`
    (``communicate`` keeps everything) and both by ``deadline``."""
    assert proc.stdout is not None and proc.stderr is not None
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    outputs = {fd: bytearray() for fd in names}
    with selectors.DefaultSelector() as selector:
        for fd in names:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, 0)
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _READ)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                output = outputs[key.fd]
                output += chunk
                if len(output) > MAX_OUTPUT:
                    raise _TooMuch(names[key.fd])
    return bytes(outputs[proc.stdout.fileno()]), bytes(outputs[proc.stderr.fileno()])


async def run_plugin_async(command: Sequence[str], env: Mapping[str, str], timeout: float) -> bytes:
    """:func:`run_plugin` for the loop, as lightkube's ``async_check_output``."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.ensure_future(_read_bounded(proc.stdout, "stdout")),
        asyncio.ensure_future(_read_bounded(proc.stderr, "stderr")),
    ]
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await asyncio.gather(*readers)
            await proc.wait()
    except BaseException as exc:
        _kill(proc.pid)
        # Reaped, also when this task is being cancelled.
        await asyncio.shield(_reap(proc, readers))
        _stopped(exc, timeout)
        raise
    if proc.returncode:
        raise _failed(command, proc.returncode, stderr)
    return stdout


async def _reap(proc: asyncio.subprocess.Process, readers: Sequence[asyncio.Future[bytes]]) -> None:
    """Read what the killed plugin's group left in its pipes, then wait for it: asyncio
    (3.11) reports a process's exit only once its pipes have closed, and a pipe closes at
    its end of file. A process outside the group (it started a session of its own) may
    hold them open: it is given a few seconds, then left to the child watcher, which
    reaps the plugin whether or not it is waited for here."""
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    try:
        async with asyncio.timeout(_DRAIN):
            for stream in (proc.stdout, proc.stderr):
                while stream is not None and await stream.read(_READ):
                    pass
            await proc.wait()
    except TimeoutError:
        pass


async def _read_bounded(stream: asyncio.StreamReader, name: str) -> bytes:
    output = bytearray()
    while chunk := await stream.read(_READ):
        output += chunk
        if len(output) > MAX_OUTPUT:
            raise _TooMuch(name)
    return bytes(output)


class BoundedExecAuth(ExecAuth):
    """lightkube's ``ExecAuth`` (the token kept until a 401, the plugin run again then)
    with the plugin's run bounded by ``timeout``."""

    def __init__(self, exec: UserExec, timeout: float) -> None:  # lightkube's name
        super().__init__(exec)
        self._timeout = timeout

    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        if self._last_bearer:
            request.headers["Authorization"] = self._last_bearer
            response = yield request
            if response.status_code != 401:
                return
        command, env = self._prepare()
        self._use(request, run_plugin(command, env, self._timeout))
        yield request

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if self._last_bearer:
            request.headers["Authorization"] = self._last_bearer
            response = yield request
            if response.status_code != 401:
                return
        command, env = self._prepare()
        self._use(request, await run_plugin_async(command, env, self._timeout))
        yield request

    def _use(self, request: httpx2.Request, output: bytes) -> None:
        token = json.loads(output)["status"]["token"]
        request.headers["Authorization"] = self._last_bearer = f"Bearer {token}"


def bounded(auth: httpx2.Auth | None, timeout: float = PLUGIN_TIMEOUT) -> httpx2.Auth | None:
    """``auth`` with its credential plugin bounded by ``timeout``, if it runs one."""
    if isinstance(auth, ExecAuth) and not isinstance(auth, BoundedExecAuth):
        return BoundedExecAuth(auth._exec, timeout)
    return auth


_Client = TypeVar("_Client", Client, AsyncClient)


def bound_client(client: _Client, timeout: float = PLUGIN_TIMEOUT) -> _Client:
    """``client`` with its credential plugin bounded by ``timeout``.

    lightkube takes no authentication of the caller's: the httpx client it made is reached
    through its private attributes (lightkube is pinned; tests/unit/test_credentials.py
    fails if they move)."""
    inner: Any = client._client._client
    if not isinstance(inner, httpx2.Client | httpx2.AsyncClient):
        raise TypeError(f"lightkube's client holds no httpx client where expected: {inner!r}")
    auth = bounded(inner.auth, timeout)
    if auth is not None:
        inner.auth = auth
    return client
