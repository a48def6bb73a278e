"""Fixtures shared by the image tests (tests/image) and the end-to-end tests (tests/e2e)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import image_harness


@pytest.fixture(scope="session")
def kilo_image() -> Iterator[str]:
    """The image docker/build.sh builds (cached outside the clone), imported into podman
    under a name of this session; removed from podman at the end."""
    name = image_harness.import_image()
    try:
        yield name
    finally:
        image_harness.remove_image(name)
