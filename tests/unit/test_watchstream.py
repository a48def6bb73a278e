"""The watch reader with the TLS in C (kilo.adapters.watchstream), against real sockets.

A scripted server on 127.0.0.1 (plain HTTP or TLS, certificates from the sandbox's CA)
answers each connection with the bytes a test gives: well-formed watches, error answers,
and hostile ones (bad chunk framing, endless lines, a server that never answers). The
informer's use of it against a real API server is in tests/integration/test_kubernetes.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import socket
import ssl
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from lightkube import ApiError
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core import decoders
from lightkube.resources.coordination_v1 import Lease

from kilo.adapters import apierrors, kubeconfig, kubernetes, tlsbio, watchstream
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert

Script = Callable[[socket.socket, bytes], None]


class ScriptServer:
    """Answers every connection on 127.0.0.1 with ``script(connection, request head)``."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self._script = script
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.heads: list[bytes] = []
        self.closed = threading.Event()  # a connection's client closed it
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            self.heads.append(head)
            self._script(conn, head)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> ScriptServer:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):  # wakes the blocked accept (close alone does not)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accept.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)


def node(name: str, version: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": str(version),
            "annotations": {"kilo.squat.ai/last-seen": str(version)},
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:metadata": {}}}],
        },
        "spec": {"podCIDR": "10.2.0.0/24"},
        "status": {"images": [{"names": ["x" * 100]}] * 20},
    }


def line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def chunked(body: bytes, size: int = 4096) -> bytes:
    out = b"".join(
        b"%x\r\n" % len(body[i : i + size]) + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n\r\n"


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def decode_node(raw: bytes) -> dict[str, Any]:
    return kubernetes._to_dict(decoders.decode_object(raw, kubernetes.ReadNode))


# The informer's: a Node event line in one pass, lightkube's two passes as the fallback.
INFORMER_DECODE, DECODE_EVENT = kubernetes.watch_decoders(kubernetes.ReadNode)


def expected(obj: dict[str, Any]) -> dict[str, Any]:
    """What lightkube's own watch yields for ``obj``, through the informer's _to_dict."""
    return decode_node(json.dumps(obj).encode())


def load_config(tmp_path: Path, server: str, *, user: dict[str, Any] | None = None) -> SingleConfig:
    cluster: dict[str, Any] = {"server": server}
    if (tmp_path / "ca.crt").exists():
        ca = (tmp_path / "ca.crt").read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user or {"token": "secret-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    return kubeconfig.load(str(path), environ={})


@pytest.fixture
def tls(tmp_path: Path) -> ssl.SSLContext:
    ca = CertificateAuthority.create("watch-test-ca")
    (tmp_path / "ca.crt").write_bytes(pem_cert(ca.cert))
    cert, key = ca.issue("server", server_ips=("127.0.0.1",), client=False)
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    return context


async def collect(
    config: SingleConfig | watchstream.Connection,
    *,
    path: str = "/api/v1/nodes",
    read_timeout: float = 10.0,
) -> tuple[list[watchstream.Event], BaseException | None]:
    watch = watchstream.Watch(
        config,
        path,
        {"watch": "true", "resourceVersion": "7"},
        decode=INFORMER_DECODE,
        decode_event=DECODE_EVENT,
        connect_timeout=5.0,
        read_timeout=read_timeout,
    )
    events: list[watchstream.Event] = []
    try:
        async for event in watch:
            events.append(event)
    except Exception as exc:
        return events, exc
    finally:
        await watch.aclose()
    return events, None


def run(
    config: SingleConfig, **kwargs: Any
) -> tuple[list[watchstream.Event], BaseException | None]:
    return asyncio.run(asyncio.wait_for(collect(config, **kwargs), timeout=30))


# --- the chunked body and the lines, pure --------------------------------------------------


def pieces_of(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        yield data[start:end]


@given(
    body=st.binary(max_size=3000),
    size=st.integers(1, 700),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_a_chunked_body_read_in_any_pieces_is_the_body(
    body: bytes, size: int, cuts: list[int]
) -> None:
    reader = watchstream.ChunkedBody()
    out = b"".join(reader.feed(piece) for piece in pieces_of(chunked(body, size), cuts))
    assert out == body
    assert reader.done


@given(
    lines=st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")), max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_lines_read_in_any_pieces_are_the_lines(lines: list[bytes], cuts: list[int]) -> None:
    reader = watchstream.Lines()
    data = b"".join(line + b"\n" for line in lines)
    got = [line for piece in pieces_of(data, cuts) for line in reader.feed(piece)]
    assert got == lines
    assert reader.rest() == b""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"zz\r\n", "a bad chunk-size line: b'zz'"),
        (b"-1\r\n", "a bad chunk-size line: b'-1'"),
        (b"\r\n", "a bad chunk-size line: b''"),
        (b"1" * 17 + b"\r\n", "a bad chunk-size line"),
        (b"1" * 2000, "a chunk-size line longer than 1024 bytes"),
        (b"3\r\nabcXY", "a chunk not followed by CRLF"),
        (b"%x\r\n" % (watchstream.MAX_EVENT + 1), "more than"),
    ],
)
def test_bad_chunk_framing_is_refused_bounded(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as caught:
        watchstream.ChunkedBody().feed(data)
    assert len(str(caught.value)) < 120


def test_a_line_past_the_bound_is_refused_before_it_is_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watchstream, "MAX_EVENT", 100)
    reader = watchstream.Lines()
    reader.feed(b"x" * 60)
    with pytest.raises(ValueError, match="a watch event longer than 100 bytes"):
        reader.feed(b"x" * 60)


# --- decoding an event line, pure -----------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
STRINGS = st.dictionaries(st.sampled_from(["a", "kilo.squat.ai/key", "x"]), st.text(max_size=4))
METADATA = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=4) | JSON,
        "uid": st.text(max_size=4),
        "resourceVersion": st.text(max_size=4) | JSON,
        "annotations": STRINGS | JSON,
        "labels": STRINGS | JSON,
        "managedFields": JSON,
        "finalizers": JSON,
    },
)
OBJECTS = st.fixed_dictionaries(
    {}, optional={"metadata": METADATA | JSON, "spec": JSON, "status": JSON, "kind": JSON}
)


