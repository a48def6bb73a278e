"""The agent's HTTP endpoints, served by a real server on loopback and read with urllib."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, enable_created_metrics
from prometheus_client import metrics as prometheus_metrics

from kilo.agent.http import INDEX, NO_DOT, UNHEALTHY, HTTPServer
from kilo.agent.listen import ListenAddress, parse_listen
from kilo.agent.metrics import AgentMetrics, new_registry
from kilo.errors import ConfigError, LocalNodeMissing
from tests import golden

Fetch = Callable[..., tuple[int, Message, bytes]]
REFERENCE_DOT = golden.text("reference.dot")


class State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.healthy = False
        self.dot = REFERENCE_DOT
        self.error: Exception | None = None

    def graph(self) -> str:
        if self.error is not None:
            raise self.error
        return self.dot


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[HTTPServer, State, AgentMetrics]]:
    # One server for the module: stopping one takes up to serve_forever's 0.5 s poll.
    state = State()
    # kg's registry, made in a process that still has prometheus_client's default (created
    # series on); the setting is restored for the other modules afterwards.
    created = prometheus_metrics._use_created
    enable_created_metrics()  # type: ignore[no-untyped-call]
    registry = new_registry()
    metrics = AgentMetrics(registry)
    http = HTTPServer(
        "127.0.0.1:0",
        registry=registry,
        healthy=lambda: state.healthy,
        graph=state.graph,
    )
    http.start()
    try:
        yield http, state, metrics
    finally:
        http.stop()
        prometheus_metrics._use_created = created


@pytest.fixture
def server(served: tuple[HTTPServer, State, AgentMetrics]) -> HTTPServer:
    return served[0]


@pytest.fixture
def state(served: tuple[HTTPServer, State, AgentMetrics]) -> State:
    served[1].reset()
    return served[1]


@pytest.fixture
def metrics(served: tuple[HTTPServer, State, AgentMetrics]) -> AgentMetrics:
    return served[2]


@pytest.fixture
def fetch(server: HTTPServer) -> Fetch:
    host, port = server.address

    def get(
        path: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, Message, bytes]:
        request = urllib.request.Request(
            f"http://{host}:{port}{path}", method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers, exc.read()

    return get


def assert_go_error(result: tuple[int, Message, bytes], status: int, message: str) -> None:
    code, headers, body = result
    assert (code, body) == (status, (message + "\n").encode())
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.fixture
def fake_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``dot`` on PATH that records its arguments and echoes its input (or fails)."""
    script = tmp_path / "bin" / "dot"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/args\n'
        f'if [ -e {tmp_path}/fail ]; then echo "syntax error in line 1" >&2; exit 1; fi\n'
        "exec cat\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ.get('PATH', '')}")
    return tmp_path


# --- /health --------------------------------------------------------------------------------


def test_health_is_503_until_healthy_then_200(state: State, fetch: Fetch) -> None:
    assert_go_error(fetch("/health"), 503, UNHEALTHY)
    state.healthy = True
    status, headers, body = fetch("/health")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "0"


def test_any_method_is_served(state: State, fetch: Fetch) -> None:
    state.healthy = True
    assert fetch("/health", method="POST")[0] == 200
    status, headers, body = fetch("/", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(INDEX))


# --- /metrics -------------------------------------------------------------------------------


