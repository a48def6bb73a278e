"""Image tests: the image docker/build.sh builds, run with podman (root, as CI runs)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/image/" in str(item.path):
            item.add_marker(pytest.mark.image)
            # The first test may build the image: mmdebstrap takes about 2 minutes cold.
            item.add_marker(pytest.mark.timeout(900))


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (mmdebstrap, chroot, podman, namespaces)")