@given(
    kind=st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"])
    | st.text(max_size=3),
    obj=OBJECTS | JSON,
)
def test_a_line_decoded_in_one_pass_is_what_lightkubes_two_passes_give(
    kind: str, obj: object
) -> None:
    """The informer decodes a Node event in one pass; whenever that gives an event, it is
    the one lightkube's decoders give. Otherwise (an ERROR, a line the typed decoder
    refuses) the watch takes lightkube's path, and its result or failure."""
    data = json.dumps({"type": kind, "object": obj}).encode()
    try:
        fast = DECODE_EVENT(data) if DECODE_EVENT is not None else None
    except (msgspec.MsgspecError, RecursionError):
        return
    if kind == "ERROR":
        assert fast is None
        return
    assert fast is not None
    event = decoders.decode_watch_event(data)
    assert fast == (event.type, decode_node(event.object))


def test_only_struct_resources_are_decoded_in_one_pass() -> None:
    assert DECODE_EVENT is not None
    assert kubernetes.watch_decoders(Lease)[1] is not None
    decode, decode_event = kubernetes.watch_decoders(kubernetes.Peer)
    assert decode_event is None
    peer = {"metadata": {"name": "p"}, "spec": {"allowedIPs": ["10.5.0.1/32"]}}
    assert decode(json.dumps(peer).encode())["spec"] == peer["spec"]


# --- watches against a server ----------------------------------------------------------------


def test_events_arrive_as_lightkube_would_give_them_over_tls(
    tmp_path: Path, tls: ssl.SSLContext
) -> None:
    nodes = [node(f"n{i}", 10 + i) for i in range(30)]
    body = b"".join(line("MODIFIED" if i else "ADDED", n) for i, n in enumerate(nodes))

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD)
        data = chunked(body, 3000)
        for i in range(0, len(data), 1000):  # framing cut anywhere, in many records
            conn.sendall(data[i : i + 1000])

    with ScriptServer(script, tls=tls) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert failure is None
    assert events == [("MODIFIED" if i else "ADDED", expected(n)) for i, n in enumerate(nodes)]
    assert "status" not in events[0][1] and "managedFields" not in events[0][1]["metadata"]
    request = server.heads[0].decode()
    assert request.startswith("GET /api/v1/nodes?watch=true&resourceVersion=7 HTTP/1.1\r\n")
    assert "Authorization: Bearer secret-token\r\n" in request


@pytest.mark.parametrize("ending", ["close_notify", "cut inside a record"])
def test_the_end_of_a_tls_stream_is_told_apart_from_a_cut(
    tmp_path: Path, tls: ssl.SSLContext, ending: str
) -> None:
    """The records are decrypted from memory (tlsbio): a server that ends its body and says
    close_notify ends the watch; one that closes inside the body, in the middle of a TLS
    record, is a disconnection after the events before it."""
    body = line("ADDED", node("a", 1)) + line("MODIFIED", node("a", 2))

    def script(conn: socket.socket, head: bytes) -> None:
        assert isinstance(conn, ssl.SSLSocket)
        if ending == "close_notify":
            conn.sendall(OK_HEAD + chunked(body))
            conn.unwrap()
            return
        # One event, not the last chunk; then a part of a record, and the socket closed.
        conn.sendall(OK_HEAD + chunked(line("ADDED", node("a", 1))).removesuffix(b"0\r\n\r\n"))
        raw = socket.socket(fileno=conn.detach())
        raw.sendall(b"\x17\x03\x03\x40\x00" + b"\0" * 100)  # a record header, 100 of 16384
        raw.close()

    with ScriptServer(script, tls=tls) as server:
        events, failure = run(load_config(tmp_path, server.url))
    if ending == "close_notify":
        assert failure is None
        assert [kind for kind, _ in events] == ["ADDED", "MODIFIED"]
    else:
        assert [kind for kind, _ in events] == ["ADDED"]
        assert isinstance(failure, watchstream.Disconnected), repr(failure)


def test_a_server_certificate_the_ca_did_not_sign_is_refused(tmp_path: Path) -> None:
    other = CertificateAuthority.create("another-ca")
    cert, key = other.issue("server", server_ips=("127.0.0.1",), client=False)
    (tmp_path / "other.crt").write_bytes(cert)
    (tmp_path / "other.key").write_bytes(key)
    (tmp_path / "ca.crt").write_bytes(pem_cert(CertificateAuthority.create("ours").cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "other.crt", tmp_path / "other.key")

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(line("ADDED", node("a", 1))))

    with ScriptServer(script, tls=context) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert events == []
    assert isinstance(failure, ssl.SSLCertVerificationError), repr(failure)


def test_a_server_url_with_a_path_prefix_keeps_it(tmp_path: Path) -> None:
    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(line("ADDED", node("a", 1))))

    with ScriptServer(script) as server:
        events, failure = run(load_config(tmp_path, server.url + "/k8s/clusters/c-1/"))
    assert failure is None and len(events) == 1
    assert server.heads[0].startswith(b"GET /k8s/clusters/c-1/api/v1/nodes?watch=true")


