"""The shipped manifests, the chart and the Dockerfile, read as data for the tests.

``manifests/*.yaml`` (other than crds.yaml and rbac.yaml) are rendered from ``charts/kilo`` by
``manifests/generate.sh``; the unit tests read the committed files, the integration tests also
render the chart with the real helm.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "kilo"
DOCKERFILE = ROOT / "Dockerfile"
GENERATOR = MANIFESTS / "generate.sh"
HAND_WRITTEN = ("crds.yaml", "rbac.yaml")
# The Grafana dashboard: the chart's file, copied to manifests/ by generate.sh.
DASHBOARD = CHART / "files" / "kilo-dashboard.json"
DASHBOARD_MANIFEST = MANIFESTS / "kilo-dashboard.json"

Obj = dict[str, Any]


def rendered_files() -> list[Path]:
    """Every committed manifest that the chart renders."""
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name not in HAND_WRITTEN)


def generated_files() -> list[Path]:
    """Every committed file that manifests/generate.sh writes."""
    return sorted([*rendered_files(), DASHBOARD_MANIFEST])


def agent_files() -> list[Path]:
    return [p for p in rendered_files() if p.name.startswith("kilo-")]


def load(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_file(path: Path) -> list[Obj]:
    return load(path.read_text())


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@dataclass(frozen=True)
class Container:
    owner: str  # "DaemonSet/kilo"
    init: bool
    spec: Obj
    pod: Obj

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def mounts(self) -> dict[str, Obj]:
        """mountPath -> the volume it shows."""
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        return {m["mountPath"]: volumes[m["name"]] for m in self.spec.get("volumeMounts", [])}

    def siblings(self) -> list[Container]:
        """Every container of the same pod, this one included."""
        init = [
            Container(self.owner, True, c, self.pod) for c in self.pod.get("initContainers", [])
        ]
        return init + [Container(self.owner, False, c, self.pod) for c in self.pod["containers"]]

    def env(self) -> dict[str, Any]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.spec.get("env", [])}


def pod_specs(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objects:
        if o["kind"] in ("DaemonSet", "Deployment", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


def containers(objects: list[Obj]) -> Iterator[Container]:
    for owner, pod in pod_specs(objects):
        for c in pod.get("initContainers", []):
            yield Container(owner, True, c, pod)
        for c in pod["containers"]:
            yield Container(owner, False, c, pod)


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    result = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def package_list(path: Path = ROOT / "docker" / "packages.txt") -> set[str]:
    """The image's Debian packages: docker/packages.txt without comments."""
    return {word for line in path.read_text().splitlines() for word in line.split("#")[0].split()}


def apt_packages(instructions: list[tuple[str, str]]) -> set[str]:
    packages: set[str] = set()
    for keyword, rest in instructions:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                packages |= {w for w in words[words.index("install") + 1 :] if w[0] != "-"}
    return packages


# --- helm ----------------------------------------------------------------------------------------


def helm_template(helm: Path, *values: str, namespace: str = "kube-system") -> str:
    result = subprocess.run(
        [str(helm), "template", "kilo", str(CHART), "--namespace", namespace, *values],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
