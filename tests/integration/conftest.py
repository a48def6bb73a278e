"""Integration fixtures: a real etcd + kube-apiserver for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.controlplane import ControlPlane, build_binaries


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
            # An HTTPS connection is sometimes garbage-collected unclosed inside the HTTP
            # client's pool (not reproducible in isolation; every client here is closed).
            # Everywhere else unclosed resources stay errors.
            item.add_marker(
                pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
            )
            item.add_marker(
                pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
            )


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane(build_binaries()) as plane:
        yield plane