def test_a_body_without_chunks_is_read_until_the_server_closes_it(tmp_path: Path) -> None:
    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + line("ADDED", node("a", 1)))
        conn.sendall(json.dumps({"type": "DELETED", "object": node("a", 2)}).encode())

    with ScriptServer(script) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert failure is None
    assert [kind for kind, _ in events] == ["ADDED", "DELETED"]


def test_an_error_event_comes_after_the_events_before_it(tmp_path: Path) -> None:
    gone = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": "too old resource version: 7 (9)",
        "reason": "Expired",
        "code": 410,
    }

    def script(conn: socket.socket, head: bytes) -> None:
        body = line("ADDED", node("a", 8)) + line("ADDED", node("b", 9)) + line("ERROR", gone)
        conn.sendall(OK_HEAD + chunked(body))

    with ScriptServer(script) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert [obj["metadata"]["name"] for _, obj in events] == ["a", "b"]
    assert isinstance(failure, ApiError)
    status = apierrors.status_error(failure)
    assert status is not None and apierrors.status_code(status) == 410


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_refused_watch_is_an_http_error_with_its_message(tmp_path: Path, framing: str) -> None:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": 'nodes is forbidden: User "kilo" cannot watch resource "nodes"',
        "reason": "Forbidden",
        "code": 403,
    }
    body = json.dumps(status).encode()

    def script(conn: socket.socket, head: bytes) -> None:
        if framing == "chunked":
            conn.sendall(
                b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, 50)
            )
        else:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    with ScriptServer(script) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert events == []
    assert isinstance(failure, httpx2.HTTPStatusError)
    described = apierrors.describe_error(failure, server.url, verb="watch", resource="nodes")
    assert described == (
        'forbidden: cannot watch nodes (nodes is forbidden: User "kilo" cannot watch resource '
        '"nodes")'
    )


def test_a_401_rereads_the_token_file_and_retries_once(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old")

    def script(conn: socket.socket, head: bytes) -> None:
        if b"Bearer new" not in head:
            token.write_text("new")  # rotated, as the kubelet rotates a service account's
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            return
        conn.sendall(OK_HEAD + chunked(line("ADDED", node("a", 1))))

    with ScriptServer(script) as server:
        config = load_config(tmp_path, server.url, user={"tokenFile": str(token)})
        events, failure = run(config)
    assert failure is None and len(events) == 1
    assert len(server.heads) == 2


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        (OK_HEAD + b'5\r\n{"typ', watchstream.Disconnected, "inside the watch"),
        (b"", watchstream.Disconnected, "before it answered"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", watchstream.ProtocolError, "not an HTTP/1.1 status"),
        (OK_HEAD + chunked(b"not json\n"), msgspec.DecodeError, ""),
        (OK_HEAD + b"zz\r\n", watchstream.ProtocolError, "a bad chunk-size line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000, watchstream.ProtocolError, "head"),
        # A status of digits that are not ASCII (latin-1 superscripts): int() refuses them,
        # and said all 2000 of them.
        (b"HTTP/1.1 2\xb2" + b"9" * 2000 + b" OK\r\n\r\n", watchstream.ProtocolError, "status"),
    ],
)
def test_a_broken_answer_ends_the_watch_with_a_bounded_error(
    tmp_path: Path, answer: bytes, kind: type[BaseException], message: str
) -> None:
    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(answer)

    with ScriptServer(script) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert events == []
    assert isinstance(failure, kind), repr(failure)
    assert message in str(failure)
    assert len(str(failure)) < 300
    assert isinstance(failure, apierrors.REQUEST_ERRORS)  # the informer retries, bounded


def test_an_endless_line_ends_the_watch_at_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watchstream, "MAX_EVENT", 64 * 1024)
    sent = threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD)
        piece = b"%x\r\n" % 8192 + b"x" * 8192 + b"\r\n"
        for _ in range(10_000):  # 80 MB if nobody stopped reading
            conn.sendall(piece)
        sent.set()

    with ScriptServer(script) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert events == []
    assert isinstance(failure, watchstream.ProtocolError)
    assert str(failure) == "a watch event longer than 65536 bytes"
    assert not sent.is_set()


def test_a_consumer_behind_pauses_the_reading_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watchstream, "MAX_PENDING", 8)
    monkeypatch.setattr(watchstream, "READ_SIZE", 4096)
    nodes = [node(f"n{i}", i + 1) for i in range(200)]
    per_read = 4096 // len(line("ADDED", nodes[0])) + 1

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(b"".join(line("ADDED", n) for n in nodes)))

    async def slow(config: SingleConfig) -> tuple[list[str], int]:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=10
        )
        names, most = [], 0
        async for _, obj in watch:
            most = max(most, len(watch._events))
            names.append(obj["metadata"]["name"])
            await asyncio.sleep(0)
        await watch.aclose()
        return names, most

    with ScriptServer(script) as server:
        names, most = asyncio.run(asyncio.wait_for(slow(load_config(tmp_path, server.url)), 30))
    assert names == [n["metadata"]["name"] for n in nodes]
    assert 8 <= most <= 8 + per_read  # it did fall behind; at most one read past the bound


@pytest.mark.parametrize("stage", ["opening", "streaming"])
def test_closing_a_watch_ends_it_at_once_and_closes_the_connection(
    tmp_path: Path, tls: ssl.SSLContext, stage: str
) -> None:
    hold = threading.Event()
    peer_closed = threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        if stage == "streaming":
            conn.sendall(OK_HEAD + chunked(line("ADDED", node("a", 1)))[:-5])
        hold.set()
        try:
            while conn.recv(1024):  # until the client goes away
                pass
        except OSError:
            pass
        peer_closed.set()

    async def scenario(config: SingleConfig) -> None:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=600
        )
        task = asyncio.ensure_future(anext(watch))
        await asyncio.to_thread(hold.wait, 10)
        if stage == "streaming":
            await task  # the one event; the watch then waits for more
            task = asyncio.ensure_future(anext(watch))  # reading the socket from the loop
        task.cancel()
        await watch.aclose()
        with pytest.raises(asyncio.CancelledError):
            await task

    with ScriptServer(script, tls=tls) as server:
        asyncio.run(asyncio.wait_for(scenario(load_config(tmp_path, server.url)), 30))
        # The server sees the connection end although the read timeout is 10 minutes.
        assert peer_closed.wait(10)


