"""The Grafana dashboard against real agents: every query, evaluated by a real Prometheus.

A testbed (two locations, three nodes, one ``kg`` and a pod each) and a ``Peer`` whose key no
machine holds, so that each leader has a WireGuard peer that never completes a handshake. Prometheus
(built from the Go module proxy, src/kilo/sandbox/go/prometheus) scrapes every agent as the
chart's PodMonitor would (job ``kube-system/kilo``, the node's name as ``instance``), and each
query of charts/kilo/files/kilo-dashboard.json, with Grafana's variables filled in, must:

* parse (Prometheus's own parser, ``/api/v1/parse_query``) and name only metrics and labels
  that the agents' live ``/metrics`` carry (plus Prometheus's ``up``, ``instance`` and
  ``job``), in its selectors, groupings and vector matchings;
* return data, whose series carry every label its legend names, and the values this mesh
  must show (three agents, two leaders, one per location, the peer without a handshake...).

Network safety: Prometheus runs in node aws-2's namespaces, listens on that namespace's
loopback and scrapes only the agents' LAN addresses, given as static targets (a build without
service discovery). Its data directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kilo.adapters.kubernetes import RESOURCES
from kilo.mesh.keys import Key
from kilo.sandbox import runs, testbed
from kilo.sandbox.testbed import Location, Testbed
from tests import dashboard

LOCATIONS = [Location("aws", nodes=2), Location("gcp", nodes=1)]
HOST = "aws-2"  # where Prometheus runs
LISTEN = "127.0.0.1:9090"
JOB = "kube-system/kilo"  # the job of the chart's PodMonitor (namespace/name)
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "5s"  # Grafana's $__rate_interval: at least four scrape intervals
GHOST = "ghost"
CONVERGE = 90.0
Peer = RESOURCES["peers"]


class Prometheus:
    """The HTTP API of a Prometheus in a testbed namespace, asked from inside it."""

    def __init__(self, bed: Testbed, process: subprocess.Popen[bytes], log: Path) -> None:
        self.bed = bed
        self.process = process
        self.log = log

    def fetch(self, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, str]]:
        """GET each (path, query parameters) in one process in the namespace: status, body."""
        code = (
            "import json, sys, urllib.error, urllib.parse, urllib.request\n"
            "answers = []\n"
            "for path, params in json.load(sys.stdin):\n"
            "    url = 'http://' + sys.argv[1] + path + '?' + urllib.parse.urlencode(params)\n"
            "    try:\n"
            "        answer = urllib.request.urlopen(url, timeout=10)\n"
            "    except urllib.error.HTTPError as error:\n"
            "        answer = error\n"
            "    except OSError as error:\n"
            "        answers.append((0, str(error)))\n"
            "        continue\n"
            "    answers.append((answer.status, answer.read().decode()))\n"
            "json.dump(answers, sys.stdout)\n"
        )
        out = self.bed.run(
            HOST, sys.executable, "-c", code, LISTEN, stdin=json.dumps(requests), timeout=60
        )
        return [(int(status), body) for status, body in json.loads(out)]

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, str]:
        return self.fetch([(path, params or {})])[0]

    def api(self, path: str, **params: str) -> Any:
        return self._data(path, params, self.get(f"/api/v1/{path}", params))

    @staticmethod
    def _data(path: str, params: dict[str, str], answer: tuple[int, str]) -> Any:
        status, body = answer
        assert status == 200, f"{path} {params}: {status} {body[:500]}"
        decoded = json.loads(body)
        assert decoded["status"] == "success", decoded
        return decoded["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.queries([expr])[0]

    def queries(self, exprs: list[str]) -> list[list[dict[str, Any]]]:
        """Instant queries, evaluated now."""
        answers = self.fetch([("/api/v1/query", {"query": e}) for e in exprs])
        results = []
        for expr, answer in zip(exprs, answers, strict=True):
            data = self._data("query", {"query": expr}, answer)
            if data["resultType"] == "scalar":
                results.append([{"metric": {}, "value": data["result"]}])
            else:
                results.append(data["result"])
        return results


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def by(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(series["metric"].get(label, "") for label in labels): float(series["value"][1])
        for series in result
    }


@pytest.fixture(scope="module")
def bed(controlplane_binaries: Path) -> Iterator[Testbed]:
    runs.cleanup_stale()
    with Testbed(LOCATIONS, binaries=controlplane_binaries) as built:
        ghost = Key(os.urandom(32)).public_key()
        built.api().create(
            testbed.from_dict(
                Peer,
                {
                    "apiVersion": "kilo.squat.ai/v1alpha1",
                    "kind": "Peer",
                    "metadata": {"name": GHOST},
                    "spec": {"allowedIPs": ["10.77.0.1/32"], "publicKey": str(ghost)},
                },
            )
        )
        for node in built.nodes:
            built.start_agent(node)
        with built.agent_logs_on_failure():
            # A pod on every node, as on any Kubernetes node: its CNI turns on IP forwarding,
            # which the leaders need to carry their location's traffic (the scrapes too).
            for node in built.nodes:
                built.add_pod(node, f"pod-{node}", timeout=CONVERGE)
            # Every leader has the other location's leader and the ghost as WireGuard peers.
            built.wait_for(
                lambda: len(leaders(built)) == len(LOCATIONS),
                timeout=CONVERGE,
                message="each location has a leader with its WireGuard peers",
            )
            yield built


def leaders(bed: Testbed) -> dict[str, str]:
    """Location -> the node whose WireGuard device has peers (a non-leader has none): the
    data plane's answer, independent of the metrics."""
    found = {}
    for name, machine in bed.nodes.items():
        peers = bed.wg_dump(name).splitlines()[1:]
        if len(peers) == len(LOCATIONS) - 1 + 1:  # the other locations' leaders, the ghost
            assert machine.location is not None
            found[machine.location] = name
    return found


