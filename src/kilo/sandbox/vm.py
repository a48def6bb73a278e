"""A Debian kernel in a QEMU virtual machine, for what this host's kernel cannot run.

Kilo's default data plane needs kernel WireGuard and IPIP, and the kernel of the machines
this project runs on has neither module. This module boots Debian's own kernel under QEMU's
emulation (TCG: the hosts' KVM boots no Debian kernel) with the host's root filesystem
shared read-only over 9p, so that the venv, ``ip``, ``wg``, iptables and the CNI plugins
are all there, and runs one command in it.

* :func:`fetch_kernel` downloads the kernel package (``apt-get download``, never
  installed: the host's ``/boot`` is not touched) and unpacks it into a cache keyed on the
  package and its version (``~/.cache/kilo-kernel``, ``KILO_KERNEL_CACHE`` overrides); a
  missing or partial cache rebuilds itself. The kernel is the one ``linux-image-amd64``
  names (``KILO_KERNEL_PACKAGE`` overrides): Debian's generic flavour, because the
  ``cloud`` flavour has no 9p and Debian bookworm ships no ``virtiofsd``.
* :func:`initramfs` is a tiny initramfs (busybox-static, the 9p/virtio/overlay modules and
  an ``/init`` script) that mounts the host's root read-only with the page cache on, puts
  tmpfs on ``/run`` and ``/tmp``, overlays on ``/etc``, ``/var`` and ``/root``, the
  kernel's modules on ``/lib/modules/<release>`` (so that the kernel loads ``wireguard``
  and ``ipip`` itself, through ``modprobe``, when something creates such a link) and one
  writable directory shared with the host at the same path, then runs the command as
  process 1 of the real root, records its exit status in that directory and powers off.
  No udev, no systemd: the guest reaches the command in about 6 s under emulation.
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
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kilo.errors import SandboxError
from kilo.sandbox import controlplane, testbed
from kilo.sandbox.controlplane import ControlPlane

KERNEL_META_PACKAGE = "linux-image-amd64"
PACKAGE_ENV = "KILO_KERNEL_PACKAGE"
CACHE_ENV = "KILO_KERNEL_CACHE"
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")  # busybox-static (a dynamic busybox cannot run in the initramfs)
# Modules the initramfs loads to mount the root: 9p over virtio-pci, and overlayfs.
ROOT_MODULES = ("9p", "9pnet_virtio", "virtio_pci", "overlay")
ROOT_TAG = "kiloroot"
SHARE_TAG = "kiloshare"
STATUS_FILE = "exit-status"
GUEST_ENV = "KILO_VM_GUEST"  # set (to the shared directory) for the guest's command
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


class VMError(SandboxError):
    """The virtual machine could not be built, started or run."""


def _run(argv: Sequence[str], *, timeout: float = 120, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise VMError(f"{' '.join(argv)} timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise VMError(f"{argv[0]}: {exc.strerror or exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip() or "(no output)").splitlines()
        raise VMError(f"{' '.join(argv)} exited with {result.returncode}: {detail[-1]}")
    return result.stdout


# --- the kernel --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kernel:
    """An unpacked kernel package: ``root`` holds its ``boot/`` and ``lib/modules/``."""

    package: str
    version: str
    release: str  # uname -r
    root: Path

    @property
    def image(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "kilo-kernel"


def _apt_cache(*args: str) -> str:
    return _run(["apt-cache", *args], timeout=60)


def resolve_package(meta: str = KERNEL_META_PACKAGE) -> tuple[str, str]:
    """The kernel package ``meta`` depends on (or ``$KILO_KERNEL_PACKAGE``) and its
    candidate version, from apt's lists (updated once when they do not know it)."""
    wanted = os.environ.get(PACKAGE_ENV)
    for attempt in range(2):
        try:
            package = wanted or _image_dependency(meta)
            version = _candidate(package)
        except VMError:
            if attempt or os.geteuid() != 0:
                raise
            _run(["apt-get", "update", "-qq"], timeout=300)
            continue
        return package, version
    raise AssertionError("unreachable")