# --- found in review: hostile answers that must not crash the informer ----------------------


def deep_line(depth: int) -> bytes:
    return (
        b'{"type":"ADDED","object":{"metadata":{"name":"deep"},"x":'
        + b"[" * depth
        + b"]" * depth
        + b"}}\n"
    )


def test_an_event_nested_past_the_decoders_depth_is_a_request_error(tmp_path: Path) -> None:
    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(line("ADDED", node("a", 1)) + deep_line(100_000)))

    with ScriptServer(script) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert len(events) == 1
    assert failure is not None
    # The informer catches REQUEST_ERRORS and retries; anything else ends the agent.
    assert isinstance(failure, apierrors.REQUEST_ERRORS), repr(failure)
    config = load_config(tmp_path, server.url)
    described = apierrors.describe_failure(failure, config, verb="watch", resource="nodes")
    assert described.startswith(f"{server.url} did not answer like a Kubernetes API server")


def listing_then(watch_body: bytes) -> Script:
    """A server that lists one Node and answers every watch with ``watch_body``."""
    listing = json.dumps(
        {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"}, "items": []}
    ).encode()

    def script(conn: socket.socket, head: bytes) -> None:
        if b"watch=true" in head.split(b"\r\n", 1)[0]:
            conn.sendall(OK_HEAD + chunked(watch_body))
        else:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(listing) + listing
            )

    return script


async def informer_until_reported(
    config: SingleConfig, errors: list[str], *, until: asyncio.Future[Any] | None = None
) -> None:
    """Run a Node informer until it reports an error (appended to ``errors``) or ``until``
    completes, then close it; what ended the informer, if anything, is raised."""
    from lightkube import AsyncClient

    reported = asyncio.Event()

    def on_error(text: str) -> None:
        errors.append(text)
        reported.set()

    client = AsyncClient(config, trust_env=False)
    informer = kubernetes.Informer(
        client, "nodes", server=str(config.cluster.server), on_error=on_error
    )
    events = informer.events()
    task = asyncio.ensure_future(anext(events))
    waiter = asyncio.ensure_future(reported.wait())
    waits: set[asyncio.Future[Any]] = {task, waiter} | ({until} if until is not None else set())
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what ended the informer
    task.cancel()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await events.aclose()
    await client.aclose()


@pytest.mark.parametrize(
    ("status", "said"),
    [
        ({"kind": "Status", "message": "etcd is unhappy"}, "etcd is unhappy"),
        ({"kind": "Status", "code": 500}, "(HTTP 500)"),
        ({}, "cannot watch nodes on"),
    ],
)
def test_an_error_event_without_a_code_or_message_is_reported_not_raised(
    tmp_path: Path, status: dict[str, Any], said: str
) -> None:
    """A Status in an ERROR event need not carry a code or a message; the informer's error
    handling read the HTTP response behind it, which an ERROR event has none of."""
    errors: list[str] = []

    with ScriptServer(listing_then(line("ERROR", status))) as server:
        config = load_config(tmp_path, server.url)
        asyncio.run(asyncio.wait_for(informer_until_reported(config, errors), 30))
    assert errors, "the informer did not report the ERROR event"
    assert said in errors[0]


def test_a_credential_plugin_runs_once_for_all_the_watches_of_an_informer(
    tmp_path: Path,
) -> None:
    """As lightkube's client keeps a plugin's token until a 401: a watch is opened every
    5-10 minutes per resource on every node, and a plugin (a cloud's token helper) is
    not cheap."""
    from lightkube import AsyncClient

    runs = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, pathlib\n"
        f"with open({str(runs)!r}, 'a') as f: f.write('x')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',"
        " 'kind': 'ExecCredential', 'status': {'token': 'plugged'}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin)],
        }
    }
    watches = threading.Event()
    script = listing_then(b"")  # every watch ends at once: the informer opens another

    def counting(conn: socket.socket, head: bytes) -> None:
        if sum(b"watch=true" in h for h in server.heads) >= 4:
            watches.set()
        script(conn, head)

    async def scenario(config: SingleConfig) -> None:
        client = AsyncClient(config, trust_env=False)
        informer = kubernetes.Informer(client, "nodes", server=str(config.cluster.server))
        events = informer.events()
        task = asyncio.ensure_future(anext(events))
        await asyncio.to_thread(watches.wait, 20)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await events.aclose()
        await client.aclose()

    with ScriptServer(counting) as server:
        config = load_config(tmp_path, server.url, user=user)
        asyncio.run(asyncio.wait_for(scenario(config), 30))
    assert watches.is_set()
    assert all(b"Bearer plugged" in head for head in server.heads)
    # Once for the client's list, once for the informer's watches.
    assert runs.read_text() == "xx"


