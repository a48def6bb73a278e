"""Helpers for the tests that talk to a real kube-apiserver."""

from __future__ import annotations

import time
from typing import Any

from lightkube import ApiError, Client
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition


def wait_served(client: Client, name: str, resource: Any) -> None:
    """Until the CRD is established and its objects can be listed: the first list after
    that can still get 429 "storage is (re)initializing" while the watch cache fills."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = client.get(CustomResourceDefinition, name)
        conditions = crd.status.conditions if crd.status else None
        if any(c.type == "Established" and c.status == "True" for c in conditions or []):
            try:
                list(client.list(resource))
                return
            except ApiError as exc:
                if exc.status.code not in (404, 429):
                    raise
        time.sleep(0.1)
    raise AssertionError(f"CRD {name} not served")
