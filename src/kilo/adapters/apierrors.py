"""What failed in a request to the Kubernetes API server, said in one line.

Shared by every use of the API (``kilo.adapters.kubernetes``): an HTTP error answer names
the server, or the verb and resource that RBAC denied; a credential plugin's failure is told
apart from the server's and the transport's by where it was raised; a refusal that retrying
will not fix soon (RBAC, a missing CRD, bad credentials) is recognised for the informer.
"""

from __future__ import annotations

import json
import re

import httpx2
import msgspec
from lightkube import ApiError
from lightkube import ConfigError as LightkubeConfigError
from lightkube.config.kubeconfig import SingleConfig

from kilo.adapters import kubeconfig
from kilo.mesh.text import one_line

PEER_CRD = "peers.kilo.squat.ai"


def describe_error(exc: BaseException, server: str, *, verb: str, resource: str) -> str:
    """One line that says what failed, naming the server or the denied verb and resource."""
    status = status_error(exc)
    if status is not None:
        code = status_code(status)
        message = _status_message(status)
        if code == 403:
            return f"forbidden: cannot {verb} {resource} ({message or f'HTTP 403 from {server}'})"
        if code == 401:
            return f"unauthorized by the Kubernetes API server at {server}: check the credentials"
        if code == 404 and resource == "peers":
            return (
                f"the Peer CRD {PEER_CRD} is not installed on {server} "
                "(kubectl apply -f manifests/crds.yaml)"
            )
        detail = f": {message}" if message else ""
        return f"cannot {verb} {resource} on {server}{detail}" + (f" (HTTP {code})" if code else "")
    if isinstance(exc, httpx2.TimeoutException):
        return (
            f"the Kubernetes API server at {server} did not answer in time ({type(exc).__name__})"
        )
    if isinstance(exc, httpx2.HTTPError | OSError):
        return f"cannot reach the Kubernetes API server at {server}: {exc or type(exc).__name__}"
    return f"cannot {verb} {resource} on {server}: {one_line(str(exc) or type(exc).__name__)}"


# What a request through lightkube can raise besides BackendError: HTTP and transport errors,
# a credential plugin's or token file's failure (ConfigError, OSError, the plugin's output
# not being JSON or not holding a token), and an answer that is not Kubernetes' (msgspec;
# RecursionError: JSON nested deeper than msgspec decodes, which it raises as is).
REQUEST_ERRORS: tuple[type[BaseException], ...] = (
    httpx2.HTTPError,
    OSError,
    LightkubeConfigError,
    msgspec.MsgspecError,
    ValueError,
    KeyError,
    TypeError,
    RecursionError,
)


def describe_failure(exc: BaseException, config: SingleConfig, *, verb: str, resource: str) -> str:
    """:func:`describe_error`, also telling the credentials' and the server's faults apart."""
    server = str(config.cluster.server)
    if status_error(exc) is None:
        credentials = credential_error(exc, config)
        if credentials is not None:
            return credentials
        if isinstance(exc, msgspec.MsgspecError | ValueError | RecursionError):
            return (
                f"{server} did not answer like a Kubernetes API server when trying to {verb} "
                f"{resource}: {one_line(str(exc))}"
            )
    return describe_error(exc, server, verb=verb, resource=resource)


