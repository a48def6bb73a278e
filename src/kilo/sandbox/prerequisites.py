"""What the sandbox needs from the host, and the one sentence that says what is missing.

:func:`missing` is pure (observed facts in, one sentence or None out), so that every
combination is unit-tested; :func:`observe` gathers the facts: the effective uid,
``/dev/net/tun``, the commands on ``PATH`` (and in the sbin directories, which a
non-interactive or non-root ``PATH`` may lack), the CNI plugins and whether the control
plane's binaries are built already (else Go is needed once).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Command -> the Debian package that ships it.
COMMANDS: dict[str, str] = {
    "ip": "iproute2",
    "iptables": "iptables",
    "iptables-restore": "iptables",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "ping": "iputils-ping",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "sysctl": "procps",
}
CNI_DIR = "/usr/lib/cni"
CNI_PLUGINS = ("bridge", "host-local", "portmap")
CNI_PACKAGE = "containernetworking-plugins"
TUN = "/dev/net/tun"
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# build.sh looks here too when go is not on PATH.
GO_FALLBACK = "/usr/local/go/bin/go"


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What was observed on the host."""

    root: bool
    tun: bool
    commands: frozenset[str]  # those of COMMANDS that were found
    cni_plugins: frozenset[str]  # those of CNI_PLUGINS found in cni_dir
    cni_dir: str = CNI_DIR
    binaries_built: bool = True  # the control plane is in the build cache
    go: bool = True


def _and(items: Sequence[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _plural(word: str, items: Sequence[str]) -> str:
    return f"{word}{'s' if len(items) > 1 else ''} {', '.join(items)}"


def missing(facts: Facts, *, subject: str = "kilo-sandbox up") -> str | None:
    """One sentence naming everything that is missing, or None when nothing is."""
    needs: list[str] = []
    if not facts.root:
        needs.append("root (it creates network and mount namespaces: run it with sudo)")
    if not facts.tun:
        needs.append(f"{TUN} (wireguard-go's TUN device: modprobe tun)")
    commands = [c for c in COMMANDS if c not in facts.commands]
    if commands:
        needs.append(f"the {_plural('command', commands)}")
    plugins = [p for p in CNI_PLUGINS if p not in facts.cni_plugins]
    if plugins:
        needs.append(f"the CNI {_plural('plugin', plugins)} in {facts.cni_dir}")
    if not facts.binaries_built and not facts.go:
        needs.append("Go (https://go.dev/dl/), once, to build etcd and kube-apiserver")
    if not needs:
        return None
    sentence = f"{subject} needs {_and(needs)}"
    packages = sorted({COMMANDS[c] for c in commands} | ({CNI_PACKAGE} if plugins else set()))
    if packages:
        sentence += f" (Debian packages: {' '.join(packages)}; `make sandbox` installs them)"
    return sentence + "."


def search_path(path: str | None = None) -> list[str]:
    """``PATH``'s directories, then the sbin ones it lacks."""
    dirs = [d for d in (path if path is not None else os.environ.get("PATH", "")).split(":") if d]
    return dirs + [d for d in SBIN if d not in dirs]


def _found(commands: Iterable[str]) -> frozenset[str]:
    path = ":".join(search_path())
    return frozenset(c for c in commands if shutil.which(c, path=path) is not None)


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def observe(*, binaries_built: bool = True, cni_dir: str = CNI_DIR) -> Facts:
    """The facts of this host; ``binaries_built`` is the caller's (it knows the cache)."""
    return Facts(
        root=os.geteuid() == 0,
        tun=_is_char_device(TUN),
        commands=_found(COMMANDS),
        cni_plugins=frozenset(p for p in CNI_PLUGINS if (Path(cni_dir) / p).is_file()),
        cni_dir=cni_dir,
        binaries_built=binaries_built,
        go=bool(_found(["go"])) or Path(GO_FALLBACK).is_file(),
    )