def test_the_events_waiting_for_a_consumer_are_bounded_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_PENDING counts events: 4096 of up to MAX_EVENT (4 MiB) each would be 16 GiB
    decoded before the reading pauses. The bytes they came from bound them too."""
    monkeypatch.setattr(watchstream, "MAX_PENDING_BYTES", 64 * 1024)
    monkeypatch.setattr(watchstream, "READ_SIZE", 4096)
    big = [node(f"n{i}", i + 1) | {"spec": {"podCIDR": "x" * 8000}} for i in range(60)]
    size = len(line("ADDED", big[0]))

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(b"".join(line("ADDED", n) for n in big)))

    async def slow(config: SingleConfig) -> tuple[list[str], int]:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=10
        )
        names, most = [], 0
        async for _, obj in watch:
            most = max(most, len(watch._events))
            names.append(obj["metadata"]["name"])
            for _ in range(20):  # the loop reads meanwhile, as far as the bound lets it
                await asyncio.sleep(0)
        await watch.aclose()
        return names, most

    with ScriptServer(script) as server:
        names, most = asyncio.run(asyncio.wait_for(slow(load_config(tmp_path, server.url)), 30))
    assert names == [n["metadata"]["name"] for n in big]
    assert most * size <= 64 * 1024 + 4096 + size  # one read past the bound, one event cut


def test_a_flood_of_events_gives_the_loop_back_between_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What waits in the socket is read a bounded amount per wake: the loop also renews
    the leader's Lease and answers the health checks, and the consumer takes events as
    they are decoded instead of after the whole backlog."""
    monkeypatch.setattr(watchstream, "READ_SIZE", 4096)
    monkeypatch.setattr(watchstream, "MAX_READ_PER_WAKE", 8192)
    nodes = [node(f"n{i}", i + 1) for i in range(40)]
    size = len(line("ADDED", nodes[0]))
    go, sent = threading.Event(), threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(line("ADDED", nodes[0])).removesuffix(b"0\r\n\r\n"))
        go.wait(10)
        conn.sendall(chunked(b"".join(line("ADDED", n) for n in nodes[1:])))
        sent.set()

    async def scenario(config: SingleConfig) -> tuple[list[str], int]:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=10
        )
        names = [(await anext(watch))[1]["metadata"]["name"]]
        watch._pause()  # the backlog builds up in the socket
        go.set()
        await asyncio.to_thread(sent.wait, 10)
        watch._resume()
        names.append((await anext(watch))[1]["metadata"]["name"])
        backlog = len(watch._events)
        names += [obj["metadata"]["name"] async for _, obj in watch]
        await watch.aclose()
        return names, backlog

    with ScriptServer(script) as server:
        config = load_config(tmp_path, server.url)
        names, backlog = asyncio.run(asyncio.wait_for(scenario(config), 30))
    assert names == [n["metadata"]["name"] for n in nodes]
    # Read in slices: the reader's wake and the resumption's may both come before the
    # consumer's; without slices, the whole backlog (39 events) was read at once.
    assert backlog * size <= 2 * (8192 + 4096) + size


@pytest.mark.parametrize("stage", ["handshake", "head"])
def test_closing_a_watch_wakes_an_opening_held_by_a_silent_server(
    tmp_path: Path, tls: ssl.SSLContext, stage: str
) -> None:
    """A server that accepts and then says nothing (or a byte at a time) holds the opening
    thread for as long as it likes when only the socket timeout ends it; the informer's
    timeout closes the watch, and that must end the thread's connection too."""
    accepted, peer_closed = threading.Event(), threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            if stage == "head":
                conn = tls.wrap_socket(conn, server_side=True)
            accepted.set()
            while conn.recv(65536):  # the ClientHello or the request, then silence
                pass
        except OSError:
            pass
        finally:
            peer_closed.set()
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def scenario(config: SingleConfig) -> None:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=600, read_timeout=600
        )
        task = asyncio.ensure_future(anext(watch))
        await asyncio.to_thread(accepted.wait, 10)
        task.cancel()
        await watch.aclose()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        config = load_config(tmp_path, f"https://127.0.0.1:{listener.getsockname()[1]}")
        asyncio.run(asyncio.wait_for(scenario(config), 30))
        assert peer_closed.wait(10)
    finally:
        listener.close()
        thread.join(timeout=5)


def test_a_watch_that_ends_at_once_without_an_event_is_retried_with_backoff(
    tmp_path: Path,
) -> None:
    """As client-go's reflector ("very short watch"): a server or proxy that ends every
    watch at once had every agent reconnect in a tight loop, a thread, a TLS handshake
    and a request each, against the API server."""
    errors: list[str] = []
    script = listing_then(b"")  # every watch ends at once, without an event
    hammered = threading.Event()

    def counting(conn: socket.socket, head: bytes) -> None:
        if sum(b"watch=true" in h for h in server.heads) >= 5:
            hammered.set()
        script(conn, head)

    async def scenario(config: SingleConfig) -> None:
        flood = asyncio.ensure_future(asyncio.to_thread(hammered.wait, 20))
        await informer_until_reported(config, errors, until=flood)
        hammered.set()
        await flood

    with ScriptServer(counting) as server:
        asyncio.run(asyncio.wait_for(scenario(load_config(tmp_path, server.url)), 30))
        watches = sum(b"watch=true" in h for h in server.heads)
    assert errors == [f"the watch of nodes on {server.url} ended at once without an event"]
    assert watches == 1


