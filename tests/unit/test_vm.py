"""The virtual machine's pieces that need no VM: the initramfs, QEMU's command line, the
kernel cache (tests/kernel boots the real thing)."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from kilo.sandbox import guest, vm

KERNEL = guest.Kernel("linux-image-6.1.0-57-amd64", "6.1.192-3", "6.1.0-57-amd64", Path("/k"))


def command(timeout: float | None = 60) -> guest.GuestCommand:
    return guest.GuestCommand(
        argv=["python", "-m", "pytest", "it's"],
        cwd=Path("/repo"),
        share=Path("/tmp/share"),
        timeout=timeout,
        env=[("EXTRA", "a b")],
    )


def test_cpio_is_read_back_by_cpio(tmp_path: Path) -> None:
    archive = guest.cpio(
        [
            ("bin", stat.S_IFDIR | 0o755, b""),
            ("bin/tool", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
            ("bin/sh", stat.S_IFLNK | 0o777, b"tool"),
            ("odd", stat.S_IFREG | 0o644, b"x" * 5),
        ]
    )
    # busybox-static is what the VM needs anyway (scripts/debian-packages.sh).
    subprocess.run(
        [str(guest.BUSYBOX), "cpio", "-i", "-d"],
        input=archive,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin" / "sh").readlink() == Path("tool")
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"


def test_the_init_script_mounts_the_root_read_only_and_powers_off() -> None:
    modules = [Path("/k/lib/modules/r/kernel/fs/9p/9p.ko")]
    script = guest.init_script(KERNEL, modules, command())
    assert "insmod /modules/9p.ko" in script
    assert "mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose" in script
    # The kernel finds its modules where modprobe looks, so it loads wireguard and ipip.
    assert "mount --bind /newroot/k/lib/modules/6.1.0-57-amd64 " in script
    assert "/newroot/usr/lib/modules/6.1.0-57-amd64" in script
    assert (
        "timeout -k 10 60 python -m pytest 'it'\"'\"'s' </dev/null >/tmp/share/guest.log" in script
    )
    assert "export EXTRA='a b'" in script
    assert f"export {guest.GUEST_ENV}=/tmp/share" in script
    assert "echo o >/proc/sysrq-trigger" in script
    # The host's /tmp stays visible under a writable overlay: a CI clone lives there.
    assert "tmpfs /newroot/tmp" not in script
    assert "lowerdir=/newroot/tmp," in script
    assert "timeout" not in guest.init_script(KERNEL, modules, command(timeout=None))


def test_qemu_is_emulated_bounded_and_never_on_user_networking() -> None:
    argv = vm.qemu_argv(
        KERNEL, Path("/w/initramfs"), share=Path("/tmp/share"), console=Path("/w/console")
    )
    text = " ".join(argv)
    assert argv[:3] == [guest.QEMU, "-accel", "tcg"]
    assert "-nodefaults" in argv and "-no-reboot" in argv
    assert argv[argv.index("-m") + 1] == str(vm.MEMORY_MB)
    assert argv[argv.index("-smp") + 1] == str(vm.CPUS)
    assert "readonly=on" in argv[argv.index("-fsdev") + 1]
    assert "tap,id=net0,ifname=vm0,script=no,downscript=no" in argv
    # One network device, on the tap; no user-mode (slirp) networking, no default NIC.
    assert [a for a in argv if a.startswith(("tap,", "user", "bridge"))] == [argv[-3]]
    assert argv.count("-netdev") == 1 and "-nic" not in argv and "-net" not in argv
    assert "slirp" not in text and "hostfwd" not in text
    without = vm.qemu_argv(
        KERNEL, Path("/w/initramfs"), share=Path("/s"), console=Path("/c"), tap=None
    )
    assert without[without.index("-net") + 1] == "none" and "-netdev" not in without


def test_a_cached_kernel_is_used_only_when_complete(tmp_path: Path) -> None:
    root = tmp_path / "k"
    assert guest._load_cached(root) is None
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "vmlinuz-r").write_bytes(b"kernel")
    meta = {"package": "p", "version": "1", "release": "r"}
    (root / "kilo-kernel.json").write_text(json.dumps(meta))
    assert guest._load_cached(root) is None  # no modules.dep: depmod never finished
    (root / "lib" / "modules" / "r").mkdir(parents=True)
    (root / "lib" / "modules" / "r" / "modules.dep").write_text("")
    assert guest._load_cached(root) == guest.Kernel("p", "1", "r", root)


def test_the_cache_directory_is_named_after_package_and_version() -> None:
    assert guest._cache_name("linux-image-6.1.0-57-amd64", "6.1.192-3") == (
        "linux-image-6.1.0-57-amd64_6.1.192-3"
    )
    assert guest._cache_name("linux-image-x", "1:2~b+3") == "linux-image-x_1_2_b_3"


def test_a_dynamic_busybox_does_not_count(tmp_path: Path) -> None:
    dynamic = tmp_path / "busybox"
    dynamic.write_bytes(b"\x7fELF" + b"\0" * 100 + b"/lib64/ld-linux-x86-64.so.2\0")
    assert not guest._static(dynamic)
    static = tmp_path / "static"
    static.write_bytes(b"\x7fELF" + b"\0" * 200)
    assert guest._static(static)
    assert not guest._static(tmp_path / "absent")
