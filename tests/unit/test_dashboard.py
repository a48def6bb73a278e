"""The Grafana dashboard as data: its structure, its variables, and the metric names of its
queries against what a kg registry exports (the e2e test, tests/e2e/test_dashboard.py,
evaluates every query with a real Prometheus scraping real agents)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kilo.agent.metrics import AgentMetrics, PeerStats
from tests import dashboard

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
KEY = "GH4fCNZAAyT6EyxFJLZG2BmpFeo3iQMIqMUqwmTvIUE="
DASHBOARD = dashboard.load()
QUERIES = dashboard.queries(DASHBOARD)


def kg_exposition() -> str:
    """What a leader's /metrics holds once it has applied and met a peer."""

    def peers() -> Sequence[PeerStats]:
        return [(KEY, "location:gcp", 1_700_000_000.0, 1, 2)]

    registry = CollectorRegistry()
    metrics = AgentMetrics(registry, peers)
    metrics.set_node("aws-1", "aws")
    metrics.iptables_operation("IPv4", "List", "nat", "*")
    return generate_latest(registry).decode()


def test_panels_have_unique_ids_and_fit_the_grid_without_overlapping() -> None:
    panels = dashboard.panels(DASHBOARD)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = set(
            itertools.product(
                range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
            )
        )
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    assert DASHBOARD["uid"] == "kilo-mesh"
    assert DASHBOARD["title"] == "Kilo"


def test_every_panel_queries_the_chosen_prometheus_data_source() -> None:
    variables = dashboard.variables(DASHBOARD)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["datasource"] == DATASOURCE
    for panel in dashboard.panels(DASHBOARD):
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel.get("description"), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"])
    assert len({q.name for q in QUERIES}) == len(QUERIES)


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.name)
def test_every_query_uses_defined_variables_and_is_scoped_to_the_job(
    query: dashboard.Query,
) -> None:
    defined = set(dashboard.variables(DASHBOARD)) | dashboard.BUILTIN_VARIABLES
    assert dashboard.used_variables(query.expr) <= defined
    # Every selector has the job matcher, so the dashboard shows only the chosen agents.
    names = dashboard.selector_names(query.expr)
    assert names
    assert query.expr.count('{job=~"$job"}') == len(names) == query.expr.count("{")


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.name)
def test_every_metric_of_a_query_is_one_kg_exports(query: dashboard.Query) -> None:
    exported = set(dashboard.exposition_labels(kg_exposition())) | {"up"}
    assert set(dashboard.selector_names(query.expr)) <= exported


def test_the_job_variable_lists_the_jobs_of_kgs_metrics() -> None:
    metric, label = dashboard.job_variable(DASHBOARD)
    assert (metric, label) == ("kilo_leader", "job")
    assert metric in dashboard.exposition_labels(kg_exposition())
    job = dashboard.variables(DASHBOARD)["job"]
    # "All" is Grafana's (a|b) of the listed jobs, never .*: up and process_* of other jobs
    # must not show.
    assert job["includeAll"] is True and "allValue" not in job


def test_substitution_is_what_grafana_sends() -> None:
    expr = 'rate(x{job=~"$job"}[$__rate_interval]) + y{job=~"${job}"}'
    assert dashboard.substitute(expr, job=["kube-system/kilo"], rate_interval="1m") == (
        'rate(x{job=~"kube-system/kilo"}[1m]) + y{job=~"kube-system/kilo"}'
    )
    two = dashboard.substitute('x{job=~"$job"}', job=["a.b", "c"], rate_interval="1m")
    assert two == 'x{job=~"(a\\\\.b|c)"}'


# --- the parse-tree check the e2e test applies to Prometheus's parse of each query ------------


def selector(name: str, *labels: str) -> dict[str, Any]:
    matchers = [{"name": label, "type": "=", "value": "v"} for label in labels]
    return {"type": "vectorSelector", "name": name, "matchers": matchers}


EXPORTED = dashboard.Exported(
    {"kilo_leader": {"instance", "job"}, "kilo_node_info": {"instance", "job", "location"}}
)


def check(node: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    dashboard.check_tree(node, EXPORTED, problems)
    return problems


def join(include: list[str], on: list[str]) -> dict[str, Any]:
    return {
        "type": "binaryExpr",
        "op": "*",
        "lhs": selector("kilo_node_info", "job"),
        "rhs": selector("kilo_leader", "job"),
        "matching": {"card": "many-to-one", "labels": on, "on": True, "include": include},
    }


def test_the_tree_check_finds_unknown_metrics_labels_groupings_and_matchings() -> None:
    good = {"type": "aggregation", "op": "sum", "grouping": ["location"], "without": False}
    assert check({**good, "expr": join([], ["instance", "job"]), "param": None}) == []
    assert check(selector("kilo_leaders", "job")) == ["metric kilo_leaders is not exported"]
    assert check(selector("kilo_leader", "pod")) == ["kilo_leader has no label pod"]
    assert check({**good, "expr": join([], ["instance"]), "grouping": ["zone"], "param": None}) == [
        "sum groups by zone, which its argument does not have"
    ]
    assert check(join(["location"], ["instance"])) == [
        "group_left takes location, which the right side lacks"
    ]
    assert check(join([], ["pod"])) == [
        "* matches on pod, which its left side lacks",
        "* matches on pod, which its right side lacks",
    ]
