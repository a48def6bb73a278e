"""End-to-end fixtures: network namespaces that the tests create and always remove."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilo.sandbox import runs
from kilo.sandbox.controlplane import build_binaries, build_prometheus


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace (root and iproute2 are needed: CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the e2e tests need root and iproute2 (network namespaces)")
    with runs.scratch_namespace("kilo-test") as name:
        yield name


@pytest.fixture(scope="session")
def controlplane_binaries() -> Path:
    """etcd and kube-apiserver for testbeds (built once, cached outside the clone)."""
    return build_binaries()


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """Prometheus, for the dashboard's queries (built once, cached like the control plane)."""
    return build_prometheus()
