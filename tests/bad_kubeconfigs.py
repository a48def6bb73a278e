"""Bad kubeconfigs: files that are wrong in every way a user can get one wrong, with the
message each must give (one line naming the file and what is wrong, from
``kilo.adapters.kubeconfig.load``); the YAML alias bomb they and cluster dumps must survive;
and a local HTTP server that answers every request with an error.

``write(name, directory)`` writes case ``name`` into ``directory`` and returns the path to
pass as ``--kubeconfig`` and the expected message. ``ENTRY_POINT_CASES`` are the ones the
entry-point tests run through ``kgctl``, ``kg`` and ``kg webhook`` as subprocesses; the
rest are checked by ``tests/unit/test_kubeconfig.py`` only.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

SERVER = "https://127.0.0.1:6443"

# The 9 x 9 x ... "billion laughs": 300 bytes that expand to 9^9 (387 million) strings.
BOMB = "\n".join(
    [
        'a: &a ["x","x","x","x","x","x","x","x","x"]',
        *(
            f"{name}: &{name} [{','.join([f'*{previous}'] * 9)}]"
            for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


def config(
    *,
    server: object = SERVER,
    cluster: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    current: str | None = "ctx",
) -> dict[str, Any]:
    """A valid kubeconfig (cluster "c", user "u", context "ctx"), with parts replaced."""
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": server}}],
        "users": [{"name": "u", "user": user or {"token": "t"}}],
        "contexts": [{"name": "ctx", "context": context or {"cluster": "c", "user": "u"}}],
    }
    if current is not None:
        document["current-context"] = current
    return document


def _dump(document: object) -> bytes:
    return yaml.safe_dump(document).encode()


# Each case: (what the file holds, given the directory; the message, given the path).
_Content = Callable[[Path], bytes | None]  # None: the path is a directory / is missing
_Message = Callable[[Path], str]

CASES: dict[str, tuple[_Content, _Message]] = {
    "binary": (
        lambda d: bytes(range(128, 256)),
        lambda p: f"kubeconfig {p} is not UTF-8 text (invalid start byte at byte 0)",
    ),
    "control-character": (
        lambda d: b"apiVersion: v1\nkind: \x00Config\n",
        lambda p: (
            f"kubeconfig {p} is not valid YAML at line 2, column 7: it holds the control "
            "character #x0000 (is it a binary file?)"
        ),
    ),
    "deeply-nested": (
        lambda d: b"[" * 100_000 + b"]" * 100_000,
        lambda p: (
            f"kubeconfig {p} is nested more than 100 levels deep at line 1, column 101; refusing it"
        ),
    ),
    "alias-bomb": (
        lambda d: BOMB.encode(),
        lambda p: (
            f"kubeconfig {p}: YAML aliases expand to more than 101000 values; refusing it "
            "(a kubeconfig needs no aliases)"
        ),
    ),
    "over-the-size-cap": (
        lambda d: b"#" * (16 * 1024 * 1024) + b"\n",
        lambda p: f"kubeconfig {p} is larger than 16 MiB; refusing it",
    ),
    "invalid-yaml": (
        lambda d: b"clusters: [\n",
        lambda p: (
            f"kubeconfig {p} is not valid YAML at line 2, column 1: did not find expected "
            "node content"
        ),
    ),
    "two-documents": (
        lambda d: _dump(config()) + b"---\n" + _dump(config()),
        lambda p: f"kubeconfig {p} holds 2 YAML documents; expected one",
    ),
    "empty": (lambda d: b"", lambda p: f"kubeconfig {p} is empty"),
    "not-a-mapping": (
        lambda d: b"- clusters\n",
        lambda p: f"kubeconfig {p} is not a kubeconfig (a list, not a mapping)",
    ),
    "clusters-not-a-list": (
        lambda d: b"clusters: {c: {server: https://k}}\n",
        lambda p: f"kubeconfig {p}: clusters is not a list",
    ),
    "entry-not-a-mapping": (
        lambda d: _dump({**config(), "clusters": [3]}),
        lambda p: f"kubeconfig {p}: clusters[0] is a number, not a mapping",
    ),
    "null-entry": (
        lambda d: _dump({**config(), "contexts": [None]}),
        lambda p: f"kubeconfig {p}: contexts[0] is null, not a mapping",
    ),
    "user-not-a-mapping": (
        lambda d: _dump({**config(), "users": [{"name": "u", "user": "token"}]}),
        lambda p: f"kubeconfig {p}: users[0].user is a string, not a mapping",
    ),
    "no-current-context": (
        lambda d: _dump(config(current=None)),
        lambda p: f"kubeconfig {p} sets no current-context",
    ),
    "missing-current-context": (
        lambda d: _dump(config(current="nowhere")),
        lambda p: f'kubeconfig {p}: the current-context "nowhere" is not one of its contexts',
    ),
    "missing-cluster": (
        lambda d: _dump(config(context={"cluster": "ghost", "user": "u"})),
        lambda p: f'kubeconfig {p}: context "ctx" names the cluster "ghost", which is not defined',
    ),
    "missing-user": (
        lambda d: _dump(config(context={"cluster": "c", "user": "ghost"})),
        lambda p: f'kubeconfig {p}: context "ctx" names the user "ghost", which is not defined',
    ),
    "context-without-cluster": (
        lambda d: _dump(config(context={"user": "u"})),
        lambda p: f'kubeconfig {p}: context "ctx": Object missing required field `cluster`',
    ),
    "server-bracket": (
        lambda d: _dump(config(server="http://[::1")),
        lambda p: (
            f'kubeconfig {p}: cluster "c": server "http://[::1" is not a valid URL '
            "(Invalid port: ':1')"
        ),
    ),
    "server-not-a-url": (
        lambda d: _dump(config(server="::not a url")),
        lambda p: (
            f'kubeconfig {p}: cluster "c": server "::not a url" is not a valid URL '
            "(Relative URLs cannot have a path starting with ':')"
        ),
    ),
    "server-ftp": (
        lambda d: _dump(config(server="ftp://k")),
        lambda p: (
            f'kubeconfig {p}: cluster "c": server "ftp://k" is not a valid URL (the scheme '
            "must be http or https)"
        ),
    ),
    "server-port-out-of-range": (
        lambda d: _dump(config(server="https://k:99999")),
        lambda p: (
            f'kubeconfig {p}: cluster "c": server "https://k:99999" is not a valid URL (port '
            "99999 is not in 1..65535)"
        ),
    ),
    "server-without-host": (
        lambda d: _dump(config(server="https://")),
        lambda p: (
            f'kubeconfig {p}: cluster "c": server "https://" is not a valid URL (it has no host)'
        ),
    ),
    "server-not-a-string": (
        lambda d: _dump(config(server=6443)),
        lambda p: f'kubeconfig {p}: cluster "c": Expected `str`, got `int` - at `$.server`',
    ),
    "no-server": (
        lambda d: _dump(config(cluster={"insecure-skip-tls-verify": True})),
        lambda p: f'kubeconfig {p}: cluster "c" has no server',
    ),
    "long-server": (
        lambda d: _dump(config(server="::" + "x" * 500)),
        lambda p: (
            f'kubeconfig {p}: cluster "c": server "::{"x" * 75}…" is not a valid URL '
            "(Relative URLs cannot have a path starting with ':')"
        ),
    ),
    "missing-certificate-authority": (
        lambda d: _dump(config(cluster={"server": SERVER, "certificate-authority": "ca.crt"})),
        lambda p: (
            f'kubeconfig {p}: cluster "c": cannot read certificate-authority '
            f'"{p.parent / "ca.crt"}": No such file or directory'
        ),
    ),
    "garbage-certificate-authority-data": (
        lambda d: _dump(
            config(
                cluster={
                    "server": SERVER,
                    "certificate-authority-data": base64.b64encode(b"not PEM").decode(),
                }
            )
        ),
        lambda p: f'kubeconfig {p}: cannot use cluster "c" with user "u": ',  # + ssl's words
    ),
    "missing-token-file": (
        lambda d: _dump(config(user={"tokenFile": "/nonexistent/token"})),
        lambda p: (
            f'kubeconfig {p}: user "u": cannot read tokenFile "/nonexistent/token": No such '
            "file or directory"
        ),
    ),
    "missing-credential-plugin": (
        lambda d: _dump(
            config(
                user={
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": "/nonexistent",
                        "installHint": "install it from https://example.com/plugin",
                    }
                }
            )
        ),
        lambda p: (
            f'kubeconfig {p}: user "u": the credential plugin "/nonexistent" (exec.command) '
            "is not an executable file (install it from https://example.com/plugin)"
        ),
    ),
    "unsupported-credential-plugin-version": (
        lambda d: _dump(
            config(
                user={"exec": {"apiVersion": "client.authentication.k8s.io/v2", "command": "sh"}}
            )
        ),
        lambda p: (
            f'kubeconfig {p}: user "u": the credential plugin\'s apiVersion '
            '"client.authentication.k8s.io/v2" is not supported (supported: '
            "client.authentication.k8s.io/v1alpha1, client.authentication.k8s.io/v1beta1)"
        ),
    ),
    "a-directory": (
        lambda d: None,
        lambda p: f"cannot read kubeconfig {p}: Is a directory",
    ),
    "a-missing-file": (
        lambda d: None,
        lambda p: f"cannot read kubeconfig {p}: No such file or directory",
    ),
}

# What the entry points are run with as subprocesses (each costs about a second per
# command): every case issue 11 names, one of each kind of failure.
ENTRY_POINT_CASES = (
    "binary",
    "deeply-nested",
    "alias-bomb",
    "over-the-size-cap",
    "empty",
    "not-a-mapping",
    "clusters-not-a-list",
    "entry-not-a-mapping",
    "missing-current-context",
    "missing-cluster",
    "missing-user",
    "server-bracket",
    "server-not-a-url",
    "missing-credential-plugin",
    "a-directory",
    "a-missing-file",
)


def write(name: str, directory: Path) -> tuple[Path, str]:
    """Write case ``name`` under ``directory``: the path to use and the expected message."""
    content, message = CASES[name]
    path = directory / f"{name}.kubeconfig"
    data = content(directory)
    if name == "a-directory":
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    return path, message(path)


# --- a server that answers every request with one fixed error ---------------------------------


class ErrorServer:
    """An HTTP server on 127.0.0.1 answering every request with ``status`` and ``body``.

    It counts the requests it got, so a test can tell that a credential plugin failed
    before anything was sent. Use as a context manager.
    """

    def __init__(self, status: int, body: bytes, *, content_type: str = "application/json") -> None:
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                owner.requests += 1
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # shutdown() waits for the loop to look at its flag, which it does every poll_interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ErrorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


def status_body(code: int, message: str) -> bytes:
    """A Kubernetes ``Status`` object, as the API server sends with an error."""
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "code": code,
        }
    ).encode()


def plugin_kubeconfig(directory: Path, server: str, script: str) -> Path:
    """A kubeconfig for ``server`` whose user gets its token from a credential plugin script."""
    plugin = directory / "credential-plugin"
    plugin.write_text(script)
    plugin.chmod(0o755)
    exec_ = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(plugin)}
    path = directory / "plugin.kubeconfig"
    path.write_bytes(_dump(config(server=server, user={"exec": exec_})))
    return path


def server_kubeconfig(directory: Path, server: str) -> Path:
    path = directory / "server.kubeconfig"
    path.write_bytes(_dump(config(server=server)))
    return path


FAILING_PLUGIN = (
    "#!/bin/sh\n"
    'echo "error: could not get a token: the session of \\"alice\\" expired" >&2\n'
    'echo "run: login --again" >&2\n'
    "exit 3\n"
)