@pytest.fixture(scope="module")
def prometheus(bed: Testbed, prometheus_binary: Path) -> Iterator[Prometheus]:
    binary = prometheus_binary
    work = Path(tempfile.mkdtemp(prefix="kilo-e2e-prometheus-"))
    try:
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {"targets": [f"{machine.lan_ip}:1107"], "labels": {"instance": name}}
                        for name, machine in bed.nodes.items()
                    ],
                }
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = work / "prometheus.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    *bed.enter(HOST),
                    str(binary),
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address={LISTEN}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        prom = Prometheus(bed, process, log)
        try:
            bed.wait_for(
                lambda: process.poll() is None and prom.get("/-/ready")[0] == 200,
                timeout=60,
                interval=0.2,
                message=f"Prometheus is ready ({log})",
            )
            yield prom
        except BaseException:
            sys.stderr.write(f"--- prometheus\n{log.read_text(errors='replace')[-4000:]}\n")
            raise
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 15)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, 9)
                    process.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def exported(bed: Testbed) -> dashboard.Exported:
    """The metric and label names of every agent's live /metrics, with the target labels
    Prometheus adds (``up`` is Prometheus's own)."""
    labels: dict[str, set[str]] = {"up": set()}
    for name, machine in bed.nodes.items():
        code = (
            "import sys, urllib.request\n"
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
        )
        text = bed.run(HOST, sys.executable, "-c", code, f"http://{machine.lan_ip}:1107/metrics")
        # Kilo's metric names only: no prometheus_client _created series.
        assert "_created" not in text, name
        for metric, names in dashboard.exposition_labels(text).items():
            labels.setdefault(metric, set()).update(names)
    for names in labels.values():
        names.update({"instance", "job"})
    return dashboard.Exported(labels)


DASHBOARD = dashboard.load()
QUERIES = dashboard.queries(DASHBOARD)


def grafana(expr: str) -> str:
    return dashboard.substitute(expr, job=[JOB], rate_interval=RATE_INTERVAL)


def test_the_job_variable_lists_the_agents_job(prometheus: Prometheus) -> None:
    metric, label = dashboard.job_variable(DASHBOARD)
    found = prometheus.bed.wait_for(
        lambda: prometheus.api(f"label/{label}/values", **{"match[]": metric}),
        timeout=CONVERGE,
        message=f"label_values({metric}, {label})",
    )
    assert found == [JOB]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.name)
def test_every_query_parses_and_names_only_what_the_agents_export(
    prometheus: Prometheus, exported: dashboard.Exported, query: dashboard.Query
) -> None:
    tree = prometheus.api("parse_query", query=grafana(query.expr))
    problems: list[str] = []
    dashboard.check_tree(tree, exported, problems)
    assert problems == []


