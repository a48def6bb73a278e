"""A Debian kernel in a QEMU virtual machine, for what this host's kernel cannot run.

Kilo's default data plane needs kernel WireGuard and IPIP, and the kernel of the machines
this project runs on has neither module. This module boots Debian's own kernel under QEMU's
emulation (TCG: the hosts' KVM boots no Debian kernel) with the host's root filesystem
shared read-only over 9p, so that the venv, ``ip``, ``wg``, iptables and the CNI plugins
are all there, and runs one command in it
(the kernel and the initramfs come from :mod:`kilo.sandbox.guest`).

* :class:`VirtualMachine` is one QEMU process, started in a network namespace given by the
  caller with one virtio NIC on a tap device there (never QEMU's user-mode network), with
  bounded memory and CPUs; :meth:`VirtualMachine.kill` ends it (and its process group)
  and is safe to repeat.
* :class:`VMHost` is the host's side of a run: a network namespace ``<prefix>-vm`` with the
  tap, QEMU, and etcd + kube-apiserver (which would crawl under emulation), plus a /30
  veth from the host's namespace for the API server, exactly like the testbed's ``cp``.
  The guest reaches the API server through its NIC (``GUEST_IP`` to ``TAP_IP``); nothing
  is routed or NATed to the host's networks.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kilo.sandbox import controlplane, guest, runs, testbed
from kilo.sandbox.controlplane import ControlPlane
from kilo.sandbox.guest import VMError

MEMORY_MB = 2048
CPUS = 2
# The link between the host's namespace of the VM and the guest's NIC (eth0).
VM_LINK = ipaddress.IPv4Network("192.0.2.252/30")
TAP_IP = str(VM_LINK[1])
GUEST_IP = str(VM_LINK[2])
TAP = "vm0"
GUEST_NIC = "eth0"
GUEST_MAC = "52:54:00:4b:69:6c"
# The host link of the testbed inside the guest: fixed, so that the API server's
# certificate can name the guest's side of it before the guest exists.
GUEST_HOST_LINK = ipaddress.IPv4Network("198.51.100.0/30")
PLANE_DIR = "plane"


# --- QEMU --------------------------------------------------------------------------------------


def qemu_argv(
    kernel: guest.Kernel,
    initrd: Path,
    *,
    share: Path,
    console: Path,
    tap: str | None = TAP,
    memory_mb: int = MEMORY_MB,
    cpus: int = CPUS,
) -> list[str]:
    """QEMU under emulation (TCG), no default devices, the host root read-only over 9p,
    ``share`` writable, and at most one NIC: on the tap ``tap`` (none without it)."""
    argv = [
        guest.QEMU,
        *("-accel", "tcg", "-machine", "q35", "-cpu", "max"),
        *("-smp", str(cpus), "-m", str(memory_mb)),
        *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"),
        *("-kernel", str(kernel.image), "-initrd", str(initrd)),
        *(
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off rcupdate.rcu_expedited=1",
        ),
        *("-serial", f"file:{console}"),
        "-fsdev",
        "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        *("-device", f"virtio-9p-pci,fsdev=root,mount_tag={guest.ROOT_TAG}"),
        *("-fsdev", f"local,id=share,path={share},security_model=none,multidevs=remap"),
        *("-device", f"virtio-9p-pci,fsdev=share,mount_tag={guest.SHARE_TAG}"),
    ]
    if tap is None:
        argv += ["-net", "none"]
    else:
        argv += [
            *("-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no"),
            *("-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}"),
        ]
    return argv


class VirtualMachine:
    """One QEMU process running ``command`` (see :func:`kilo.sandbox.guest.initramfs`)."""

    def __init__(
        self,
        kernel: guest.Kernel,
        command: guest.GuestCommand,
        *,
        workdir: Path,
        netns: str | None = None,
        tap: str | None = TAP,
        memory_mb: int = MEMORY_MB,
        cpus: int = CPUS,
    ) -> None:
        self.kernel = kernel
        self.command = command
        self.workdir = workdir
        self.netns = netns
        self.tap = tap
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.console = workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def status_path(self) -> Path:
        return self.command.share / guest.STATUS_FILE

    @property
    def guest_log(self) -> Path:
        return self.command.share / "guest.log"

    def start(self) -> VirtualMachine:
        if shutil.which(guest.QEMU) is None:
            raise VMError(f"{guest.QEMU} is missing (Debian package qemu-system-x86)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.command.share.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()
        initrd = self.workdir / "initramfs.cpio"
        initrd.write_bytes(guest.initramfs(self.kernel, self.command))
        argv = qemu_argv(
            self.kernel,
            initrd,
            share=self.command.share,
            console=self.console,
            tap=self.tap,
            memory_mb=self.memory_mb,
            cpus=self.cpus,
        )
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        log = open(self.workdir / "qemu.log", "ab")  # noqa: SIM115
        with log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait(self, timeout: float) -> int | None:
        """Wait for QEMU to end; the command's exit status, None when it recorded none
        (it never ran, or the guest died); VMError (after killing QEMU) at the deadline."""
        if self.process is None:
            raise VMError("the virtual machine was not started")
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise VMError(
                f"the virtual machine did not finish within {timeout:g} s; killed. "
                f"{self.diagnostics()}"
            ) from None
        return self.exit_status()

    def exit_status(self) -> int | None:
        try:
            return int(self.status_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL QEMU and its process group; safe to repeat."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def diagnostics(self, lines: int = 40) -> str:
        """The tails of QEMU's output, the console and the command's log."""
        parts = []
        for title, path in (
            ("qemu", self.workdir / "qemu.log"),
            ("console", self.console),
            ("guest log", self.guest_log),
        ):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail.strip():
                parts.append(f"--- {title} ({path}):\n{tail}")
        return "\n".join(parts) or "(no output from QEMU, the console or the guest)"


# --- the host's side -------------------------------------------------------------------------


class VMHost:
    """Namespace ``<prefix>-vm`` on the host: the VM's tap, etcd + kube-apiserver and (once
    started) QEMU; a /30 veth ``<prefix>h`` from the host's namespace to it. Recorded under
    ``/run/kilo-e2e`` like a testbed when ``owned``, so :func:`runs.cleanup_stale`
    removes what a crashed run left (it kills QEMU with the namespace's processes)."""

    def __init__(
        self,
        *,
        binaries: Path,
        prefix: str | None = None,
        workdir: Path | None = None,
        owned: bool = True,
    ) -> None:
        self.prefix = prefix or _new_prefix()
        self.netns = f"{self.prefix}-vm"
        self.host_link = f"{self.prefix}h"
        self.binaries = binaries
        self.workdir = workdir or Path(tempfile.gettempdir()) / f"kilo-vm-{self.prefix}"
        self.share = self.workdir / "share"
        self.owned = owned
        self.plane: ControlPlane | None = None
        self.host_ip = ""
        self.cp_ip = ""
        self._claimed = False
        self._plane_start: controlplane.Starting | None = None

    def start(self) -> VMHost:
        """Create the namespace, the links and start the control plane (in a thread: see
        :meth:`wait_plane`)."""
        try:
            self._claim()
            runs.run(["ip", "-n", self.netns, "tuntap", "add", "dev", TAP, "mode", "tap"])
            runs.run(["ip", "-n", self.netns, "addr", "add", f"{TAP_IP}/30", "dev", TAP])
            runs.run(["ip", "-n", self.netns, "link", "set", TAP, "up"])
            self.plane = ControlPlane(
                self.binaries,
                workdir=self.workdir / "controlplane",
                netns=self.netns,
                bind_address="0.0.0.0",
                advertise_address=TAP_IP,
                server_host=self.cp_ip,
                extra_sans=(self.cp_ip, testbed.CP_WAN, str(GUEST_HOST_LINK[2])),
            )
            controlplane.write_attachment(
                self.plane,
                self.share / PLANE_DIR,
                controlplane.Attachment(
                    port=self.plane.port,
                    address=TAP_IP,
                    guest_ip=GUEST_IP,
                    link=str(VM_LINK),
                    nic=GUEST_NIC,
                    host_link=str(GUEST_HOST_LINK),
                ),
            )
            self._plane_start = controlplane.Starting(
                self.plane, name=f"{self.prefix}-controlplane"
            )
        except BaseException:
            self.close()
            raise
        return self

    def wait_plane(self) -> ControlPlane:
        """The control plane once it is ready; VMError if it failed."""
        error = None if self._plane_start is None else self._plane_start.wait()
        if error is not None or self.plane is None:
            raise VMError(f"the control plane did not start: {error}")
        return self.plane

    def _claim(self) -> None:
        if runs.run_namespaces(self.prefix) or runs.link_exists(self.host_link):
            raise VMError(f"VM run {self.prefix} exists already (its namespaces or link)")
        self._claimed = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        self.share.mkdir(exist_ok=True)
        runs.OWNERS.mkdir(mode=0o755, exist_ok=True)
        if self.owned:
            record = {
                "pid": os.getpid(),
                "start": runs.process_start(os.getpid()),
                "workdir": str(self.workdir),
            }
            (runs.OWNERS / f"{self.prefix}.json").write_text(json.dumps(record))
        runs.run(["ip", "netns", "add", self.netns])
        runs.run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        with open(runs.OWNERS / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = runs.free_host_link_subnet()
            host, cp_ip = (str(a) for a in subnet.hosts())
            runs.run(
                [
                    *("ip", "link", "add", self.host_link, "type", "veth"),
                    *("peer", "host0", "netns", self.netns),
                ]
            )
            runs.run(["ip", "addr", "add", f"{host}/30", "dev", self.host_link])
        self.host_ip, self.cp_ip = host, cp_ip
        runs.run(["ip", "link", "set", self.host_link, "up"])
        runs.run(["ip", "-n", self.netns, "addr", "add", f"{cp_ip}/30", "dev", "host0"])
        runs.run(["ip", "-n", self.netns, "link", "set", "host0", "up"])

    def close(self, *, keep_workdir: bool = False) -> None:
        """Stop the control plane, kill whatever runs in the namespace (QEMU), remove it
        and the host link; safe after a partial start and when called twice."""
        if not self._claimed:
            return
        if self.plane is not None:
            self.plane.stop()
            if self._plane_start is not None:
                self._plane_start.wait(150)
                self.plane.stop()
        left = runs.remove_namespaces([self.netns], self.host_link)
        with contextlib.suppress(OSError):
            (runs.OWNERS / f"{self.prefix}.json").unlink()
        if not keep_workdir and not os.environ.get(runs.KEEP_ENV):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._claimed = False
        if left or runs.link_exists(self.host_link):
            raise VMError(f"VM run {self.prefix}: not removed: {left or [self.host_link]}")


def _new_prefix() -> str:
    import uuid

    taken = {n.split("-", 1)[0] for n in runs.list_namespaces()}
    while True:
        prefix = f"{runs.FAMILY}{uuid.uuid4().hex[:6]}"
        if prefix not in taken and not (runs.OWNERS / f"{prefix}.json").exists():
            return prefix


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