def credential_error(exc: BaseException, config: SingleConfig) -> str | None:
    """What failed in getting credentials (a credential plugin, a token file), or ``None``.

    lightkube gets them inside the request (``lightkube.config.client_adapter``), so their
    failures arrive as the request's: ``ConfigError`` ("Exec CMD returned N: STDERR", a token
    file not found), ``OSError`` when the plugin cannot be run, ``JSONDecodeError``,
    ``KeyError`` or ``TypeError`` when it prints no ExecCredential. They are told apart from
    the server's and the transport's by where they were raised.
    """
    if not any(_raised_in(exc, module) for module in _AUTH_MODULES):
        return None
    where = kubeconfig.describe(config)
    user = config.user
    plugin = user.exec if user is not None else None
    if plugin is None:
        return f"{where}: cannot authenticate to {config.cluster.server}: {one_line(str(exc))}"
    name = f'"{one_line(plugin.command)}"'
    who = f' of user "{one_line(config.context.user or "", 40)}"'
    if isinstance(exc, LightkubeConfigError):
        match = _EXEC_FAILED.match(str(exc))
        if match is None:
            return f"{where}: the credential plugin {name}{who} failed: {one_line(str(exc))}"
        lines = [line.strip() for line in match["stderr"].splitlines() if line.strip()]
        said = f": {one_line(lines[0])}" if lines else " and printed nothing on stderr"
        return (
            f"{where}: the credential plugin {name}{who} exited with status {match['code']}{said}"
        )
    if isinstance(exc, OSError):
        return (
            f"{where}: cannot run the credential plugin {name}{who}: "
            f"{exc.strerror or one_line(str(exc))}"
        )
    if isinstance(exc, UnicodeDecodeError):
        return f"{where}: the credential plugin {name}{who} wrote output that is not UTF-8 text"
    return (
        f"{where}: the credential plugin {name}{who} did not print an ExecCredential with "
        f"status.token ({one_line(str(exc) or type(exc).__name__)})"
    )


# lightkube's, and the agent's bounded credential plugin (kilo.adapters.credentials).
_AUTH_MODULES = ("lightkube.config.client_adapter", "kilo.adapters.credentials")


def _raised_in(exc: BaseException, module: str) -> bool:
    """Whether ``exc`` was raised while code of ``module`` was running."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") == module:
            return True
        tb = tb.tb_next
    return False


STATUS_MESSAGE_LIMIT = 200
_EXEC_FAILED = re.compile(r"Exec .* returned (?P<code>-?\d+): (?P<stderr>.*)\Z", re.DOTALL)


def is_refusal(exc: BaseException, config: SingleConfig) -> bool:
    """A refusal that retrying will not fix soon: RBAC, a missing CRD, bad credentials."""
    status = status_error(exc)
    if status is not None:
        return status_code(status) in (401, 403, 404)
    return credential_error(exc, config) is not None


def status_error(exc: BaseException) -> httpx2.HTTPStatusError | None:
    """The HTTP error answer behind ``exc``: ``exc`` itself, or one lightkube failed to decode.

    lightkube turns an error answer with a JSON content type into an ``ApiError`` by decoding
    its body as a ``Status``; when that fails (a proxy's page, a truncated body), the decoding
    error is raised with the HTTP error as its context.
    """
    current: BaseException | None = exc
    for _ in range(4):
        if current is None:
            break
        if isinstance(current, httpx2.HTTPStatusError):
            return current
        current = current.__cause__ or current.__context__
    return None


def status_code(exc: httpx2.HTTPStatusError) -> int:
    """The answer's HTTP status, or a ``Status``'s code; 0 for an ``ERROR`` event whose
    ``Status`` has none (such an ``ApiError`` has no HTTP response behind it)."""
    if isinstance(exc, ApiError) and exc.status.code:
        return int(exc.status.code)
    response = _response(exc)
    return response.status_code if response is not None else 0


def _response(exc: httpx2.HTTPStatusError) -> httpx2.Response | None:
    # Typed as always there, but lightkube's ApiError(status=...) passes None.
    response: httpx2.Response | None = exc.response
    return response


def _status_message(exc: httpx2.HTTPStatusError) -> str:
    """The ``Status`` message of an error answer, else the first line of its body, cut short.

    Cut at 200 characters, not 80: RBAC's messages name the user, verb, resource and group
    in about 150.
    """
    if isinstance(exc, ApiError) and exc.status.message:
        return one_line(exc.status.message, STATUS_MESSAGE_LIMIT)
    response = _response(exc)
    if response is None:
        return ""
    try:
        body = response.content
    except httpx2.ResponseNotRead:  # a refused watch: the body was never read
        return ""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return one_line(decoded["message"], STATUS_MESSAGE_LIMIT)
    text = body[:4096].decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return one_line(lines[0], STATUS_MESSAGE_LIMIT) if lines else ""