@pytest.fixture(scope="module")
def results(prometheus: Prometheus, bed: Testbed) -> dict[str, list[dict[str, Any]]]:
    """Every query's result, once every query returns data (rates need two scrapes), or
    what they return after CONVERGE seconds: then the tests of the empty ones fail."""
    last: dict[str, list[dict[str, Any]]] = {}

    def evaluate() -> bool:
        answers = prometheus.queries([grafana(q.expr) for q in QUERIES])
        last.update(zip([q.name for q in QUERIES], answers, strict=True))
        # A rate per agent has data once one agent was scraped twice in the window: wait
        # for every agent's series (CI once saw gcp-1's, scraped through the tunnel, late).
        per_agent = {s["metric"].get("instance") for s in last["Reconciliations [A]"]}
        return all(answers) and per_agent >= set(bed.nodes)

    with contextlib.suppress(AssertionError):
        bed.wait_for(evaluate, timeout=CONVERGE, interval=1, message="every query has data")
    return last


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.name)
def test_every_query_returns_series_with_the_labels_of_its_legend(
    results: dict[str, list[dict[str, Any]]], query: dashboard.Query
) -> None:
    result = results[query.name]
    assert result, f"no data after {CONVERGE:g} s: {grafana(query.expr)}"
    for series in result:
        missing = query.legend_labels() - set(series["metric"])
        assert not missing, f"{query.legend!r}: {series['metric']} has no {missing}"


def test_the_panels_show_this_mesh(
    results: dict[str, list[dict[str, Any]]], bed: Testbed, prometheus: Prometheus
) -> None:
    def result(panel: str, ref: str = "A") -> list[dict[str, Any]]:
        return results[f"{panel} [{ref}]"]

    nodes = sorted(bed.nodes)
    leader_of = leaders(bed)
    assert values(result("Agents up")) == [len(nodes)]
    assert values(result("Ready nodes")) == [len(nodes)]
    assert values(result("Ready peers")) == [1]
    assert values(result("Leaders")) == [len(LOCATIONS)]
    assert values(result("Errors in the last hour")) == [0]
    # The ghost, on each leader.
    assert values(result("Peers without a handshake")) == [len(LOCATIONS)]
    assert sorted(by(result("Peers that never completed a handshake"), "instance", "name")) == [
        (leader, GHOST) for leader in sorted(leader_of.values())
    ]
    assert by(result("Leader of each location"), "location", "node") == dict.fromkeys(
        leader_of.items(), 1
    )
    assert by(result("Leaders per location"), "location") == {
        (location.name,): 1 for location in LOCATIONS
    }
    # Each leader has completed a handshake with the other location (a WireGuard peer named
    # after its segment), and only with it.
    handshakes = by(result("Time since the last handshake"), "instance", "name")
    assert sorted(handshakes) == sorted(
        (leader, f"location:{other}")
        for location, leader in leader_of.items()
        for other in leader_of
        if other != location
    )
    assert all(0 <= age < 180 for age in handshakes.values())
    # Prometheus in aws scrapes gcp-1 through the tunnel every second.
    for panel in ("Received per peer", "Sent per peer"):
        assert by(result(panel), "instance", "name")[(leader_of["aws"], "location:gcp")] > 0
    for panel, ref in (
        ("Ready nodes and peers per agent", "A"),
        ("Ready nodes and peers per agent", "B"),
    ):
        assert sorted(by(result(panel, ref), "instance")) == [(n,) for n in nodes]
    assert sorted(by(result("Reconciliations"), "instance")) == [(n,) for n in nodes]
    events = by(result("Errors by event"), "instance", "event")
    assert sorted(events) == sorted(
        (n, e) for n in nodes for e in ("apply", "checkin", "cleanUp", "local", "run")
    )
    assert {
        operation for (_, operation) in by(result("iptables operations"), "instance", "operation")
    } >= {"List"}
    for panel in ("CPU", "Resident memory", "Restarts in the last hour"):
        assert sorted(by(result(panel), "instance")) == [(n,) for n in nodes]
    assert min(values(result("Resident memory"))) > 10e6
    assert values(result("Restarts in the last hour")) == [0] * len(nodes)
    # Nor does Prometheus hold any _created series.
    assert prometheus.query('count({__name__=~".+_created"})') == []
