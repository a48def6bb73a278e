"""The CNI conflist on disk: make it hand out the node's pod CIDR (Kilo §6.10).

The decision and the new text come from :mod:`kilo.mesh.cni`; this module only reads and
writes the file. As in Kilo the file is never created (an init container installs it) and
nothing is done while the node has no pod CIDR. Unlike Kilo, which truncates and rewrites
the file in place, the new text goes to a temporary file in the same directory that is
then renamed over the old one, so that the kubelet never reads half a conflist. A symbolic
link is followed: its target is replaced and the link is kept.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from kilo.errors import DataPlaneError
from kilo.mesh import cni
from kilo.mesh.ip import IPNetwork

FILE_MODE = 0o644


def update_cni_config(path: Path, pod_cidr: IPNetwork | None) -> bool:
    """Rewrite ``path`` so that its IPAM ranges are ``pod_cidr``; ``True`` if it was rewritten.

    Returns ``False`` without touching the file when ``pod_cidr`` is ``None`` or the file
    already hands it out. Raises :class:`~kilo.errors.DataPlaneError` naming the file when
    it is missing or unreadable, when it cannot be rewritten (invalid JSON, no plugin with
    an ``ipam`` section: nothing is written) or when writing fails.
    """
    if pod_cidr is None:
        return False
    try:
        # Go's JSON decoder turns invalid UTF-8 into U+FFFD; so does "replace".
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as exc:
        raise DataPlaneError(
            f"CNI config file {path} does not exist (Kilo never creates it)"
        ) from exc
    except OSError as exc:
        raise DataPlaneError(f"cannot read CNI config file {path}: {exc.strerror or exc}") from exc
    try:
        new_text = cni.rewrite(text, pod_cidr)
    except cni.CNIConfigError as exc:
        raise DataPlaneError(f"CNI config file {path}: {exc}") from exc
    if new_text is None:
        return False
    _write_atomically(Path(os.path.realpath(path)), new_text, shown=path)
    return True


def _write_atomically(target: Path, text: str, *, shown: Path) -> None:
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            # mkstemp creates 0600; the kubelet and CNI plugins only need to read it.
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise DataPlaneError(
            f"cannot write CNI config file {shown}: {exc.strerror or exc}"
        ) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _sync_directory(target.parent)


def _sync_directory(directory: Path) -> None:
    # Makes the rename durable; a file system that cannot fsync a directory loses nothing else.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["FILE_MODE", "update_cni_config"]