def test_metrics_expose_the_registry(metrics: AgentMetrics, fetch: Fetch) -> None:
    metrics.reconciles.inc()
    metrics.iptables_operation("IPv4", "List", "nat", "*")
    status, headers, body = fetch("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "\nkilo_reconciles_total " in text
    assert (
        'kilo_iptables_operations_total{chain="*",operation="List",protocol="IPv4",table="nat"}'
        in (text)
    )


def test_metrics_have_no_created_series_in_either_format(
    metrics: AgentMetrics, fetch: Fetch
) -> None:
    metrics.reconciles.inc()
    metrics.errors.labels(event="apply").inc()
    for accept in ("text/plain", "application/openmetrics-text"):
        status, _, body = fetch("/metrics", headers={"Accept": accept})
        text = body.decode()
        assert status == 200
        assert "kilo_reconciles" in text
        assert 'kilo_errors_total{event="apply"}' in text
        assert "_created" not in text, accept


def test_metrics_negotiate_openmetrics_gzip_and_names(metrics: AgentMetrics, fetch: Fetch) -> None:
    metrics.leader.set(1)
    status, headers, body = fetch(
        "/metrics",
        headers={"Accept": "application/openmetrics-text", "Accept-Encoding": "gzip"},
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert "kilo_leader 1.0\n" in text
    assert text.endswith("# EOF\n")
    _, _, body = fetch("/metrics?name[]=kilo_leader")
    assert [line for line in body.decode().splitlines() if not line.startswith("#")] == [
        "kilo_leader 1.0"
    ]


# --- /graph ---------------------------------------------------------------------------------


def test_graph_as_dot_is_the_raw_text(fetch: Fetch) -> None:
    for query in ("format=dot", "format=gv", "format=dot&layout=anything"):
        status, headers, body = fetch(f"/graph?{query}")
        assert (status, body.decode()) == (200, REFERENCE_DOT)
        assert headers["Content-Type"] == "text/plain; charset=utf-8"


def test_graph_as_svg_or_a_clear_message_without_graphviz(fetch: Fetch) -> None:
    result = fetch("/graph")
    if shutil.which("dot") is None:
        assert_go_error(result, 500, NO_DOT)
    else:
        status, headers, body = result
        assert status == 200
        assert headers["Content-Type"] == "image/svg+xml"
        assert b"<svg" in body


def test_graph_is_rendered_by_dot_with_layout_and_format(fake_dot: Path, fetch: Fetch) -> None:
    status, headers, body = fetch("/graph")
    assert (status, body.decode()) == (200, REFERENCE_DOT)
    assert headers["Content-Type"] == "image/svg+xml"
    assert (fake_dot / "args").read_text() == "-Kcirco -Tsvg\n"
    for output, content_type in [
        ("png", "image/png"),
        ("gif", "image/gif"),
        ("json", "application/json"),
        ("bmp", "application/octet-stream"),
        ("fig", "application/octet-stream"),
        ("ps", "application/octet-stream"),
    ]:
        status, headers, _ = fetch(f"/graph?format={output}&layout=neato")
        assert (status, headers["Content-Type"]) == (200, content_type)
        assert (fake_dot / "args").read_text() == f"-Kneato -T{output}\n"


def test_a_graph_larger_than_a_pipe_buffer_does_not_hang(
    state: State, fake_dot: Path, fetch: Fetch
) -> None:
    # Kilo writes the whole DOT into dot's stdin before reading: more than 64 KiB hangs.
    state.dot = "digraph kilo {\n" + '\t"n" [ label="x" ];\n' * 50_000 + "}\n"
    status, _, body = fetch("/graph?layout=dot")
    assert (status, len(body)) == (200, len(state.dot))


def test_a_failing_dot_is_500(fake_dot: Path, fetch: Fetch) -> None:
    (fake_dot / "fail").touch()
    assert_go_error(fetch("/graph?format=png"), 500, "unable to render graph")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("format=jpeg", "unsupported format"),
        ("format=SVG", "unsupported format"),
        ("layout=sfdp", "unsupported layout"),
        ("format=png&layout=Dot", "unsupported layout"),
    ],
)
def test_unsupported_format_or_layout_is_500(fetch: Fetch, query: str, message: str) -> None:
    assert_go_error(fetch(f"/graph?{query}"), 500, message)


def test_a_graph_that_cannot_be_built_is_500_with_the_reason(state: State, fetch: Fetch) -> None:
    # Kilo dereferences the missing local node and the client sees a dropped connection.
    state.error = LocalNodeMissing("alpha")
    assert_go_error(
        fetch("/graph?format=dot"),
        500,
        "did not find any node named 'alpha' among the ready nodes",
    )


