"""What the virtual machine boots: Debian's kernel and a tiny initramfs.

Kilo's default data plane needs kernel WireGuard and IPIP, and the kernel of the machines
this project runs on has neither module; :mod:`kilo.sandbox.vm` runs QEMU with what this
module builds.

* :func:`fetch_kernel` downloads the kernel package (``apt-get download``, never
  installed: the host's ``/boot`` is not touched) and unpacks it into a cache keyed on the
  package and its version (``~/.cache/kilo-kernel``, ``KILO_KERNEL_CACHE`` overrides); a
  missing or partial cache rebuilds itself. The kernel is the one ``linux-image-amd64``
  names (``KILO_KERNEL_PACKAGE`` overrides): Debian's generic flavour, because the
  ``cloud`` flavour has no 9p and Debian bookworm ships no ``virtiofsd``.
* :func:`initramfs` is a tiny initramfs (busybox-static, the 9p/virtio/overlay modules and
  an ``/init`` script) that mounts the host's root read-only with the page cache on, puts
  tmpfs on ``/run``, overlays on ``/etc``, ``/var``, ``/root`` and ``/tmp`` (so that a
  checkout under the host's ``/tmp`` is there too), the
  kernel's modules on ``/lib/modules/<release>`` (so that the kernel loads ``wireguard``
  and ``ipip`` itself, through ``modprobe``, when something creates such a link) and one
  writable directory shared with the host at the same path, then runs the command as
  process 1 of the real root, records its exit status in that directory and powers off.
  No udev, no systemd: the guest reaches the command in about 6 s under emulation.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kilo.errors import SandboxError

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


class VMError(SandboxError):
    """The virtual machine could not be built, started or run."""


def run(argv: Sequence[str], *, timeout: float = 120, cwd: Path | None = None) -> str:
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
    return run(["apt-cache", *args], timeout=60)


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
            run(["apt-get", "update", "-qq"], timeout=300)
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
            run(["apt-get", "download", f"{package}={version}"], cwd=work, timeout=600)
            debs = list(work.glob("*.deb"))
            if len(debs) != 1:
                raise VMError(f"apt-get download {package}={version} gave {debs}")
            tree = work / "tree"
            run(["dpkg-deb", "-x", str(debs[0]), str(tree)], timeout=600)
            debs[0].unlink()
            releases = [p.name for p in (tree / "lib" / "modules").iterdir()]
            if len(releases) != 1:
                raise VMError(f"{package}: expected one lib/modules/<release>, got {releases}")
            release = releases[0]
            # A package's modules.dep is made by its postinst, which never runs here.
            run(["depmod", "-b", str(tree), release], timeout=300)
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
        out = run(
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
        # /tmp too (not a fresh tmpfs): a checkout or venv under the host's /tmp (a CI clone)
        # must stay visible to the guest's command.
        for d in ("/etc", "/var", "/root", "/tmp")
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
{overlays}
if [ ! -d /newroot/usr/lib/modules ]; then
  # A host without kernel modules (a container): the read-only root has no mount point,
  # so /usr/lib gets a writable layer to make one in.
  o=/newroot/run/kilo-vm/overlay/usr/lib
  mkdir -p $o/upper $o/work
  mount -t overlay overlay -o lowerdir=/newroot/usr/lib,upperdir=$o/upper,workdir=$o/work \
    /newroot/usr/lib || fail 'overlay /usr/lib'
  mkdir -p /newroot/usr/lib/modules
fi
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
    return (
        "the virtual machine needs "
        + ", ".join(needs)
        + " (`bash scripts/debian-packages.sh kernel` installs them)."
    )


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
