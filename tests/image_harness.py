"""The built image in the tests: docker/build.sh, podman import, and runs of containers.

The image is built (or taken from the cache) by docker/build.sh and imported into podman
under a name of this test session, which the session removes again. Every container is run
with ``--rm`` and a name of its own, and removed by name if it outlives its client.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kilo.sandbox import podman, runs
from tests.manifests import ROOT

BUILD = ROOT / "docker" / "build.sh"
# A cold build (mmdebstrap) takes about 2 minutes on 2 cores.
BUILD_TIMEOUT = 900


def import_image() -> str:
    """Build (or reuse) the image and import it into podman; its name."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (scripts/debian-packages.sh installs it)")
    name = f"localhost/kilo-py/kilo-test:{uuid.uuid4().hex[:10]}"
    built = subprocess.run(
        ["bash", str(BUILD), "import", name],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"docker/build.sh import failed ({built.returncode}):\n{built.stderr[-4000:]}")
    return name


def remove_image(name: str) -> None:
    subprocess.run(["podman", "rmi", "--force", name], capture_output=True, check=False)


def config(image: str) -> dict[str, Any]:
    out = subprocess.run(podman.image_config(image), capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


def name(prefix: str = "kilo-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run(container: podman.Container, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run to completion; the container is gone afterwards, also on a timeout."""
    try:
        return subprocess.run(
            container.argv(), capture_output=True, text=True, timeout=timeout, check=False
        )
    finally:
        remove(container.name)


def remove(container_name: str) -> None:
    subprocess.run(podman.remove(container_name), capture_output=True, timeout=60, check=False)


def shell(
    image: str,
    script: str,
    *,
    security: podman.Security | None = None,
    mounts: tuple[podman.Mount, ...] = (),
    env: dict[str, str] | None = None,
    network: str = "none",
) -> subprocess.CompletedProcess[str]:
    """``/bin/sh -c script`` in the image."""
    return run(
        podman.Container(
            image=image,
            name=name(),
            command=("/bin/sh", "-c", script),
            mounts=mounts,
            env=env or {},
            network=network,
            security=security or podman.Security(),
        )
    )


class Running:
    """A container whose output is read line by line while it runs."""

    def __init__(self, container: podman.Container) -> None:
        self.container = container
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            container.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._buffer = b""
        self._stopped = False

    def wait_for_line(self, wanted: Callable[[str], bool], timeout: float = 30) -> str:
        """The first output line (so far or to come) for which ``wanted`` is true."""
        for line in self.lines:
            if wanted(line):
                return line
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such line within {timeout:g} s; output:\n{self.output}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the container ended; output:\n{self.output}")
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if wanted(line):
                    return line

    @property
    def output(self) -> str:
        return "\n".join([*self.lines, self._buffer.decode(errors="replace")])

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM through podman (which passes it to the container), then its exit code."""
        if self._stopped:
            return self.process.returncode
        self._stopped = True
        try:
            if self.process.poll() is None:
                self.process.terminate()
            self.process.wait(timeout)
            assert self.process.stdout is not None
            rest = self.process.stdout.read()
            self._buffer += rest
            return self.process.returncode
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            remove(self.container.name)


@contextmanager
def running(container: podman.Container) -> Iterator[Running]:
    handle = Running(container)
    try:
        yield handle
    finally:
        handle.stop()


@contextmanager
def network_namespace() -> Iterator[str]:
    """A fresh network namespace with only its loopback up; removed afterwards."""
    with runs.scratch_namespace("kilo-img", loopback=True) as netns:
        yield netns