class Pieces:
    """A socket whose reads return the given pieces, then EOF."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = [p for p in pieces if p]

    def recv(self, size: int) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""

    def settimeout(self, timeout: float | None) -> None:
        assert timeout is not None and timeout > 0  # the opening's time left


@given(cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_a_head_read_in_any_pieces_is_the_head_and_the_rest(cuts: list[int]) -> None:
    answer = OK_HEAD + b"5\r\nhello\r\n"

    async def read() -> tuple[int, dict[str, str], bytes]:
        watch = watchstream.Watch(
            None,  # type: ignore[arg-type]  # not opened: the head is read from Pieces
            "/",
            {},
            decode=decode_node,
            connect_timeout=1,
            read_timeout=1,
        )
        watch._open_deadline = time.monotonic() + 60
        return watch._head(Pieces(pieces_of(answer, cuts)))  # type: ignore[arg-type]

    status, headers, rest = asyncio.run(read())
    assert status == 200
    assert headers == {"content-type": "application/json", "transfer-encoding": "chunked"}
    assert b"5\r\nhello\r\n".startswith(rest)  # what came with the head's last read


@pytest.mark.parametrize("when", ["first", "after a 401"])
def test_a_failing_credential_plugin_is_told_apart_from_the_server(
    tmp_path: Path, when: str
) -> None:
    """apierrors finds the plugin's failure by lightkube's frames in its traceback, which
    must survive the opening thread."""
    runs = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, pathlib, sys\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = len(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text('x' * (n + 1))\n"
        f"if {when == 'first'} or n:\n"
        "    sys.exit('the token helper: token expired')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',"
        " 'kind': 'ExecCredential', 'status': {'token': 'stale'}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin)],
        }
    }

    def script(conn: socket.socket, head: bytes) -> None:
        if when == "first" or len(server.heads) > 1:
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        else:
            conn.sendall(OK_HEAD + chunked(b""))

    async def watches(config: SingleConfig) -> tuple[list[watchstream.Event], BaseException | None]:
        # The informer's watches share the token: the second one's 401 runs the plugin.
        connection = watchstream.Connection(config)
        for _ in range(1 if when == "first" else 2):
            events, failure = await collect(connection)
        return events, failure

    with ScriptServer(script) as server:
        config = load_config(tmp_path, server.url, user=user)
        events, failure = asyncio.run(asyncio.wait_for(watches(config), 30))
    assert runs.read_text() == ("x" if when == "first" else "xx")
    assert events == [] and failure is not None
    described = apierrors.credential_error(failure, config)
    assert described is not None, repr(failure)
    assert described.endswith("exited with status 1: the token helper: token expired")
    assert apierrors.is_refusal(failure, config)


@pytest.mark.parametrize("stage", ["opening", "streaming"])
def test_a_consumer_waiting_when_another_task_closes_the_watch_ends(
    tmp_path: Path, stage: str
) -> None:
    """aclose from another task (a shutdown) ends a waiting __anext__ instead of leaving it
    waiting for ever."""
    hold = threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        if stage == "streaming":
            conn.sendall(OK_HEAD + chunked(line("ADDED", node("a", 1))).removesuffix(b"0\r\n\r\n"))
        hold.set()
        with contextlib.suppress(OSError):
            while conn.recv(1024):
                pass

    async def scenario(config: SingleConfig) -> None:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=600
        )
        if stage == "streaming":
            await anext(watch)  # the one event; the watch then waits for more
        task = asyncio.ensure_future(anext(watch))
        await asyncio.to_thread(hold.wait, 10)  # and the task waits (opening, or for more)
        await watch.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(task, 10)

    with ScriptServer(script) as server:
        asyncio.run(asyncio.wait_for(scenario(load_config(tmp_path, server.url)), 30))


def test_a_consumer_cancelled_while_the_watch_opens_may_ask_again(tmp_path: Path) -> None:
    """Cancelling __anext__ while the request is being opened cancelled the opening's
    future: the watch was opened but never read, and the next __anext__ waited for ever."""
    go = threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        go.wait(10)
        conn.sendall(OK_HEAD + chunked(line("ADDED", node("a", 1))))

    async def scenario(config: SingleConfig) -> list[watchstream.Event]:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=10
        )
        task = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0)  # the opening thread is started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        go.set()
        events = [event async for event in watch]  # guarded by the wait_for below
        await watch.aclose()
        return events

    with ScriptServer(script) as server:
        events = asyncio.run(asyncio.wait_for(scenario(load_config(tmp_path, server.url)), 30))
    assert [obj["metadata"]["name"] for _, obj in events] == ["a"]


def test_a_credential_with_a_line_break_is_not_sent(tmp_path: Path) -> None:
    """httpx keeps header values as given and h11 refused them when lightkube sent the
    request; the request head written here must refuse them too (a token file of two lines
    would otherwise add a header of its second line), without saying the token."""
    token = tmp_path / "token"
    token.write_text("secret\nX-Injected: 1\n")

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(b""))

    with ScriptServer(script) as server:
        config = load_config(tmp_path, server.url, user={"tokenFile": str(token)})
        events, failure = run(config)
    assert server.heads == [] and events == []
    assert isinstance(failure, httpx2.HTTPError), repr(failure)
    assert "Authorization" in str(failure) and "secret" not in str(failure)


def test_a_connection_silent_past_the_read_timeout_ends_the_watch(tmp_path: Path) -> None:
    # A vanished host or a dropped NAT entry: the socket stays open and nothing arrives.
    release = threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + b"%x\r\n" % len(line("ADDED", node("a", 1))))
        conn.sendall(line("ADDED", node("a", 1)) + b"\r\n")
        release.wait(30)

    try:
        with ScriptServer(script) as server:
            events, failure = run(load_config(tmp_path, server.url), read_timeout=0.3)
    finally:
        release.set()
    assert [kind for kind, _ in events] == ["ADDED"]
    assert isinstance(failure, TimeoutError)
    assert str(failure).startswith("the watch was silent for ")
    assert isinstance(failure, apierrors.REQUEST_ERRORS)


def test_a_consumer_behind_for_longer_than_the_read_timeout_is_not_silence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watchstream, "MAX_PENDING", 4)
    monkeypatch.setattr(watchstream, "READ_SIZE", 4096)
    nodes = [node(f"n{i}", i + 1) for i in range(40)]

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(b"".join(line("ADDED", n) for n in nodes)))

    async def behind(config: SingleConfig) -> list[str]:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=0.2
        )
        names: list[str] = []
        async for _, obj in watch:
            if not names:
                # Busy elsewhere (a long apply) while the reading is paused for it.
                await asyncio.sleep(0.5)
            names.append(obj["metadata"]["name"])
        await watch.aclose()
        return names

    with ScriptServer(script) as server:
        names = asyncio.run(asyncio.wait_for(behind(load_config(tmp_path, server.url)), 30))
    assert names == [n["metadata"]["name"] for n in nodes]


def test_a_line_in_many_small_pieces_is_held_in_about_its_size() -> None:
    """A server writing its line a few bytes a TLS record (each record a read of its
    own): the pieces are joined as they come, instead of kept as a bytes object each
    (about 40 bytes besides the data), so MAX_EVENT bounds a line's memory, not 20 times it."""
    lines = watchstream.Lines()
    count = 50_000
    tracemalloc.start()
    try:
        for i in range(count):
            assert lines.feed(bytes([97 + i % 26, 98])) == []  # a new object each, as a read
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * count * 2
    whole = b"".join(bytes([97 + i % 26, 98]) for i in range(count)) + b"c"
    assert lines.feed(b"c\nd") == [whole]
    assert lines.rest() == b"d"


