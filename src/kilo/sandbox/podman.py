"""Running the Kilo image with podman: the testbed's image agents and the image tests.

Only what a Kubernetes container spec says reaches podman: the image, a command that
replaces its entrypoint, arguments, environment, bind mounts, a user, ``privileged``,
capabilities, ``no-new-privileges`` and a read-only root. Nothing of podman's own
networking is used: a container has no network (``none``) or joins a network namespace
that the caller made (``ns:PATH``), so no container can reach the host's networks.

Two things this host needs, and both are harmless elsewhere:

* No cgroup is created (``--cgroups=disabled``), and podman runs in a private mount
  namespace whose ``/sys/fs/cgroup`` is an empty tmpfs (:func:`launcher`). There is no
  systemd here; crun 1.8 refuses a hybrid cgroup host whose cgroup v2 hierarchy
  (``/sys/fs/cgroup/unified``) has a controller, as this one has ("cgroups in hybrid mode
  not supported, drop all controllers from cgroupv2"), and in a testbed node's mount
  namespace (``ip netns exec`` mounts a fresh sysfs) there is no cgroup file system at all
  ("invalid file system type on '/sys/fs/cgroup'"). With the tmpfs, crun sees cgroup v1
  without controllers and creates nothing; nothing outside that namespace changes.
* The container's open-file and process limits are given (``--ulimit``): podman asks for
  more than the hard limits of a process without ``CAP_SYS_RESOURCE`` (as here) may have,
  and the runtime's ``setrlimit`` then fails. podman itself lowers its process limit to
  32768 when it cannot raise it.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PODMAN_NPROC = 32768
# podman's own mount namespace gets an empty /sys/fs/cgroup (see the module's docstring).
_NO_CGROUPS = 'mount -t tmpfs -o mode=0755,size=64k kilo-no-cgroups /sys/fs/cgroup && exec "$@"'


def launcher() -> list[str]:
    """The prefix that runs podman (and so crun) where it can work on this host: a private
    mount namespace whose ``/sys/fs/cgroup`` is an empty tmpfs."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _NO_CGROUPS, "sh"]


def limits() -> list[str]:
    """``--ulimit`` flags within this process's hard limits."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if nproc == resource.RLIM_INFINITY or nproc > PODMAN_NPROC:
        nproc = PODMAN_NPROC
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    return [f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    """The parts of a Kubernetes ``securityContext`` (container over pod) podman expresses."""

    user: int | None = None  # None: the image's user
    group: int | None = None
    privileged: bool = False
    no_new_privileges: bool = False
    drop: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    read_only_root: bool = False

    @classmethod
    def from_kubernetes(
        cls, container: Mapping[str, object], pod: Mapping[str, object] | None = None
    ) -> Security:
        """Kubernetes' rules: a container's field wins over the pod's; ``allowPrivilege
        Escalation`` is true unless set to false."""
        merged: dict[str, object] = {}
        for context in ((pod or {}).get("securityContext"), container.get("securityContext")):
            if isinstance(context, Mapping):
                merged.update(context)
        capabilities = merged.get("capabilities")
        caps = capabilities if isinstance(capabilities, Mapping) else {}
        user, group = merged.get("runAsUser"), merged.get("runAsGroup")
        return cls(
            user=user if isinstance(user, int) else None,
            group=group if isinstance(group, int) else None,
            privileged=merged.get("privileged") is True,
            no_new_privileges=merged.get("allowPrivilegeEscalation") is False,
            drop=tuple(str(c) for c in caps.get("drop") or ()),
            add=tuple(str(c) for c in caps.get("add") or ()),
            read_only_root=merged.get("readOnlyRootFilesystem") is True,
        )

    def flags(self) -> list[str]:
        flags = []
        if self.user is not None:
            flags.append(
                f"--user={self.user}" + (f":{self.group}" if self.group is not None else "")
            )
        elif self.group is not None:
            raise ValueError("runAsGroup without runAsUser is not supported here")
        if self.privileged:
            flags.append("--privileged")
        if self.no_new_privileges:
            flags.append("--security-opt=no-new-privileges")
        flags += [f"--cap-drop={c.lower()}" for c in self.drop]
        flags += [f"--cap-add={c.lower()}" for c in self.add]
        if self.read_only_root:
            # Kubernetes mounts no tmpfs over /tmp, /run and /var/tmp; podman would.
            flags += ["--read-only", "--read-only-tmpfs=false"]
        return flags


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    source: str  # on the host
    target: str  # in the container
    read_only: bool = False

    def flag(self) -> str:
        for path in (self.source, self.target):
            if "," in path or ":" in path:
                raise ValueError(f"podman cannot bind-mount a path with ',' or ':': {path!r}")
        return f"--volume={self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    """``podman run --rm`` of one container; :meth:`argv` is the whole command line."""

    image: str
    name: str
    command: tuple[str, ...] | None = None  # replaces the image's entrypoint (Kubernetes)
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    network: str = "none"  # none, or ns:PATH of a namespace the caller made
    security: Security = Security()
    detach: bool = False

    def argv(self) -> list[str]:
        if self.network != "none" and not self.network.startswith("ns:/"):
            raise ValueError(f"network {self.network!r}: want none or ns:PATH")
        argv = [
            *launcher(),
            *("podman", "run", "--rm", f"--name={self.name}", f"--network={self.network}"),
            "--cgroups=disabled",
            *limits(),
            *self.security.flags(),
            *(m.flag() for m in self.mounts),
            *(f"--env={k}={v}" for k, v in self.env.items()),
        ]
        if self.detach:
            argv.append("--detach")
        if self.command is not None:
            argv.append(f"--entrypoint={json.dumps(list(self.command))}")
        return [*argv, self.image, *self.args]


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """An image to run ``kg`` from (its entrypoint), and how (``Testbed.start_agent``)."""

    ref: str
    security: Security = Security()


def remove(name: str) -> list[str]:
    """The command that stops and removes a container, whether or not it exists."""
    return [*launcher(), "podman", "rm", "--force", "--ignore", "--time=5", name]


def image_config(image: str) -> list[str]:
    """The command that prints an image's config (``podman image inspect``) as JSON."""
    return ["podman", "image", "inspect", "--format={{json .Config}}", image]


def quoted(argv: Sequence[str]) -> str:
    """For logs: one line."""
    return " ".join(json.dumps(a) if (not a or " " in a or '"' in a) else a for a in argv)
