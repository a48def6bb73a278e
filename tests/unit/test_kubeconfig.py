"""kubeconfig resolution like kubectl's: explicit file, KUBECONFIG list, default, in-cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kilo.adapters import kubeconfig
from kilo.errors import BackendError
from kilo.sandbox.controlplane import CertificateAuthority, pem_cert
from tests import bad_kubeconfigs


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


# The kubeconfig Kilo's k3s manifests write (init container generate-kubeconfig, squat/kilo
# 944dff57): the context names a cluster "kilo" that the clusters list never names.
KILO_K3S_KUBECONFIG = """\
    apiVersion: v1
    kind: Config
    name: kilo
    clusters:
    - cluster:
        server: https://127.0.0.1:6444
        certificate-authority: /var/lib/rancher/k3s/agent/server-ca.crt
    users:
    - name: kilo
      user:
        token: a-token
    contexts:
    - name: kilo
      context:
        cluster: kilo
        namespace: kube-system
        user: kilo
    current-context: kilo
"""


@pytest.fixture
def in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("secret-token")
    (account / "ca.crt").write_bytes(pem_cert(CertificateAuthority.create("in-cluster").cert))
    (account / "namespace").write_text("kube-system")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.43.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    return account


@pytest.mark.parametrize(
    "text",
    [
        KILO_K3S_KUBECONFIG,
        yaml.safe_dump(bad_kubeconfigs.config(context={"cluster": "ghost", "user": "u"})),
        yaml.safe_dump({**bad_kubeconfigs.config(), "clusters": [{"name": "c", "cluster": {}}]}),
    ],
    ids=["kilo-k3s", "missing-cluster", "empty-cluster"],
)
def test_a_context_without_its_cluster_falls_back_to_the_in_cluster_config_like_client_go(
    tmp_path: Path, in_cluster: Path, text: str
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    config = kubeconfig.load(str(path), environ={}, service_account=str(in_cluster))
    assert config.cluster.server == "https://10.43.0.1:443"
    assert config.user is not None
    assert config.user.token == "secret-token"


def test_without_a_cluster_to_fall_back_to_the_missing_cluster_is_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"
    path.write_text(KILO_K3S_KUBECONFIG)
    with pytest.raises(BackendError) as caught:
        kubeconfig.load(str(path), environ={}, service_account=str(tmp_path / "none"))
    assert str(caught.value) == (
        f'kubeconfig {path}: context "kilo" names the cluster "kilo", which is not defined'
    )


def test_a_cluster_without_a_server_is_no_empty_configuration(
    tmp_path: Path, in_cluster: Path
) -> None:
    """client-go falls back only when the cluster is missing or empty, not for a cluster
    that has other fields but no server."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(bad_kubeconfigs.config(cluster={"insecure-skip-tls-verify": True}))
    )
    with pytest.raises(BackendError, match='cluster "c" has no server'):
        kubeconfig.load(str(path), environ={}, service_account=str(in_cluster))


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


# --- bad kubeconfigs: one line naming the file and what is wrong (issue 11) --------------------


@pytest.mark.parametrize("name", sorted(bad_kubeconfigs.CASES))
def test_a_bad_kubeconfig_is_one_line_naming_the_file(name: str, tmp_path: Path) -> None:
    path, expected = bad_kubeconfigs.write(name, tmp_path)
    with pytest.raises(BackendError) as caught:
        kubeconfig.load(str(path), environ={})
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    if name == "garbage-certificate-authority-data":
        assert message.startswith(expected)
    else:
        assert message == expected


def test_relative_paths_in_messages_are_resolved_against_the_file(tmp_path: Path) -> None:
    path, expected = bad_kubeconfigs.write("missing-certificate-authority", tmp_path)
    assert f'"{tmp_path / "ca.crt"}"' in expected
    with pytest.raises(BackendError, match="cannot read certificate-authority"):
        kubeconfig.load(str(path), environ={})


def test_each_message_names_the_file_that_defines_the_entry(tmp_path: Path) -> None:
    # The context comes from the first file, its (broken) cluster from the second.
    first = tmp_path / "first"
    first.write_text(
        yaml.safe_dump(
            {
                "current-context": "ctx",
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    second = tmp_path / "second"
    second.write_text(yaml.safe_dump(bad_kubeconfigs.config(server="http://[::1", current=None)))
    with pytest.raises(BackendError) as caught:
        kubeconfig.load(environ={"KUBECONFIG": f"{first}:{second}"})
    assert str(caught.value) == (
        f'kubeconfig {second}: cluster "c": server "http://[::1" is not a valid URL '
        "(Invalid port: ':1')"
    )
    # The file of the current context is the config's file, for later messages.
    second.write_text(yaml.safe_dump(bad_kubeconfigs.config(current=None)))
    config = kubeconfig.load(environ={"KUBECONFIG": f"{first}:{second}"})
    assert config.fname == first
    assert kubeconfig.describe(config) == f"kubeconfig {first}"


def test_a_context_without_a_user_is_anonymous(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(bad_kubeconfigs.config(context={"cluster": "c"})))
    config = kubeconfig.load(str(path), environ={})
    assert config.user is not None and config.user.token is None


def test_a_credential_plugin_is_looked_up_in_its_own_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "get-token"
    plugin.write_text("#!/bin/sh\nexit 0\n")
    plugin.chmod(0o755)
    exec_ = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "get-token"}
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(bad_kubeconfigs.config(user={"exec": exec_})))
    with pytest.raises(BackendError, match='the credential plugin "get-token"'):
        kubeconfig.load(str(path), environ={"PATH": "/usr/bin:/bin"})
    exec_["env"] = [{"name": "PATH", "value": str(bin_dir)}]  # type: ignore[assignment]
    path.write_text(yaml.safe_dump(bad_kubeconfigs.config(user={"exec": exec_})))
    config = kubeconfig.load(str(path), environ={"PATH": "/usr/bin:/bin"})
    assert config.user is not None and config.user.exec is not None


def test_in_cluster_without_the_service_environment_is_an_error_not_a_key_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("secret-token")
    (account / "namespace").write_text("kube-system")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(BackendError) as caught:
        kubeconfig.load(environ={}, service_account=str(account))
    assert str(caught.value).endswith(
        "not running in a cluster (KUBERNETES_SERVICE_HOST is not set)"
    )


@pytest.mark.parametrize(
    ("server", "tls", "expected"),
    [
        ("10.0.0.1:6443", None, "http://10.0.0.1:6443"),
        ("k8s.example:6443", {"insecure-skip-tls-verify": True}, "https://k8s.example:6443"),
        ("[::1]:6443", {"certificate-authority": "ca.crt"}, "https://[::1]:6443"),
        ("https://k8s.example", None, "https://k8s.example"),
    ],
)
def test_a_server_without_a_scheme_gets_one_as_in_client_go(
    tmp_path: Path, server: str, tls: dict[str, object] | None, expected: str
) -> None:
    """client-go's DefaultServerURL: https:// when TLS is configured, else http://."""
    (tmp_path / "ca.crt").write_bytes(pem_cert(CertificateAuthority.create("ca").cert))
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(bad_kubeconfigs.config(cluster={"server": server, **(tls or {})}))
    )
    assert kubeconfig.load(str(path), environ={}).cluster.server == expected
