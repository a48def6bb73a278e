"""The kernel suite: Kilo's default data plane on a real kernel, in a virtual machine.

On the host, ``test_vm.py`` boots Debian's kernel under QEMU (:mod:`kilo.sandbox.vm`) with
etcd and kube-apiserver beside it on the host, and runs the tests of ``guest/`` inside it
with pytest; each guest test is one host test that passes only when it passed in the guest.
Inside the guest (``KILO_VM_GUEST`` set), ``guest/`` is the suite itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kilo.sandbox import guest
from kilo.sandbox.controlplane import build_binaries

IN_GUEST = bool(os.environ.get(guest.GUEST_ENV))
# The guest's tests need the guest's kernel: on the host they run through test_vm.py only.
collect_ignore = [] if IN_GUEST else ["guest"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel/" in str(item.path):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session")
def controlplane_binaries() -> Path:
    """etcd and kube-apiserver for the host's side (built once, cached outside the clone)."""
    return build_binaries()