def test_a_wake_reads_a_bounded_amount_of_the_socket_through_tls(
    tmp_path: Path, tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server writing its body a byte a TLS record (22 bytes of record each): a wake
    reads MAX_READ_PER_WAKE of the socket, not MAX_READ_PER_WAKE of the body (20 times
    that in the socket, or unbounded with records without data between them)."""
    monkeypatch.setattr(tlsbio, "READ_SIZE", 1024)
    monkeypatch.setattr(watchstream, "MAX_READ_PER_WAKE", 512)
    first, second = line("ADDED", node("a", 1)), line("MODIFIED", node("a", 2))
    go, sent = threading.Event(), threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        conn.sendall(OK_HEAD + chunked(first).removesuffix(b"0\r\n\r\n"))
        go.wait(10)
        body = chunked(second)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # full segments
        for i in range(len(body)):
            conn.sendall(body[i : i + 1])  # a record each
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        sent.set()

    wakes: list[int] = []
    fill, readable = tlsbio.TLSSocket._fill, watchstream.Watch._readable

    def counted_fill(self: tlsbio.TLSSocket) -> bool:
        before = self._incoming.pending
        more = fill(self)
        if wakes:
            wakes[-1] += self._incoming.pending - before
        return more

    def counted_readable(self: watchstream.Watch) -> None:
        wakes.append(0)
        readable(self)

    async def scenario(config: SingleConfig) -> str:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=10
        )
        assert (await anext(watch))[0] == "ADDED"
        watch._pause()  # the records build up in the socket
        go.set()
        await asyncio.to_thread(sent.wait, 10)
        monkeypatch.setattr(tlsbio.TLSSocket, "_fill", counted_fill)
        monkeypatch.setattr(watchstream.Watch, "_readable", counted_readable)
        watch._resume()
        kind = (await anext(watch))[0]
        await watch.aclose()
        return kind

    with ScriptServer(script, tls=tls) as server:
        config = load_config(tmp_path, server.url)
        kind = asyncio.run(asyncio.wait_for(scenario(config), 30))
    assert kind == "MODIFIED"
    assert sum(wakes) > 20 * len(second)  # the records were read
    assert max(wakes) <= 512 + 1024  # MAX_READ_PER_WAKE, and the read that passed it


def test_a_body_dribbled_a_byte_a_record_is_read_without_spinning(
    tmp_path: Path, tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server (or a middlebox) writing a byte a TLS record and a record a segment: the
    events come whole, and the reader reads each record once and waits for the next: its
    reads are counted, two a record at most (the record, the read finding nothing)."""
    body = OK_HEAD + chunked(line("ADDED", node("a", 1)) + line("MODIFIED", node("a", 2)), 700)
    reads = 0
    recv = tlsbio.TLSSocket.recv

    def counted(self: tlsbio.TLSSocket, size: int) -> bytes:
        nonlocal reads
        reads += 1
        return recv(self, size)

    monkeypatch.setattr(tlsbio.TLSSocket, "recv", counted)

    def script(conn: socket.socket, head: bytes) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(body)):
            conn.sendall(body[i : i + 1])

    with ScriptServer(script, tls=tls) as server:
        events, failure = run(load_config(tmp_path, server.url))
    assert failure is None
    assert events == [("ADDED", expected(node("a", 1))), ("MODIFIED", expected(node("a", 2)))]
    assert reads <= 2 * len(body) + 10


# --- the opening in all: a server that accepts a watch and does not answer it -----------------


