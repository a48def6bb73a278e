"""The CNI conflist rewrite of kilo-mesh.md §6.10."""

from __future__ import annotations

import json
from ipaddress import ip_network

import pytest

from kilo.errors import KiloError
from kilo.mesh.cni import CNIConfigError, current_cidr, rewrite, set_cidr
from kilo.mesh.gojson import dumps as go_json_dumps
from kilo.mesh.gojson import format_float as format_go_float
from kilo.mesh.gojson import loads as go_json_loads
from tests import golden
from tests.examples import CNI_POD_CIDR

# The conflist shipped by Kilo's kubeadm manifest (manifests/kilo-kubeadm.yaml), and §6.10's
# rewrite of it, verbatim.
TEMPLATE = golden.text("cni-template.conflist")
REWRITTEN = golden.text("cni-rewritten.conflist")


def conflist(ipam: object, **plugin: object) -> str:
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": "kilo",
            "plugins": [{"type": "bridge", "ipam": ipam, **plugin}],
        }
    )


# --- the reference example -------------------------------------------------------------------


def test_template_has_no_cidr() -> None:
    assert current_cidr(TEMPLATE) is None


def test_template_is_rewritten_exactly_as_kilo_does() -> None:
    assert rewrite(TEMPLATE, CNI_POD_CIDR) == REWRITTEN


def test_rewritten_file_is_left_alone() -> None:
    assert current_cidr(REWRITTEN) == CNI_POD_CIDR
    assert rewrite(REWRITTEN, CNI_POD_CIDR) is None


def test_a_different_cidr_is_overwritten() -> None:
    other = ip_network("10.2.7.0/24")
    result = rewrite(REWRITTEN, other)
    assert result == REWRITTEN.replace("10.2.0.0/24", "10.2.7.0/24")
    assert result is not None
    assert current_cidr(result) == other


def test_ipv6_pod_cidr() -> None:
    pod = ip_network("fd10:0:0:1::/64")
    result = rewrite(TEMPLATE, pod)
    assert result is not None
    assert '"ranges":[[{"subnet":"fd10:0:0:1::/64"}]]' in result
    assert current_cidr(result) == pod
    assert rewrite(result, pod) is None


def test_the_mask_matters() -> None:
    # The same network address with another mask is another CIDR: the file is rewritten.
    result = rewrite(REWRITTEN, ip_network("10.2.0.0/23"))
    assert result == REWRITTEN.replace('"subnet":"10.2.0.0/24"', '"subnet":"10.2.0.0/23"')
    assert result != REWRITTEN


# --- reading the current CIDR ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"name":"kilo"}',
        '{"name":"kilo","plugins":[]}',
        '{"plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.2.0.0/24"}]]}}]}',
        conflist({"type": "host-local"}),
        conflist({"type": "host-local", "ranges": []}),
        conflist({"type": "host-local", "ranges": [[]]}),
        conflist({"type": "host-local", "ranges": [[{"subnet": "10.2.0.1/24"}]]}),  # host bits
        conflist({"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/31"}]]}),  # too small
        conflist({"type": "host-local", "ranges": [[{"subnet": "bogus"}]]}),
        conflist({"type": "host-local", "ranges": [[{"subnet": None}]]}),
        conflist(
            {"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24", "rangeStart": "x"}]]}
        ),
        conflist(
            {"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24", "rangeEnd": "10.2.1.1"}]]}
        ),
        conflist(
            {"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24"}, {"subnet": "fd00::/64"}]]}
        ),
        conflist(
            {
                "type": "host-local",
                "ranges": [[{"subnet": "10.2.0.0/24"}, {"subnet": "10.2.0.0/25"}]],
            }
        ),
        # Two IPv4 range sets need cniVersion >= 0.3.0 on the plugin itself.
        conflist(
            {
                "type": "host-local",
                "ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "10.3.0.0/24"}]],
            }
        ),
        conflist({"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24"}]]}, type=""),
        '{"name":"kilo","plugins":[{"type":"b","ipam":{"type":"y","ranges":[[{"subnet":"10.2.0.0/24"}]]}}],"x":1e999}',
    ],
)
def test_unreadable_configs_have_no_current_cidr(text: str) -> None:
    assert current_cidr(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (conflist({"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24"}]]}), "10.2.0.0/24"),
        (conflist({"type": "host-local", "ranges": [[{"subnet": "fd00::/64"}]]}), "fd00::/64"),
        # The old single-range form comes before "ranges".
        (
            conflist({"type": "host-local", "subnet": "10.3.0.0/16"}, cniVersion="0.3.1"),
            "10.3.0.0/16",
        ),
        (
            conflist(
                {
                    "type": "host-local",
                    "subnet": "10.3.0.0/16",
                    "ranges": [[{"subnet": "10.2.0.0/24"}]],
                },
                cniVersion="0.3.1",
            ),
            "10.3.0.0/16",
        ),
        (
            conflist(
                {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00::/64"}]],
                }
            ),
            "10.2.0.0/24",
        ),
        (
            conflist(
                {
                    "type": "host-local",
                    "ranges": [
                        [
                            {
                                "subnet": "10.2.0.0/24",
                                "rangeStart": "10.2.0.10",
                                "rangeEnd": "10.2.0.20",
                            }
                        ]
                    ],
                }
            ),
            "10.2.0.0/24",
        ),
        # Struct fields match case-insensitively, as Go's decoder does.
        (
            '{"name":"kilo","plugins":[{"Type":"b","IPAM":{"TYPE":"y","Ranges":[[{"Subnet":"10.2.0.0/24"}]]}}]}',
            "10.2.0.0/24",
        ),
        # The first plugin with a non-empty IPAM type decides.
        (
            '{"name":"kilo","plugins":[{"type":"a","ipam":{"type":"","ranges":[[{"subnet":"10.5.0.0/24"}]]}},'
            '{"type":"b","ipam":{"type":"y","ranges":[[{"subnet":"10.2.0.0/24"}]]}}]}',
            "10.2.0.0/24",
        ),
    ],
)
def test_current_cidr(text: str, expected: str) -> None:
    assert current_cidr(text) == ip_network(expected)


