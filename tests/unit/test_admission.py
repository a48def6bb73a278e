"""The Peer-validation webhook's decision (kilo.mesh.admission): Kilo's answers, its crashes
fixed, and the allowed-IP overlap checks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from ipaddress import ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kilo.mesh import admission, gojson
from kilo.mesh.ip import IPNetwork
from kilo.mesh.model import Peer
from kilo.mesh.translate import translate_peer

KEY = "GY5aT1N9dTR/nJnT1N2f4ClZWVj0jOAld0r8ysWLyjg="
OTHER_KEY = "GH4fCNZAAyT6EyxFJLZG2BmpFeo3iQMIqMUqwmTvIUE="
UID = "705ab4f5-6393-11e8-b7cc-42010a800002"
ALLOWED = (
    b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1",'
    b'"response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}'
)
_UNSET = object()


def peer(name: str, *allowed_ips: str, key: str = OTHER_KEY) -> Peer:
    value = translate_peer(
        {"metadata": {"name": name}, "spec": {"allowedIPs": list(allowed_ips), "publicKey": key}}
    ).value
    assert value is not None
    return value


PEERS = {"laptop": peer("laptop", "10.5.0.0/24"), "phone": peer("phone", "fd00:5::/64")}
POD_CIDRS: dict[str, tuple[IPNetwork, ...]] = {
    "gcp-1": (ip_network("10.42.1.0/24"), ip_network("fd00:42:1::/64")),
    "aws-1": (ip_network("10.42.2.0/24"),),
}


def spec(*allowed_ips: str, **extra: Any) -> dict[str, Any]:
    return {"allowedIPs": list(allowed_ips), "publicKey": KEY, **extra}


def peer_object(name: str = "new", spec_: Any = _UNSET, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kilo.squat.ai/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
        "spec": spec("10.9.0.1/32") if spec_ is _UNSET else spec_,
    }
    obj.update(extra)
    return obj


def review_of(
    obj: Any = _UNSET,
    *,
    operation: str = "CREATE",
    api_version: Any = "admission.k8s.io/v1",
    kind: Any = "AdmissionReview",
    **request: Any,
) -> dict[str, Any]:
    req: dict[str, Any] = {"uid": UID, "operation": operation, **request}
    if obj is not _UNSET:
        req["object"] = obj
    return {"apiVersion": api_version, "kind": kind, "request": req}


def judge(
    document: Any,
    content_type: str | None = "application/json",
    *,
    peers: Mapping[str, Peer] = PEERS,
    pod_cidrs: Mapping[str, Sequence[IPNetwork]] = POD_CIDRS,
) -> admission.Answer:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return admission.review(body, content_type, peers=peers, pod_cidrs=pod_cidrs)


def bad_request(answer: admission.Answer) -> str:
    """The 400's message, checking that it has Go's ``http.Error`` shape."""
    assert answer.status == 400
    assert answer.allowed is None
    assert answer.content_type == "text/plain; charset=utf-8"
    text = answer.body.decode()
    assert text.endswith("\n") and text.count("\n") == 1
    assert text[:-1] == answer.message
    return answer.message


def denial(answer: admission.Answer) -> str:
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert answer.allowed is False
    response = json.loads(answer.body)["response"]
    assert response["allowed"] is False
    assert response["uid"] == UID
    assert response["status"] == {"metadata": {}, "message": answer.message}
    return answer.message


# --- Kilo's answers ---------------------------------------------------------------------------


def test_a_valid_peer_is_allowed_with_kilos_exact_bytes() -> None:
    answer = judge(review_of(peer_object()))
    assert answer == admission.Answer(
        status=200,
        content_type="application/json",
        body=ALLOWED,
        operation="CREATE",
        allowed=True,
        name="new",
        uid=UID,
    )


def test_a_denial_has_kilos_exact_bytes() -> None:
    answer = judge(review_of(peer_object(spec_=spec("10.9.0.1/32") | {"publicKey": "abc"})))
    assert answer.body == (
        b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1",'
        b'"response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":false,'
        b'"status":{"metadata":{},"message":"WireGuard public key is not base64 encoded: '
        b'illegal base64 data at input byte 0"}}}'
    )
    assert (answer.allowed, answer.operation, answer.name) == (False, "CREATE", "new")


def test_denial_messages_are_escaped_as_go_escapes_them() -> None:
    answer = judge(review_of(peer_object(spec_=spec("<a&b>"))))
    assert denial(answer) == (
        'failed to parse "<a&b>" as a valid IP address: invalid CIDR address: <a&b>'
    )
    assert (
        b'"message":"failed to parse \\"\\u003ca\\u0026b\\u003e\\" as a valid IP address: '
        b'invalid CIDR address: \\u003ca\\u0026b\\u003e"' in answer.body
    )


@pytest.mark.parametrize(
    ("peer_spec", "message"),
    [
        (
            spec("10.5.0.300/32"),
            'failed to parse "10.5.0.300/32" as a valid IP address: '
            "invalid CIDR address: 10.5.0.300/32",
        ),
        (
            spec("10.9.0.1/32", endpoint={"dnsOrIP": {}, "port": 51820}),
            "either an endpoint DNS name IP address must be given",
        ),
        (
            spec("10.9.0.1/32", endpoint={"dnsOrIP": {"dns": "Not_A_Name"}, "port": 51820}),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character (e.g. "
            "'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
        (
            spec("10.9.0.1/32", endpoint={"dnsOrIP": {"ip": "1.2.3"}, "port": 51820}),
            'failed to parse "1.2.3" as a valid IP address',
        ),
        (
            spec("10.9.0.1/32", endpoint={"dnsOrIP": {"ip": "1.2.3.4"}, "port": 0}),
            "port must be a valid UDP port number, got 0",
        ),
        (
            spec("10.9.0.1/32", endpoint={"dnsOrIP": {"ip": "1.2.3.4"}, "port": 65536}),
            "port must be a valid UDP port number, got 65536",
        ),
        (
            spec("10.9.0.1/32", persistentKeepalive=-3),
            "persistent keepalive must be greater than or equal to zero; got -3",
        ),
        (
            spec("10.9.0.1/32") | {"publicKey": KEY[:-2] + "!="},
            "WireGuard public key is not base64 encoded: illegal base64 data at input byte 42",
        ),
        (spec("10.9.0.1/32") | {"publicKey": ""}, "WireGuard public key has invalid length"),
        (spec("10.9.0.1/32") | {"publicKey": "AAAA"}, "WireGuard public key has invalid length"),
        # Like Go, a missing or null spec is the empty spec: its empty key fails.
        (_UNSET, "WireGuard public key has invalid length"),
        (None, "WireGuard public key has invalid length"),
    ],
    ids=[
        "bad-cidr",
        "no-dns-or-ip",
        "bad-dns",
        "bad-ip",
        "port-0",
        "port-65536",
        "negative-keepalive",
        "bad-base64",
        "empty-key",
        "short-key",
        "no-spec",
        "null-spec",
    ],
)
def test_kilos_validation_denies_with_kilos_message(peer_spec: Any, message: str) -> None:
    obj = peer_object()
    if peer_spec is _UNSET:
        del obj["spec"]
    else:
        obj["spec"] = peer_spec
    assert denial(judge(review_of(obj))) == message


def test_update_judges_the_new_object_only() -> None:
    good, bad = peer_object(), peer_object(spec_=spec("10.9.0.1/32") | {"publicKey": ""})
    assert judge(review_of(good, operation="UPDATE", oldObject=bad)).allowed is True
    assert judge(review_of(bad, operation="UPDATE", oldObject=good)).allowed is False


def test_the_operation_and_uid_come_from_the_request() -> None:
    answer = judge(review_of(peer_object(), operation="CONNECT", uid="abc"))
    assert (answer.operation, answer.uid, answer.allowed) == ("CONNECT", "abc", True)
    assert json.loads(answer.body)["response"]["uid"] == "abc"
    document = review_of(peer_object())
    del document["request"]["uid"], document["request"]["operation"]
    answer = judge(document)
    assert (answer.operation, answer.uid, answer.allowed) == ("", "", True)


def test_the_name_falls_back_to_the_requests_name() -> None:
    obj = peer_object()
    del obj["metadata"]
    answer = judge(review_of(obj, name="from-request"))
    assert answer.name == "from-request"


# --- Kilo's 400s ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        (None, ""),
        ("", ""),
        ("text/plain", "text/plain"),
        ("application/yaml", "application/yaml"),
        ("application/jsonx", "application/jsonx"),
    ],
)
def test_a_wrong_content_type_is_400_with_kilos_message(
    content_type: str | None, shown: str
) -> None:
    answer = judge(review_of(peer_object()), content_type)
    assert bad_request(answer) == f"received Content-Type={shown}, expected application/json"


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", " application/json ;x=y"],
)
def test_json_with_parameters_is_accepted_deviation(content_type: str) -> None:
    # Kilo compares the whole header with "application/json".
    assert judge(review_of(peer_object()), content_type).body == ALLOWED


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "the body is not JSON: "),
        (b"garbage", "the body is not JSON: "),
        (b'{"apiVersion": ', "the body is not JSON: "),
        (b"\xff\xfe{}", "the body is not JSON: "),
        (b'{"a": NaN}', "the body is not JSON: "),
        (b"[1, 2]", "the body is a JSON array, not an object"),
        (b'"review"', "the body is a JSON string, not an object"),
        (b"null", "the body is a JSON null, not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "the body is nested too deeply"),
        (b'{"apiVersion": 1}', "apiVersion is a JSON number, not a string"),
        (b'{"kind": ["AdmissionReview"]}', "kind is a JSON array, not a string"),
        (b'{"request": "x"}', "request is a JSON string, not an object"),
        (b'{"request": {"uid": 7}}', "request.uid is a JSON number, not a string"),
        (b'{"request": {"operation": true}}', "request.operation is a JSON boolean, not a string"),
    ],
)
def test_an_undecodable_body_is_400(body: bytes, reason: str) -> None:
    message = bad_request(judge(body))
    assert message.startswith(f"Request could not be decoded: {reason}")


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("admission.k8s.io/v1beta1", "AdmissionReview"),
        ("admission.k8s.io/v1", "AdmissionRequest"),
        (None, "AdmissionReview"),
        ("admission.k8s.io/v1", None),
        ("", ""),
    ],
)
def test_anything_but_v1_is_400_only_v1(api_version: str | None, kind: str | None) -> None:
    document = review_of(peer_object(), api_version=api_version, kind=kind)
    document = {k: v for k, v in document.items() if v is not None}
    assert bad_request(judge(document)) == "only API v1 is supported"


@pytest.mark.parametrize("request_", [_UNSET, None])
def test_a_review_without_request_is_400_not_a_crash_deviation(request_: Any) -> None:
    # Kilo dereferences the missing request and the connection drops.
    document: dict[str, Any] = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    if request_ is not _UNSET:
        document["request"] = request_
    assert bad_request(judge(document)) == "the AdmissionReview has no request"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (_UNSET, "request.object is empty"),
        (None, "request.object is empty"),
        ("peer", "request.object is a JSON string, not a Peer"),
        ([peer_object()], "request.object is a JSON array, not a Peer"),
        (
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}},
            "request.object is a v1 Node, not a kilo.squat.ai/v1alpha1 Peer",
        ),
        (
            peer_object(apiVersion="kilo.squat.ai/v1beta1"),
            "request.object is a kilo.squat.ai/v1beta1 Peer, not a kilo.squat.ai/v1alpha1 Peer",
        ),
        (peer_object(kind=3), "request.object.kind is a JSON number, not a string"),
        (peer_object(metadata="x"), "request.object.metadata is a JSON string, not an object"),
        (
            peer_object(metadata={"name": 5}),
            "request.object.metadata.name is a JSON number, not a string",
        ),
    ],
)
def test_an_object_that_is_not_a_peer_is_400(obj: Any, reason: str) -> None:
    answer = judge(review_of(obj))
    assert bad_request(answer) == f"could not unmarshal extension to peer spec: {reason}"
    assert (answer.operation, answer.uid) == ("CREATE", UID)


def test_an_object_without_apiversion_and_kind_is_read_as_a_peer_like_kilo() -> None:
    obj = peer_object()
    del obj["apiVersion"], obj["kind"]
    assert judge(review_of(obj)).body == ALLOWED


@pytest.mark.parametrize(
    ("peer_spec", "message"),
    [
        ("x", "spec must be an object"),
        (spec() | {"allowedIPs": "10.0.0.0/8"}, "allowedIPs must be a list of CIDRs"),
        (spec("10.9.0.1/32", persistentKeepalive="25"), "persistent keepalive must be an integer"),
        (spec("10.9.0.1/32") | {"publicKey": 1}, "WireGuard public key must be a string"),
        (
            spec("10.9.0.1/32", endpoint={"dnsOrIP": {"ip": "1.2.3.4"}, "port": "51820"}),
            "port must be a valid UDP port number, got 51820",
        ),
    ],
)
def test_a_field_of_the_wrong_type_is_a_denial_naming_it_deviation(
    peer_spec: Any, message: str
) -> None:
    # Kilo's Go decoder fails on these and answers 400, which kubectl shows as a failed call.
    assert denial(judge(review_of(peer_object(spec_=peer_spec)))) == message


@pytest.mark.parametrize("obj", [_UNSET, None, "garbage", peer_object(spec_={"x": 1})])
def test_delete_is_always_allowed(obj: Any) -> None:
    answer = judge(review_of(obj, operation="DELETE", name="laptop"))
    assert answer.body == ALLOWED
    assert (answer.operation, answer.allowed, answer.name) == ("DELETE", True, "laptop")


# --- the overlap checks (an extension) ----------------------------------------------------


@pytest.mark.parametrize(
    ("allowed_ips", "message"),
    [
        (
            ["10.42.1.0/25"],
            "allowed IP 10.42.1.0/25 overlaps the pod CIDR 10.42.1.0/24 of node gcp-1",
        ),
        (
            ["10.9.0.1/32", "10.42.0.0/16"],
            "allowed IP 10.42.0.0/16 overlaps the pod CIDR 10.42.2.0/24 of node aws-1",
        ),
        (
            ["fd00:42:1::7/128"],
            "allowed IP fd00:42:1::7/128 overlaps the pod CIDR fd00:42:1::/64 of node gcp-1",
        ),
        (["10.5.0.9/32"], "allowed IP 10.5.0.9/32 overlaps allowed IP 10.5.0.0/24 of peer laptop"),
        (["10.5.0.0/16"], "allowed IP 10.5.0.0/16 overlaps allowed IP 10.5.0.0/24 of peer laptop"),
        (["fd00:5::/48"], "allowed IP fd00:5::/48 overlaps allowed IP fd00:5::/64 of peer phone"),
        # Host bits are kept in the text but do not hide an overlap.
        (
            ["10.42.2.77/24"],
            "allowed IP 10.42.2.77/24 overlaps the pod CIDR 10.42.2.0/24 of node aws-1",
        ),
        (["0.0.0.0/0"], "allowed IP 0.0.0.0/0 overlaps the pod CIDR 10.42.2.0/24 of node aws-1"),
    ],
)
def test_an_overlapping_peer_is_denied_naming_the_conflict(
    allowed_ips: list[str], message: str
) -> None:
    assert denial(judge(review_of(peer_object(spec_=spec(*allowed_ips))))) == message


@pytest.mark.parametrize(
    "allowed_ips",
    [[], ["10.42.3.0/24"], ["10.5.1.0/24", "10.4.0.0/24"], ["fd00:42:2::/64"], ["::/0"]],
)
def test_a_peer_without_overlaps_is_allowed(allowed_ips: list[str]) -> None:
    pod_cidrs = {k: tuple(n for n in v if n.version == 4) for k, v in POD_CIDRS.items()}
    peers = {"laptop": PEERS["laptop"]}
    answer = judge(
        review_of(peer_object(spec_=spec(*allowed_ips))), peers=peers, pod_cidrs=pod_cidrs
    )
    assert answer.body == ALLOWED


def test_an_update_of_a_peer_to_itself_is_allowed() -> None:
    obj = peer_object("laptop", spec_=spec("10.5.0.0/24"))
    assert judge(review_of(obj, operation="UPDATE", oldObject=obj)).body == ALLOWED
    # Growing its own range is fine too, as long as nobody else is in it.
    obj = peer_object("laptop", spec_=spec("10.5.0.0/23"))
    assert judge(review_of(obj, operation="UPDATE")).body == ALLOWED


def test_kilos_checks_come_before_the_overlap_checks() -> None:
    obj = peer_object(spec_=spec("10.42.1.0/25") | {"publicKey": ""})
    assert denial(judge(review_of(obj))) == "WireGuard public key has invalid length"


def test_without_cluster_state_only_kilos_checks_run() -> None:
    obj = peer_object(spec_=spec("10.42.1.0/25", "10.5.0.0/24"))
    assert judge(review_of(obj), peers={}, pod_cidrs={}).body == ALLOWED


def test_conflicts_are_reported_in_a_stable_order() -> None:
    # The first allowed IP first; for one IP, nodes before peers, each by name.
    peers = {"b": peer("b", "10.0.0.0/8"), "a": peer("a", "10.1.0.0/16")}
    pod_cidrs = {"z": (ip_network("10.1.2.0/24"),), "y": (ip_network("10.1.3.0/24"),)}
    assert (
        admission.overlap("new", ["10.1.0.0/16"], peers=peers, pod_cidrs=pod_cidrs)
        == "allowed IP 10.1.0.0/16 overlaps the pod CIDR 10.1.3.0/24 of node y"
    )
    assert (
        admission.overlap("new", ["10.1.9.0/24"], peers=peers, pod_cidrs=pod_cidrs)
        == "allowed IP 10.1.9.0/24 overlaps allowed IP 10.1.0.0/16 of peer a"
    )
    assert admission.overlap("a", ["10.1.9.0/24"], peers=peers, pod_cidrs={}) == (
        "allowed IP 10.1.9.0/24 overlaps allowed IP 10.0.0.0/8 of peer b"
    )
    assert admission.overlap("new", ["nonsense", "11.0.0.0/8"], peers=peers, pod_cidrs={}) is None


def test_pod_cidrs_of_a_node() -> None:
    node = {
        "spec": {
            "podCIDR": "10.42.1.0/24",
            "podCIDRs": ["10.42.1.0/24", "fd00:42:1::/64", "bad", 7, "10.42.9.1/24"],
        }
    }
    assert admission.pod_cidrs_of(node) == (
        ip_network("10.42.1.0/24"),
        ip_network("fd00:42:1::/64"),
        ip_network("10.42.9.0/24"),
    )
    assert admission.pod_cidrs_of({}) == ()
    assert admission.pod_cidrs_of({"spec": "x"}) == ()
    assert admission.pod_cidrs_of({"spec": {"podCIDR": "", "podCIDRs": "10.0.0.0/8"}}) == ()


def test_go_json_escapes_like_go() -> None:
    assert gojson.dumps({"m": '<&>\u2028\u2029\n"é\ud800'}, sort_keys=False).encode() == (
        b'{"m":"\\u003c\\u0026\\u003e\\u2028\\u2029\\n\\"\xc3\xa9\xef\xbf\xbd"}'
    )


def test_lone_surrogates_in_messages_become_replacement_characters() -> None:
    body = review_of(peer_object(spec_=spec("\ud800")))
    answer = judge(json.dumps(body).encode())
    assert "\ufffd" in denial(answer)
    answer = judge(b'{"apiVersion": "\\ud800", "kind": "x"}', "\ud800")
    assert bad_request(answer) == "received Content-Type=\ufffd, expected application/json"


# --- properties -----------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["allowedIPs", "publicKey", "endpoint", "dnsOrIP", "ip", "dns", "port", "spec"]
            )
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
peer_specs = st.fixed_dictionaries(
    {},
    optional={
        "allowedIPs": st.lists(
            st.sampled_from(["10.42.1.0/25", "10.5.0.1/32", "10.9.0.0/24", "fd00:5::1/128", "x"])
            | st.text(max_size=8),
            max_size=3,
        )
        | json_values,
        "publicKey": st.sampled_from([KEY, "", "abc"]) | json_values,
        "persistentKeepalive": st.integers(-5, 5) | json_values,
        "endpoint": st.fixed_dictionaries(
            {},
            optional={
                "dnsOrIP": st.fixed_dictionaries(
                    {},
                    optional={
                        "ip": st.sampled_from(["1.2.3.4", "x", ""]) | json_values,
                        "dns": st.sampled_from(["a.b", "A_B", ""]) | json_values,
                    },
                )
                | json_values,
                "port": st.integers(-1, 70000) | json_values,
            },
        )
        | json_values,
    },
)


@FUZZ
@given(body=st.binary(max_size=300), content_type=st.none() | st.text(max_size=30))
def test_arbitrary_bytes_never_raise(body: bytes, content_type: str | None) -> None:
    answer = admission.review(body, content_type, peers=PEERS, pod_cidrs=POD_CIDRS)
    assert answer.status == 400
    assert answer.body.decode().endswith("\n")


@FUZZ
@given(document=json_values)
def test_arbitrary_json_never_raises(document: Any) -> None:
    answer = judge(document)
    assert answer.status == 400


@FUZZ
@given(
    obj=json_values | peer_specs.map(lambda s: peer_object(spec_=s)),
    operation=st.sampled_from(["CREATE", "UPDATE", "DELETE"]) | json_values,
    uid=st.text(max_size=10) | json_values,
)
def test_arbitrary_objects_in_a_review_never_raise(obj: Any, operation: Any, uid: Any) -> None:
    document = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": uid, "operation": operation, "object": obj},
    }
    answer = judge(document)
    assert answer.status in (200, 400)
    if answer.status == 200:
        review = json.loads(answer.body)
        assert review["response"]["uid"] == (uid or "")
        assert review["response"]["allowed"] is answer.allowed
        if operation == "DELETE":
            assert answer.allowed is True
    else:
        assert answer.allowed is None


@FUZZ
@given(peer_spec=peer_specs)
def test_allowed_means_valid_for_kilo_and_free_of_overlaps(peer_spec: dict[str, Any]) -> None:
    from kilo.mesh.translate import validate_peer_spec

    answer = judge(review_of(peer_object(spec_=peer_spec)))
    assert answer.status == 200
    kilo = validate_peer_spec(peer_spec)
    if kilo is not None:
        assert answer.message == kilo[1]
    elif answer.allowed:
        assert (
            admission.overlap(
                "new", peer_spec.get("allowedIPs") or [], peers=PEERS, pod_cidrs=POD_CIDRS
            )
            is None
        )


# --- issue 11: silent clamping and unbounded echo -------------------------------------------


@pytest.mark.parametrize("keepalive", [65536, 10**12, 2**63])
def test_a_keepalive_wireguard_cannot_hold_is_denied_deviation(keepalive: int) -> None:
    answer = judge(review_of(peer_object(spec_=spec("10.9.0.1/32", persistentKeepalive=keepalive))))
    assert answer.allowed is False
    assert answer.message.startswith(
        "persistent keepalive must be at most 65535 seconds (WireGuard's maximum); got "
    )
    assert len(answer.message) < 200


def test_the_largest_keepalive_wireguard_holds_is_allowed() -> None:
    answer = judge(review_of(peer_object(spec_=spec("10.9.0.1/32", persistentKeepalive=65535))))
    assert answer.allowed is True


def test_a_huge_invalid_cidr_is_echoed_short() -> None:
    cidr = "9" * 5_000_000
    answer = judge(review_of(peer_object(spec_=spec(cidr))))
    assert answer.allowed is False
    shown = "9" * 79 + "…"
    assert answer.message == (
        f'failed to parse "{shown}" as a valid IP address: invalid CIDR address: {shown}'
    )
    assert len(answer.body) < 500


def test_a_huge_kind_and_operation_are_echoed_short() -> None:
    answer = judge(review_of(peer_object(kind="K" * 100_000), operation="O" * 100_000))
    assert answer.status == 400
    assert len(answer.body) < 400
    assert len(answer.operation) <= 80
