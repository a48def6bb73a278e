"""The CNI conflist adapter: reads, decides through kilo.mesh.cni, writes atomically."""

from __future__ import annotations

import os
import stat
from ipaddress import ip_network
from pathlib import Path

import pytest

from kilo.adapters.cni import update_cni_config
from kilo.errors import DataPlaneError
from tests import golden
from tests.examples import CNI_POD_CIDR

TEMPLATE = golden.text("cni-template.conflist")
REWRITTEN = golden.text("cni-rewritten.conflist")


def conflist(tmp_path: Path, text: str = TEMPLATE, mode: int = 0o600) -> Path:
    path = tmp_path / "10-kilo.conflist"
    path.write_text(text)
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_template_is_rewritten_once_with_mode_0644(tmp_path: Path) -> None:
    path = conflist(tmp_path)
    assert update_cni_config(path, CNI_POD_CIDR) is True
    assert path.read_text() == REWRITTEN
    assert mode_of(path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-kilo.conflist"]  # no temp left

    inode = path.stat().st_ino
    assert update_cni_config(path, CNI_POD_CIDR) is False
    assert path.stat().st_ino == inode  # not even rewritten with the same text


def test_a_different_pod_cidr_replaces_the_file(tmp_path: Path) -> None:
    path = conflist(tmp_path, REWRITTEN)
    inode = path.stat().st_ino
    assert update_cni_config(path, ip_network("10.2.7.0/24")) is True
    assert '"ranges":[[{"subnet":"10.2.7.0/24"}]]' in path.read_text()
    assert path.stat().st_ino != inode  # a new file renamed over the old one


def test_without_a_pod_cidr_nothing_is_read_or_written(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conflist"
    assert update_cni_config(missing, None) is False
    assert not missing.exists()
    path = conflist(tmp_path)
    assert update_cni_config(path, None) is False
    assert path.read_text() == TEMPLATE


def test_a_missing_file_is_an_error_naming_it_and_is_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conflist"
    with pytest.raises(DataPlaneError, match=f"CNI config file {missing} does not exist"):
        update_cni_config(missing, CNI_POD_CIDR)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "failed to parse CNI config file"),
        ('{"name": "kilo", "plugins": [{"type": "bridge"}]}', "no plugin has an ipam section"),
        ('{"name": "kilo"}', "failed to find plugins"),
    ],
)
def test_a_file_that_cannot_be_rewritten_is_an_error_and_is_left_alone(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = conflist(tmp_path, text)
    with pytest.raises(DataPlaneError) as caught:
        update_cni_config(path, CNI_POD_CIDR)
    assert str(caught.value).startswith(f"CNI config file {path}: ")
    assert reason in str(caught.value)
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-kilo.conflist"]


def test_an_unreadable_path_is_an_error_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.conflist"
    directory.mkdir()
    with pytest.raises(DataPlaneError, match=f"cannot read CNI config file {directory}"):
        update_cni_config(directory, CNI_POD_CIDR)


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = conflist(tmp_path)

    def refuse(src: str, dst: str) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(
        DataPlaneError, match=f"cannot write CNI config file {path}: Read-only file system"
    ):
        update_cni_config(path, CNI_POD_CIDR)
    assert path.read_text() == TEMPLATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-kilo.conflist"]


def test_a_symbolic_link_is_followed_and_kept(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = conflist(real_dir)
    link = tmp_path / "10-kilo.conflist"
    link.symlink_to(target)
    assert update_cni_config(link, CNI_POD_CIDR) is True
    assert link.is_symlink()
    assert target.read_text() == REWRITTEN
    assert sorted(p.name for p in real_dir.iterdir()) == ["10-kilo.conflist"]
