"""kubeconfig resolution like kubectl's: explicit file, KUBECONFIG list, default, in-cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kilo.adapters import kubeconfig
from kilo.errors import BackendError


def write(
    path: Path, *, cluster: str, server: str, current: str | None = None, ca: str | None = None
) -> Path:
    cluster_body: dict[str, str] = {"server": server}
    if ca is not None:
        cluster_body["certificate-authority"] = ca
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": cluster_body}],
        "users": [{"name": cluster, "user": {"token": "t"}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
    }
    if current:
        config["current-context"] = current
    path.write_text(yaml.safe_dump(config))
    return path


def test_explicit_file_wins_over_the_environment(tmp_path: Path) -> None:
    explicit = write(tmp_path / "a", cluster="a", server="https://127.0.0.1:1", current="a")
    other = write(tmp_path / "b", cluster="b", server="https://127.0.0.1:2", current="b")
    config = kubeconfig.load(str(explicit), environ={"KUBECONFIG": str(other)})
    assert config.cluster.server == "https://127.0.0.1:1"


def test_kubeconfig_list_is_merged_first_definition_wins(tmp_path: Path) -> None:
    first = write(tmp_path / "first", cluster="a", server="https://127.0.0.1:1")
    second = write(tmp_path / "second", cluster="b", server="https://127.0.0.1:2", current="b")
    also_a = write(tmp_path / "third", cluster="a", server="https://127.0.0.1:3", current="a")
    env = {"KUBECONFIG": f"{tmp_path / 'missing'}:{first}:{second}:{also_a}"}
    # No current-context in the first file: the second file's wins; cluster "a" is the first's.
    assert kubeconfig.load(environ=env).cluster.server == "https://127.0.0.1:2"
    env = {"KUBECONFIG": f"{also_a}:{first}"}
    assert kubeconfig.load(environ=env).cluster.server == "https://127.0.0.1:3"


def test_relative_paths_are_relative_to_their_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = write(
        tmp_path / "sub" / "config",
        cluster="a",
        server="https://127.0.0.1:1",
        current="a",
        ca="ca.crt",
    )
    merged = kubeconfig.merge([kubeconfig._read(path)])
    assert merged["clusters"][0]["cluster"]["certificate-authority"] == str(
        tmp_path / "sub" / "ca.crt"
    )


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("secret-token")
    (account / "ca.crt").write_text("not a real CA")
    (account / "namespace").write_text("kube-system")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    config = kubeconfig.load(environ={}, service_account=str(account))
    assert config.cluster.server == "https://127.0.0.1:6443"


def test_nothing_found_names_what_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(BackendError, match="no kubeconfig found"):
        kubeconfig.load(environ={}, service_account=str(tmp_path / "none"))


def test_broken_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("clusters: [")
    with pytest.raises(BackendError, match=f"kubeconfig {broken} is not valid YAML"):
        kubeconfig.load(str(broken))
    empty = tmp_path / "empty"
    empty.write_text("current-context: nowhere\nclusters: []\ncontexts: []\n")
    with pytest.raises(BackendError, match=f"kubeconfig {empty}: "):
        kubeconfig.load(str(empty))
