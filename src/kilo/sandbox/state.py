"""What a running sandbox is made of, as written to ``<dir>/state.json``.

Pure: values and their JSON form; reading and writing the file is the caller's. ``up``
writes the state as soon as the namespaces exist and again when each part is added, so that
``status`` and ``down`` find everything later, from another process. ``down`` does not
depend on it: every namespace carries the directory's prefix (:func:`prefix_for`), so a
missing or stale state file only loses the process list, not the clean-up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from kilo.errors import SandboxError

VERSION = 1
FAMILY = "ksb"
STATE_FILE = "state.json"
KUBECONFIG_FILE = "kubeconfig"
RUN_DIR = "run"
GRAPH_FILES = ("mesh.svg", "mesh.dot")
# Everything a sandbox writes in its directory; ``down`` removes exactly these.
FILES = (STATE_FILE, KUBECONFIG_FILE, *GRAPH_FILES)


def prefix_for(directory: str) -> str:
    """The run prefix of the sandbox in ``directory`` (an absolute, resolved path): the same
    directory always gives the same prefix, two directories (almost surely) different ones."""
    return FAMILY + hashlib.sha256(directory.encode()).hexdigest()[:6]


@dataclass(frozen=True, slots=True, kw_only=True)
class Process:
    """A process ``down`` ends: pid plus start time (clock ticks), which name one process."""

    role: str  # "etcd", "kube-apiserver", "wireguard-go aws-1", "kg aws-1"
    pid: int
    start: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    """A node or the VPN peer: its namespace and the holder (wireguard-go) whose mount
    namespace holds its WireGuard socket."""

    name: str
    netns: str
    holder: int
    location: str = ""
    lan_ip: str = ""
    wan_ip: str = ""
    pod_cidr: str = ""
    mesh_ip: str = ""  # the VPN peer's address inside the mesh


@dataclass(frozen=True, slots=True, kw_only=True)
class Pod:
    name: str
    node: str
    netns: str
    ip: str


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    directory: str
    prefix: str
    granularity: str
    host_link: str
    workdir: str
    api_server: str = ""
    kubeconfig: str = ""
    graph: str = ""
    nat_locations: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    processes: tuple[Process, ...] = ()
    nodes: tuple[Machine, ...] = ()
    peers: tuple[Machine, ...] = ()
    pods: tuple[Pod, ...] = ()
    complete: bool = False  # up got to the end (converged or not)
    # up --kernel: the nodes run in a virtual machine with this kernel package; the guest
    # shares this directory with the host (its own sandbox directory is in it).
    kernel: str = ""
    share: str = ""


def dumps(state: State) -> str:
    data = asdict(state)
    data["version"] = VERSION
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


class StateError(SandboxError, ValueError):
    """The text is not a sandbox state this version understands."""


def loads(text: str) -> State:
    """The state in ``text``; StateError naming the problem when it is not one."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StateError("not a JSON object")
    if data.get("version") != VERSION:
        raise StateError(f"version {data.get('version')!r}, want {VERSION}")
    try:
        return State(
            directory=str(data["directory"]),
            prefix=str(data["prefix"]),
            granularity=str(data["granularity"]),
            host_link=str(data["host_link"]),
            workdir=str(data["workdir"]),
            api_server=str(data.get("api_server", "")),
            kubeconfig=str(data.get("kubeconfig", "")),
            graph=str(data.get("graph", "")),
            nat_locations=tuple(str(n) for n in data.get("nat_locations", ())),
            namespaces=tuple(str(n) for n in data.get("namespaces", ())),
            processes=tuple(Process(**_fields(p, Process)) for p in data.get("processes", ())),
            nodes=tuple(Machine(**_fields(m, Machine)) for m in data.get("nodes", ())),
            peers=tuple(Machine(**_fields(m, Machine)) for m in data.get("peers", ())),
            pods=tuple(Pod(**_fields(p, Pod)) for p in data.get("pods", ())),
            complete=bool(data.get("complete", False)),
            kernel=str(data.get("kernel", "")),
            share=str(data.get("share", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"bad field: {exc!r}") from exc


def _fields(value: Any, cls: type) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__}: not an object: {value!r}")
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    return {k: v for k, v in value.items() if k in known}
