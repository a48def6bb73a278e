"""What the watch-backed cache keeps of an object: what Kilo reads, not the rest."""

from __future__ import annotations

from lightkube.resources.core_v1 import Node

from kilo.adapters import kubernetes
from kilo.mesh import translate
from kilo.sandbox import kubelet


def test_a_cached_node_keeps_metadata_and_spec_without_status_and_managed_fields() -> None:
    obj = kubelet.node(
        "a",
        internal_ip="10.0.0.1",
        pod_cidr="10.42.0.0/24",
        labels={"topology.kubernetes.io/region": "aws"},
        annotations={translate.LOCATION: "aws"},
        now=0,
    )
    obj["metadata"]["managedFields"] = [
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1"}
    ]
    cached = kubernetes.as_dict(Node.from_dict(obj), kind="Node", api_version="v1")
    assert "status" not in cached
    assert "managedFields" not in cached["metadata"]
    assert cached["metadata"]["labels"] == obj["metadata"]["labels"]
    assert cached["metadata"]["annotations"] == obj["metadata"]["annotations"]
    assert cached["spec"] == obj["spec"]
    # What Kilo reads of it is the same as of the whole object.
    assert translate.translate_node(cached) == translate.translate_node(obj)