def test_an_invalid_ipam_in_the_first_ipam_plugin_hides_later_ones() -> None:
    text = (
        '{"name":"kilo","plugins":[{"type":"a","ipam":{"type":"x"}},'
        '{"type":"b","ipam":{"type":"y","ranges":[[{"subnet":"10.2.0.0/24"}]]}}]}'
    )
    assert current_cidr(text) is None


# --- rewriting ---------------------------------------------------------------------------------


def test_every_plugin_with_ipam_is_rewritten() -> None:
    text = (
        '{"name":"kilo","plugins":[{"type":"a","ipam":{}},{"type":"b"},'
        '{"type":"c","ipam":{"type":"host-local","ranges":[[{"subnet":"10.9.0.0/24"}]],"x":[1,2.5]}}]}'
    )
    assert set_cidr(text, CNI_POD_CIDR) == (
        '{"name":"kilo","plugins":[{"ipam":{"ranges":[[{"subnet":"10.2.0.0/24"}]]},"type":"a"},'
        '{"type":"b"},{"ipam":{"ranges":[[{"subnet":"10.2.0.0/24"}]],"type":"host-local",'
        '"x":[1,2.5]},"type":"c"}]}'
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "failed to parse CNI config file"),
        ('{"plugins":[{"ipam":{}}],"n":NaN}', "failed to parse CNI config file"),
        ('{"plugins":[{"ipam":{"x":1e400}}]}', "failed to parse CNI config file"),
        ("[1]", "not a JSON object"),
        ('{"name":"kilo"}', "failed to find plugins"),
        ('{"plugins":{}}', "failed to parse plugins"),
        ('{"plugins":[{"ipam":{}},5]}', "plugin 1"),
        ('{"plugins":[{"ipam":null}]}', "IPAM configuration of plugin 0"),
        ('{"plugins":[{"type":"portmap"}]}', "no plugin has an ipam section"),
        ('{"plugins":[]}', "no plugin has an ipam section"),
    ],
)
def test_rewrite_errors(text: str, problem: str) -> None:
    with pytest.raises(CNIConfigError, match=problem):
        rewrite(text, CNI_POD_CIDR)


def test_the_error_is_a_value_error_and_a_kilo_error() -> None:
    assert issubclass(CNIConfigError, ValueError)
    assert issubclass(CNIConfigError, KiloError)


def test_strings_are_escaped_as_go_does() -> None:
    text = '{"plugins":[{"ipam":{}}],"s":"<a>&b \\u2028\\u2029 \\u0001\\b\\f\\n\\t é 😀 \\/"}'
    assert set_cidr(text, CNI_POD_CIDR) == (
        '{"plugins":[{"ipam":{"ranges":[[{"subnet":"10.2.0.0/24"}]]}}],'
        '"s":"\\u003ca\\u003e\\u0026b \\u2028\\u2029 \\u0001\\b\\f\\n\\t é 😀 /"}'
    )


def test_unpaired_surrogates_become_replacement_characters() -> None:
    text = '{"plugins":[{"ipam":{}}],"s":"\\ud800x\\ud83d\\ude00","\\udbff":1,"\\ud800":2}'
    assert set_cidr(text, CNI_POD_CIDR) == (
        '{"plugins":[{"ipam":{"ranges":[[{"subnet":"10.2.0.0/24"}]]}}],"s":"\ufffdx😀","\ufffd":2}'
    )


def test_keys_are_sorted_bytewise_and_duplicates_keep_the_last() -> None:
    text = '{"plugins":[{"ipam":{}}],"b":1,"a":2,"B":3,"é":4,"z":5,"a":6}'
    assert set_cidr(text, CNI_POD_CIDR) == (
        '{"B":3,"a":6,"b":1,"plugins":[{"ipam":{"ranges":[[{"subnet":"10.2.0.0/24"}]]}}],"z":5,"é":4}'
    )


# --- Go's number formatting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1420.0, "1420"),
        (0.0, "0"),
        (-0.0, "-0"),
        (-3.0, "-3"),
        (0.1, "0.1"),
        (100.5, "100.5"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (1e-10, "1e-10"),
        (1.23e-100, "1.23e-100"),
        (1e20, "100000000000000000000"),
        (999999999999999900000.0, "999999999999999900000"),
        (1e21, "1e+21"),
        (-1.5e300, "-1.5e+300"),
        (12345678901234567890.0, "12345678901234567000"),
        (2.0**53 + 2, "9007199254740994"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
    ],
)
def test_format_go_float(value: float, expected: str) -> None:
    assert format_go_float(value) == expected


def test_format_go_float_rejects_non_finite() -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="unsupported value"):
            format_go_float(value)


def test_numbers_round_trip_as_floats() -> None:
    text = '{"a":-0,"b":1E5,"c":12345678901234567890123,"d":0.000001,"e":1e-7,"f":1420,"g":[1.0]}'
    assert go_json_dumps(go_json_loads(text)) == (
        '{"a":-0,"b":100000,"c":1.2345678901234568e+22,"d":0.000001,"e":1e-7,"f":1420,"g":[1]}'
    )


def test_go_json_dumps_literals() -> None:
    assert go_json_dumps([None, True, False, 3, "x", {}]) == '[null,true,false,3,"x",{}]'
    with pytest.raises(TypeError):
        go_json_dumps(object())
