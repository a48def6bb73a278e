"""Integration fixtures: a real etcd + kube-apiserver for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kilo.sandbox.controlplane import ControlPlane, build_binaries


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane(build_binaries()) as plane:
        yield plane