def _image_dependency(meta: str) -> str:
    for line in _apt_cache("depends", "--important", meta).splitlines():
        match = re.fullmatch(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise VMError(f"apt-cache depends {meta}: no linux-image dependency (apt-get update?)")


def _candidate(package: str) -> str:
    for line in _apt_cache("policy", package).splitlines():
        match = re.fullmatch(r"\s*Candidate:\s*(\S+)", line)
        if match and match.group(1) != "(none)":
            return match.group(1)
    raise VMError(f"apt-cache policy {package}: no candidate version (apt-get update?)")


def _cache_name(package: str, version: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{package}_{version}")


def fetch_kernel(
    *, cache: Path | None = None, on_progress: Callable[[str], None] | None = None
) -> Kernel:
    """The kernel of ``resolve_package()``, downloaded and unpacked once into the cache."""
    package, version = resolve_package()
    cache = cache or cache_root()
    final = cache / _cache_name(package, version)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kernel = _load_cached(final)
        if kernel is not None:
            return kernel
        if on_progress is not None:
            on_progress(f"downloading and unpacking {package} {version} into {cache}")
        shutil.rmtree(final, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
        try:
            _run(["apt-get", "download", f"{package}={version}"], cwd=work, timeout=600)
            debs = list(work.glob("*.deb"))
            if len(debs) != 1:
                raise VMError(f"apt-get download {package}={version} gave {debs}")
            tree = work / "tree"
            _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], timeout=600)
            debs[0].unlink()
            releases = [p.name for p in (tree / "lib" / "modules").iterdir()]
            if len(releases) != 1:
                raise VMError(f"{package}: expected one lib/modules/<release>, got {releases}")
            release = releases[0]
            # A package's modules.dep is made by its postinst, which never runs here.
            _run(["depmod", "-b", str(tree), release], timeout=300)
            kernel = Kernel(package, version, release, final)
            (tree / "kilo-kernel.json").write_text(
                json.dumps({"package": package, "version": version, "release": release})
            )
            if not (tree / "boot" / f"vmlinuz-{release}").is_file():
                raise VMError(f"{package} has no boot/vmlinuz-{release}")
            tree.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return kernel


def _load_cached(root: Path) -> Kernel | None:
    try:
        meta = json.loads((root / "kilo-kernel.json").read_text())
        kernel = Kernel(meta["package"], meta["version"], meta["release"], root)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not kernel.image.is_file() or not (kernel.modules / "modules.dep").is_file():
        return None
    return kernel


# --- the initramfs -----------------------------------------------------------------------------


def cpio(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """A ``newc`` cpio archive: (path, mode, data) each; a symbolic link's data is its
    target, a directory's is empty."""
    out = bytearray()

    def member(ino: int, name: str, mode: int, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        member(ino, name.lstrip("/"), mode, data)
    member(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def module_files(kernel: Kernel, names: Sequence[str] = ROOT_MODULES) -> list[Path]:
    """The ``.ko`` files of ``names`` and their dependencies, in load order."""
    ordered: list[Path] = []
    for name in names:
        out = _run(
            ["modprobe", "-d", str(kernel.root), "-S", kernel.release, "--show-depends", name]
        )
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] == ["insmod"] and Path(parts[1]) not in ordered:
                ordered.append(Path(parts[1]))
    return ordered


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestCommand:
    """What the guest runs: ``argv`` in ``cwd`` with ``env``, its output in
    ``<share>/guest.log``, at most ``timeout`` seconds (None: until the VM is killed)."""

    argv: Sequence[str]
    cwd: Path
    share: Path
    timeout: float | None
    env: Sequence[tuple[str, str]] = ()


def init_script(kernel: Kernel, modules: Sequence[Path], command: GuestCommand) -> str:
    """The initramfs's ``/init``: mount everything, then hand over to the real root."""
    q = shlex.quote
    env = [
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ("HOME", "/root"),
        ("TMPDIR", "/tmp"),
        ("LANG", "C.UTF-8"),
        (GUEST_ENV, str(command.share)),
        *command.env,
    ]
    exports = "\n".join(f"export {name}={q(value)}" for name, value in env)
    inner = " ".join(q(a) for a in command.argv)
    if command.timeout is not None:
        inner = f"timeout -k 10 {int(command.timeout)} {inner}"
    log = q(str(command.share / "guest.log"))
    status = q(str(command.share / STATUS_FILE))
    # Process 1 of the real root: the command, its status, power off. (sysrq works without
    # any binary; QEMU runs with -no-reboot, so a panic ends it too.)
    stage2 = f"""\
{exports}
mount -t devpts devpts /dev/pts 2>/dev/null
hostname kilo-vm
ip link set lo up
modprobe virtio_net
modprobe tun
cd {q(str(command.cwd))}
{inner} </dev/null >{log} 2>&1
echo $? >{status}.new && mv {status}.new {status}
sync
echo o >/proc/sysrq-trigger
sleep 60
"""
    load = "\n".join(f"insmod /modules/{p.name} || fail 'insmod {p.name}'" for p in modules)
    root_opts = "ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000"
    share_opts = "trans=virtio,version=9p2000.L,msize=512000"
    overlays = "\n".join(
        f"mkdir -p /newroot/run/kilo-vm/overlay{d}/upper /newroot/run/kilo-vm/overlay{d}/work\n"
        f"mount -t overlay overlay -o lowerdir=/newroot{d},"
        f"upperdir=/newroot/run/kilo-vm/overlay{d}/upper,"
        f"workdir=/newroot/run/kilo-vm/overlay{d}/work /newroot{d} || fail 'overlay {d}'"
        for d in ("/etc", "/var", "/root")
    )
    modules_dir = f"/newroot/usr/lib/modules/{kernel.release}"
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "kilo-vm init: $*" >/dev/console; echo o >/proc/sysrq-trigger; sleep 60; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{load}
mkdir -p /newroot
mount -t 9p -o {root_opts} {ROOT_TAG} /newroot || fail 'mounting the host root'
mount -t tmpfs -o mode=0755 run /newroot/run || fail 'tmpfs /run'
mount -t tmpfs -o mode=1777 tmp /newroot/tmp || fail 'tmpfs /tmp'
{overlays}
mount -t tmpfs -o mode=0755 modules /newroot/usr/lib/modules || fail 'tmpfs /lib/modules'
mkdir -p {q(modules_dir)}
mount --bind {q("/newroot" + str(kernel.modules))} {q(modules_dir)} || fail 'the modules'
mkdir -p {q("/newroot" + str(command.share))}
mount -t 9p -o {share_opts} {SHARE_TAG} {q("/newroot" + str(command.share))} || fail 'the share'
mkdir -p /dev/pts /dev/shm
mount --move /dev /newroot/dev
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
cat >/newroot/run/kilo-vm/stage2 <<'KILO_STAGE2'
{stage2}KILO_STAGE2
exec switch_root /newroot /bin/sh /run/kilo-vm/stage2
"""


# Commands the VM needs on the host -> the Debian package that ships them.
COMMANDS = {
    QEMU: "qemu-system-x86",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "modprobe": "kmod",
}


def _static(path: Path) -> bool:
    """Whether the ELF file ``path`` has no program interpreter (is statically linked)."""
    try:
        head = path.read_bytes()[:8192]
    except OSError:
        return False
    return head.startswith(b"\x7fELF") and b"/ld-linux" not in head and b"ld.so" not in head


def missing() -> str | None:
    """One sentence naming what the VM needs and this host lacks, or None."""
    needs = [
        f"{command} ({package})"
        for command, package in COMMANDS.items()
        if shutil.which(command, path=":".join(_search_path())) is None
    ]
    if not _static(BUSYBOX):
        needs.append(f"a static {BUSYBOX} (busybox-static)")
    if not needs:
        return None
    return "the virtual machine needs " + ", ".join(needs) + " (scripts/debian-packages.sh)."


def _search_path() -> list[str]:
    path = os.environ.get("PATH", "").split(":")
    return [*path, *(d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in path)]


def initramfs(kernel: Kernel, command: GuestCommand) -> bytes:
    """busybox-static, the root's modules and ``/init`` as one cpio archive."""
    if not _static(BUSYBOX):
        raise VMError(f"{BUSYBOX} is missing or not static (Debian package busybox-static)")
    modules = module_files(kernel)
    entries: list[tuple[str, int, bytes]] = [
        (d, stat.S_IFDIR | 0o755, b"") for d in ("bin", "dev", "proc", "sys", "modules", "newroot")
    ]
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    for path in modules:
        entries.append((f"modules/{path.name}", stat.S_IFREG | 0o644, path.read_bytes()))
    script = init_script(kernel, modules, command)
    entries.append(("init", stat.S_IFREG | 0o755, script.encode()))
    return cpio(entries)


# --- QEMU --------------------------------------------------------------------------------------


def qemu_argv(
    kernel: Kernel,
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
        QEMU,
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
        *("-device", f"virtio-9p-pci,fsdev=root,mount_tag={ROOT_TAG}"),
        *("-fsdev", f"local,id=share,path={share},security_model=none,multidevs=remap"),
        *("-device", f"virtio-9p-pci,fsdev=share,mount_tag={SHARE_TAG}"),
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
    """One QEMU process running ``command`` (see :func:`initramfs`)."""

    def __init__(
        self,
        kernel: Kernel,
        command: GuestCommand,
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
        return self.command.share / STATUS_FILE

    @property
    def guest_log(self) -> Path:
        return self.command.share / "guest.log"

    def start(self) -> VirtualMachine:
        if shutil.which(QEMU) is None:
            raise VMError(f"{QEMU} is missing (Debian package qemu-system-x86)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.command.share.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()
        initrd = self.workdir / "initramfs.cpio"
        initrd.write_bytes(initramfs(self.kernel, self.command))
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
    ``/run/kilo-e2e`` like a testbed when ``owned``, so :func:`testbed.cleanup_stale`
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
        self._plane_thread: threading.Thread | None = None
        self._plane_error: BaseException | None = None

    def start(self) -> VMHost:
        """Create the namespace, the links and start the control plane (in a thread: see
        :meth:`wait_plane`)."""
        try:
            self._claim()
            testbed._run(["ip", "-n", self.netns, "tuntap", "add", "dev", TAP, "mode", "tap"])
            testbed._run(["ip", "-n", self.netns, "addr", "add", f"{TAP_IP}/30", "dev", TAP])
            testbed._run(["ip", "-n", self.netns, "link", "set", TAP, "up"])
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
            plane = self.plane

            def start() -> None:
                try:
                    plane.start()
                except BaseException as exc:
                    self._plane_error = exc

            self._plane_thread = threading.Thread(
                target=start, name=f"{self.prefix}-controlplane", daemon=True
            )
            self._plane_thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def wait_plane(self) -> ControlPlane:
        """The control plane once it is ready; VMError if it failed."""
        if self._plane_thread is not None:
            self._plane_thread.join()
        if self._plane_error is not None or self.plane is None:
            raise VMError(f"the control plane did not start: {self._plane_error}")
        return self.plane

    def _claim(self) -> None:
        if testbed.run_namespaces(self.prefix) or testbed.link_exists(self.host_link):
            raise VMError(f"VM run {self.prefix} exists already (its namespaces or link)")
        self._claimed = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        self.share.mkdir(exist_ok=True)
        testbed.OWNERS.mkdir(mode=0o755, exist_ok=True)
        if self.owned:
            record = {
                "pid": os.getpid(),
                "start": testbed.process_start(os.getpid()),
                "workdir": str(self.workdir),
            }
            (testbed.OWNERS / f"{self.prefix}.json").write_text(json.dumps(record))
        testbed._run(["ip", "netns", "add", self.netns])
        testbed._run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        with open(testbed.OWNERS / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = testbed._free_host_link_subnet()
            host, cp_ip = (str(a) for a in subnet.hosts())
            testbed._run(
                [
                    *("ip", "link", "add", self.host_link, "type", "veth"),
                    *("peer", "host0", "netns", self.netns),
                ]
            )
            testbed._run(["ip", "addr", "add", f"{host}/30", "dev", self.host_link])
        self.host_ip, self.cp_ip = host, cp_ip
        testbed._run(["ip", "link", "set", self.host_link, "up"])
        testbed._run(["ip", "-n", self.netns, "addr", "add", f"{cp_ip}/30", "dev", "host0"])
        testbed._run(["ip", "-n", self.netns, "link", "set", "host0", "up"])

    def close(self, *, keep_workdir: bool = False) -> None:
        """Stop the control plane, kill whatever runs in the namespace (QEMU), remove it
        and the host link; safe after a partial start and when called twice."""
        if not self._claimed:
            return
        if self.plane is not None:
            self.plane.stop()
            if self._plane_thread is not None:
                self._plane_thread.join(150)
                self.plane.stop()
        left = testbed.remove_namespaces([self.netns], self.host_link)
        with contextlib.suppress(OSError):
            (testbed.OWNERS / f"{self.prefix}.json").unlink()
        if not keep_workdir and not os.environ.get(testbed.KEEP_ENV):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._claimed = False
        if left or testbed.link_exists(self.host_link):
            raise VMError(f"VM run {self.prefix}: not removed: {left or [self.host_link]}")


def _new_prefix() -> str:
    import uuid

    taken = {n.split("-", 1)[0] for n in testbed.list_namespaces()}
    while True:
        prefix = f"{testbed.FAMILY}{uuid.uuid4().hex[:6]}"
        if prefix not in taken and not (testbed.OWNERS / f"{prefix}.json").exists():
            return prefix


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
