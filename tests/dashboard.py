"""The Grafana dashboard (charts/kilo/files/kilo-dashboard.json) read as data for the tests.

Every PromQL query of the dashboard (panel targets and the ``job`` variable's
``label_values``) with the Grafana variables it uses, and what a query's legend asks of the
series it returns. The unit tests check the JSON and the metric names statically; the e2e
test (tests/e2e/test_dashboard.py) evaluates every query with a real Prometheus scraping real
``kg`` agents.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tests.manifests import DASHBOARD

# Grafana's own variables a query may use, and the variables the dashboard defines.
BUILTIN_VARIABLES = {"__rate_interval"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
# A metric selector: a name, then its label matchers (every selector here has some).
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)")


@dataclass(frozen=True)
class Query:
    panel: str  # the panel's title
    ref: str  # the target's refId
    expr: str
    legend: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref}]"

    def legend_labels(self) -> set[str]:
        return set(LEGEND_LABEL.findall(self.legend))


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included (rows hold none here: they are not collapsed)."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(
            panel=panel["title"],
            ref=target["refId"],
            expr=target["expr"],
            legend=target.get("legendFormat", ""),
            instant=bool(target.get("instant")),
        )
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def used_variables(text: str) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(text)}


def job_variable(dashboard: dict[str, Any]) -> tuple[str, str]:
    """The metric and label of the ``job`` variable's ``label_values(METRIC, LABEL)``."""
    found = LABEL_VALUES.fullmatch(variables(dashboard)["job"]["query"]["query"])
    assert found is not None
    return found.group(1), found.group(2)


def substitute(expr: str, *, job: list[str], rate_interval: str) -> str:
    """``expr`` as Grafana sends it: a multi-value ``$job`` becomes the regex ``(a|b)``."""
    values = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", v) for v in job]
    job_regex = values[0] if len(values) == 1 else "(" + "|".join(values) + ")"
    replaced = {"job": job_regex, "__rate_interval": rate_interval}

    def one(match: re.Match[str]) -> str:
        return replaced[match.group(1) or match.group(2)]

    return VARIABLE.sub(one, expr)


def selector_names(expr: str) -> list[str]:
    return SELECTOR.findall(expr)


# --- Prometheus's parse tree ---------------------------------------------------------------------

# Functions whose result has no labels of their argument (or no argument at all).
LABELLESS = {"time", "vector", "scalar", "pi"}


class Exported:
    """What the agents export: metric name -> the label names of its series (target labels
    included, as Prometheus stores them)."""

    def __init__(self, labels: dict[str, set[str]]) -> None:
        self.labels = labels


def check_tree(
    node: dict[str, Any] | None, exported: Exported, problems: list[str]
) -> set[str] | None:
    """The label names the series of ``node`` (the JSON of Prometheus's
    ``/api/v1/parse_query``) can carry, ``None`` for a scalar; every metric, matcher,
    grouping and matching label that is not there is added to ``problems``."""
    if node is None:
        return None
    kind = node["type"]
    if kind in ("vectorSelector", "matrixSelector"):
        name = node["name"]
        if name not in exported.labels:
            problems.append(f"metric {name} is not exported")
            return set()
        have = exported.labels[name]
        for matcher in node["matchers"]:
            if matcher["name"] != "__name__" and matcher["name"] not in have:
                problems.append(f"{name} has no label {matcher['name']}")
        return have
    if kind in ("parenExpr", "unaryExpr", "subquery"):
        return check_tree(node["expr"], exported, problems)
    if kind in ("numberLiteral", "stringLiteral", "durationExpr"):
        return None
    if kind == "aggregation":
        inner = check_tree(node["expr"], exported, problems) or set()
        check_tree(node["param"], exported, problems)
        grouping = set(node["grouping"])
        for label in sorted(grouping - inner):
            problems.append(f"{node['op']} groups by {label}, which its argument does not have")
        if node["without"]:
            return inner - grouping
        return grouping
    if kind == "call":
        args = [check_tree(a, exported, problems) for a in node["args"]]
        if node["func"]["name"] in LABELLESS:
            return None if node["func"]["name"] != "vector" else set()
        return next((a for a in args if a is not None), None)
    if kind == "binaryExpr":
        lhs = check_tree(node["lhs"], exported, problems)
        rhs = check_tree(node["rhs"], exported, problems)
        if lhs is None or rhs is None:
            return rhs if lhs is None else lhs
        matching = node.get("matching") or {}
        on = set(matching.get("labels") or [])
        include = set(matching.get("include") or [])
        for side, have in (("left", lhs), ("right", rhs)):
            for label in sorted(on - have) if matching.get("on") else []:
                problems.append(f"{node['op']} matches on {label}, which its {side} side lacks")
        card = matching.get("card", "one-to-one")
        if node["op"] in ("and", "unless"):
            return lhs
        if node["op"] == "or":
            return lhs | rhs
        if card == "many-to-one":
            for label in sorted(include - rhs):
                problems.append(f"group_left takes {label}, which the right side lacks")
            return lhs | include
        if card == "one-to-many":
            for label in sorted(include - lhs):
                problems.append(f"group_right takes {label}, which the left side lacks")
            return rhs | include
        if matching.get("on"):
            return on
        return lhs - on
    problems.append(f"unknown node {kind}")
    return set()


NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_PAIR = re.compile(r'\s*([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"\s*(,|\})')


def exposition_labels(text: str) -> dict[str, set[str]]:
    """Metric name -> label names, from a Prometheus text exposition."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = NAME.match(line)
        assert name is not None, line
        labels = found.setdefault(name.group(0), set())
        pos = name.end()
        if line[pos : pos + 1] == "{":
            pos += 1
            while line[pos : pos + 1] != "}":
                pair = LABEL_PAIR.match(line, pos)
                assert pair is not None, line
                labels.add(pair.group(1))
                pos = pair.end() if pair.group(3) == "," else pair.end() - 1
    return found
