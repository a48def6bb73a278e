"""Inside the virtual machine: the shared directory and the attached control plane."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kilo.sandbox import guest


@pytest.fixture(scope="session")
def share() -> Path:
    """The directory the host shares with the guest (the control plane's attachment)."""
    directory = os.environ.get(guest.GUEST_ENV)
    if not directory:
        pytest.fail(
            "tests/kernel/guest runs inside the VM only: run tests/kernel (make e2e-kernel)"
        )
    return Path(directory)
