"""Helpers for the tests that talk to a real kube-apiserver."""

from __future__ import annotations

import time
from typing import Any

from lightkube import ApiError, Client
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.authorization_v1 import SelfSubjectRulesReview

# What every authenticated user may do (asking about itself) is not ours to remove.
EVERYONE = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
    ("certificates.k8s.io", "clustertrustbundles"),
}


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


def rules_of(client: Client, namespace: str) -> dict[tuple[str, str], set[str]]:
    """What the client's user may do in ``namespace`` (and cluster-wide), by its own rules
    review: (API group, resource) -> verbs, without what every user may do."""
    request: Any = SelfSubjectRulesReview.from_dict({"spec": {"namespace": namespace}})
    review = client.create(request)
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in review.status.resourceRules:
        for group in rule.apiGroups or [""]:
            for resource in rule.resources or []:
                if (group, resource) not in EVERYONE:
                    granted.setdefault((group, resource), set()).update(rule.verbs)
    return granted