def test_an_unexpected_failure_is_500_and_the_server_keeps_serving(
    state: State, fetch: Fetch
) -> None:
    state.error = RuntimeError("boom")
    assert_go_error(fetch("/graph"), 500, "internal server error")
    state.healthy = True
    assert fetch("/health")[0] == 200


# --- index, unknown paths, logging -----------------------------------------------------------


def test_index_page_for_root_and_unknown_paths(fetch: Fetch) -> None:
    for path in ("/", "/foo", "/health/", "/graph/x"):
        status, headers, body = fetch(path)
        assert (status, body) == (200, INDEX), path
        assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert INDEX == (
        b"<html><head><title>Internal Kilo API</title></head><body>\n"
        b"<h1>Internal Kilo API</h1>\n"
        b"<p><a href='/debug/'>/debug/ - Exposes pprof endpoints to consume via HTTP</a></p>\n"
        b"<p><a href='/graph'>/graph - Exposes Kilo mesh topology graph</a></p>\n"
        b"<p><a href='/health'>/health - Exposes health checks</a></p>\n"
        b"<p><a href='/metrics'>/metrics - Exposes Prometheus metrics</a></p>\n"
        b"</body></html>"
    )


def test_pprof_is_not_implemented(fetch: Fetch) -> None:
    assert fetch("/debug/pprof/")[0] == 501


def test_requests_are_not_logged_to_stderr(
    state: State, fetch: Fetch, capfd: pytest.CaptureFixture[str]
) -> None:
    fetch("/health")
    fetch("/nothing-here")
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


# --- listening ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        (":1107", ("", 1107)),
        ("127.0.0.1:1107", ("127.0.0.1", 1107)),
        ("[::1]:1107", ("::1", 1107)),
        ("localhost:0", ("localhost", 0)),
        (":http", ("", 80)),
    ],
)
def test_listen_addresses_are_read_like_go(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == ListenAddress(*expected)


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("1107", "address 1107: missing port in address"),
        ("::1:1107", "address ::1:1107: too many colons in address"),
        ("[::1]1107", "address [::1]1107: missing port in address"),
        (":70000", "address 70000: invalid port"),
        (":no-such-service", "lookup tcp/no-such-service: unknown port"),
    ],
)
def test_malformed_listen_addresses_fail_to_listen(listen: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HTTPServer(listen, registry=CollectorRegistry(), healthy=lambda: True, graph=str)
    assert str(caught.value) == f"failed to listen on {listen}: listen tcp: {reason}"


def test_a_port_in_use_fails_to_listen(server: HTTPServer) -> None:
    _, port = server.address
    with pytest.raises(ConfigError) as caught:
        HTTPServer(
            f"127.0.0.1:{port}", registry=CollectorRegistry(), healthy=lambda: True, graph=str
        )
    assert str(caught.value) == f"failed to listen on 127.0.0.1:{port}: Address already in use"


def test_no_host_listens_on_ipv4_and_ipv6(state: State) -> None:
    state.healthy = True
    http = HTTPServer(":0", registry=CollectorRegistry(), healthy=lambda: True, graph=str)
    http.start()
    try:
        host, port = http.address
        assert port > 0
        targets = ["127.0.0.1"] + (["::1"] if host == "::" else [])
        for target in targets:
            with socket.create_connection((target, port), timeout=10) as conn:
                conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert conn.recv(64).startswith(b"HTTP/1.1 200 "), target
    finally:
        http.stop()
    http.stop()  # idempotent


def test_a_server_that_was_never_started_can_be_stopped() -> None:
    http = HTTPServer("127.0.0.1:0", registry=CollectorRegistry(), healthy=lambda: True, graph=str)
    _, port = http.address
    http.stop()
    # The port is free again.
    HTTPServer(f"127.0.0.1:{port}", registry=CollectorRegistry(), healthy=bool, graph=str).stop()