@pytest.mark.parametrize("how", ["silent", "a byte at a time"])
def test_an_answer_that_does_not_come_ends_the_opening_in_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A hung API server behind a load balancer accepts the watch and never answers, or a
    server dribbles its head: the opening ends within MAX_OPEN, not the body's read
    timeout (minutes), and the informer can retry on a new connection."""
    monkeypatch.setattr(watchstream, "MAX_OPEN", 0.5)
    stop = threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        if how == "silent":
            conn.recv(1)  # until the client gives up
            return
        for byte in OK_HEAD[:-1]:  # never the end of the head
            conn.sendall(bytes([byte]))
            if stop.wait(0.05):
                return

    with ScriptServer(script) as server:
        events, failure = run(load_config(tmp_path, server.url), read_timeout=600)
        stop.set()
    assert events == []
    assert isinstance(failure, TimeoutError), repr(failure)
    assert str(failure) == "the server did not answer the watch within 0.5 s"


def test_a_tls_handshake_dribbled_a_byte_at_a_time_ends_in_the_openings_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read of the handshake has the connect timeout; all of it the opening's."""
    monkeypatch.setattr(watchstream, "MAX_OPEN", 0.5)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def dribble() -> None:
        conn, _ = listener.accept()
        with conn:
            # A TLS record header (a handshake record of 16 KB) a byte at a time, and zeros:
            # never a whole record.
            for byte in b"\x16\x03\x03\x40\x00" + b"\0" * 1000:
                conn.sendall(bytes([byte]))
                if stop.wait(0.05):
                    return

    thread = threading.Thread(target=dribble)
    thread.start()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        (tmp_path / "ca.crt").write_bytes(pem_cert(CertificateAuthority.create("ca").cert))
        events, failure = run(load_config(tmp_path, url), read_timeout=600)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert events == []
    assert isinstance(failure, TimeoutError), repr(failure)
    assert str(failure) == "the TLS handshake took too long"


def _low_water(watch: watchstream.Watch) -> int:
    assert watch._sock is not None
    return watchstream._raw(watch._sock).getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def _chunk(*nodes: dict[str, Any]) -> bytes:
    return b"".join(chunked(line("ADDED", n)).removesuffix(b"0\r\n\r\n") for n in nodes)


class Busy:
    """A watch made busy: the server sends one event, then (once the consumer had it, so
    that the loop's reader counts from there) one that begins a pacing window, ten in
    that window, and after it one more, whose arrival finds the window was busy."""

    EVENTS = 13

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(watchstream, "PACE_WINDOW", 0.5)
        monkeypatch.setattr(watchstream, "BUSY_EVENTS", 5)
        monkeypatch.setattr(watchstream, "GATHER", 0.05)
        self.nodes = [node(f"n{i}", i + 1) for i in range(self.EVENTS + 2)]
        self.acks = [threading.Event() for _ in range(4)]

    def serve(self, conn: socket.socket) -> None:
        conn.sendall(OK_HEAD + _chunk(self.nodes[0]))
        self.acks[0].wait(10)
        conn.sendall(_chunk(self.nodes[1]))
        self.acks[1].wait(10)
        conn.sendall(_chunk(*self.nodes[2:12]))
        time.sleep(0.6)  # the window ends (two windows would be a quiet gap)
        conn.sendall(_chunk(self.nodes[12]))

    async def take(self, watch: watchstream.Watch) -> list[str]:
        names = []
        for i in range(self.EVENTS):
            names.append((await anext(watch))[1]["metadata"]["name"])
            if i < 2:
                self.acks[i].set()
        return names

    def release(self) -> None:
        for ack in self.acks:
            ack.set()


@pytest.mark.parametrize("transport", ["tls", "plain"])
def test_a_busy_watch_is_read_gathered_and_per_arrival_again_when_quiet(
    tmp_path: Path, tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """At 5000 nodes the Node watch brings 167 check-ins a second: read on a timer while
    busy (the socket's low-water mark up, so it does not wake the loop per record), per
    arrival again once quiet, and nothing lost or reordered on the way."""
    busy = Busy(monkeypatch)
    nodes = busy.nodes

    def script(conn: socket.socket, head: bytes) -> None:
        busy.serve(conn)
        busy.acks[2].wait(10)
        conn.sendall(_chunk(nodes[13]))  # far below the low-water mark: read by the timer
        busy.acks[3].wait(10)
        conn.sendall(_chunk(nodes[14]) + b"0\r\n\r\n")

    async def scenario(config: SingleConfig) -> tuple[list[str], list[object]]:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=10
        )
        names = await busy.take(watch)
        seen: list[object] = [(watch._gathering is not None, _low_water(watch))]
        busy.acks[2].set()
        names.append((await anext(watch))[1]["metadata"]["name"])
        while watch._gathering is not None:  # a window without a busy count ends it
            await asyncio.sleep(0.02)
        seen.append(_low_water(watch))
        busy.acks[3].set()
        names += [obj["metadata"]["name"] async for _, obj in watch]
        seen.append(watch._gathering)
        await watch.aclose()
        return names, seen

    with ScriptServer(script, tls=tls if transport == "tls" else None) as server:
        config = load_config(tmp_path, server.url)
        try:
            names, seen = asyncio.run(asyncio.wait_for(scenario(config), 30))
        finally:
            busy.release()
    assert names == [n["metadata"]["name"] for n in nodes]
    assert seen == [(True, watchstream.GATHER_BYTES), 1, None]


def test_a_watch_that_ends_while_gathered_ends_and_stops_its_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = Busy(monkeypatch)
    end = threading.Event()

    def script(conn: socket.socket, head: bytes) -> None:
        busy.serve(conn)
        end.wait(10)
        conn.sendall(b"0\r\n\r\n")

    async def scenario(config: SingleConfig) -> tuple[list[str], bool, object]:
        watch = watchstream.Watch(
            config, "/api/v1/nodes", {}, decode=decode_node, connect_timeout=5, read_timeout=10
        )
        names = await busy.take(watch)
        gathered = watch._gathering is not None
        end.set()
        names += [obj["metadata"]["name"] async for _, obj in watch]
        left = watch._gathering
        await watch.aclose()
        return names, gathered, left

    with ScriptServer(script) as server:
        try:
            names, gathered, left = asyncio.run(
                asyncio.wait_for(scenario(load_config(tmp_path, server.url)), 30)
            )
        finally:
            busy.release()
            end.set()
    assert names == [n["metadata"]["name"] for n in busy.nodes[: Busy.EVENTS]]
    assert gathered and left is None
