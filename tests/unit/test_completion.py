"""Shell completion of ``kgctl`` and ``kg``: cobra's ``__complete`` protocol, the commands
that print the scripts, and the scripts themselves in real bash, zsh and fish."""

from __future__ import annotations

import argparse
import io
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kilo import completion
from kilo.agent import __main__ as kg
from kilo.agent import command_line
from kilo.cli import kgctl
from tests.examples import EXAMPLE_DUMP

BIN = Path(sys.executable).parent
FILE = ["--backend", "file", "--file", str(EXAMPLE_DUMP)]
READY_NODES = ["alpha", "beta", "delta", "gamma"]


def kgctl_complete(*words: str, env: dict[str, str] | None = None) -> tuple[list[str], int]:
    out, err = io.StringIO(), io.StringIO()
    if env is not None:
        saved = dict(os.environ)
        os.environ.update(env)
    try:
        assert kgctl.main(["__complete", *words], out=out, err=err) == 0
    finally:
        if env is not None:
            os.environ.clear()
            os.environ.update(saved)
    *lines, directive = out.getvalue().splitlines()
    assert err.getvalue().startswith("Completion ended with directive: ")
    return lines, int(directive.removeprefix(":"))


def names(lines: list[str]) -> list[str]:
    return [line.split("\t", 1)[0] for line in lines]


# --- cobra's protocol ------------------------------------------------------------------------


def test_commands_are_offered_with_descriptions_and_no_file_names() -> None:
    lines, directive = kgctl_complete("")
    assert names(lines) == [
        "graph",
        "showconf",
        "plan",
        "list",
        "connect",
        "multicluster",
        "version",
        "completion",
        "help",
    ]
    assert "showconf\tprint the WireGuard configuration of a node or peer" in lines
    assert directive == completion.NO_FILE_COMP
    assert kgctl_complete("sh") == (
        ["showconf\tprint the WireGuard configuration of a node or peer"],
        completion.NO_FILE_COMP,
    )
    assert names(kgctl_complete("showconf", "")[0]) == ["node", "peer"]
    assert names(kgctl_complete("completion", "")[0]) == ["bash", "zsh", "fish", "powershell"]


def test_no_descriptions_when_asked_as_cobra_is() -> None:
    out = io.StringIO()
    kgctl.main(["__completeNoDesc", "sh"], out=out, err=io.StringIO())
    assert out.getvalue() == "showconf\n:4\n"
    lines, _ = kgctl_complete("sh", env={"KGCTL_COMPLETION_DESCRIPTIONS": "false"})
    assert lines == ["showconf"]
    lines, _ = kgctl_complete("sh", env={"COBRA_COMPLETION_DESCRIPTIONS": "0"})
    assert lines == ["showconf"]


def test_ready_nodes_and_peers_of_the_cluster_the_line_names() -> None:
    assert kgctl_complete(*FILE, "showconf", "node", "") == (READY_NODES, completion.NO_FILE_COMP)
    assert kgctl_complete("showconf", "node", *FILE, "g") == (["gamma"], completion.NO_FILE_COMP)
    assert kgctl_complete(*FILE, "showconf", "peer", "") == (["laptop"], completion.NO_FILE_COMP)
    assert kgctl_complete(*FILE, "plan", "node", "b") == (["beta"], completion.NO_FILE_COMP)
    assert kgctl_complete(*FILE, "connect", "") == (["laptop"], completion.NO_FILE_COMP)
    # The name is given: nothing more, and no file names.
    assert kgctl_complete(*FILE, "showconf", "node", "alpha", "") == ([], completion.NO_FILE_COMP)


def test_an_unreadable_cluster_offers_no_names_and_says_why_on_stderr(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    missing = str(tmp_path / "missing.yaml")
    kgctl.main(
        ["__complete", "--backend=file", f"--file={missing}", "showconf", "node", ""],
        out=out,
        err=err,
    )
    assert out.getvalue() == ":4\n"
    assert err.getvalue().startswith("[Error] ")
    assert missing in err.getvalue()


def test_flags_of_the_command_and_its_global_flags_each_once() -> None:
    lines, directive = kgctl_complete("showconf", "node", "alpha", "--a")
    assert names(lines) == ["--as-peer", "--allowed-ips"]
    assert directive == completion.NO_FILE_COMP
    # Given once: --as-peer is not offered again; --allowed-ips can repeat.
    lines, _ = kgctl_complete("showconf", "node", "alpha", "--as-peer", "--allowed-ips=x", "--a")
    assert names(lines) == ["--allowed-ips"]
    assert "--port" in names(kgctl_complete("graph", "--")[0])
    assert names(kgctl_complete("--p")[0]) == ["--port"]
    assert names(kgctl_complete("showconf", "node", "a", "-")[0])[:3] == [
        "--help",
        "-h",
        "--as-peer",
    ]


def test_flag_values_from_their_fixed_set_after_a_space_or_an_equals_sign() -> None:
    formats = (["wireguard", "yaml", "json"], completion.NO_FILE_COMP)
    assert kgctl_complete("showconf", "node", "a", "--output", "") == formats
    assert kgctl_complete("showconf", "node", "a", "-o", "") == formats
    assert kgctl_complete("showconf", "node", "a", "--output=") == formats
    assert kgctl_complete("showconf", "node", "a", "--output=y") == (
        ["yaml"],
        completion.NO_FILE_COMP,
    )
    assert kgctl_complete("--mesh-granularity", "") == (
        ["location", "full", "cross", "auto"],
        completion.NO_FILE_COMP,
    )
    assert kgctl_complete("connect", "--log-level=w") == (["warn"], completion.NO_FILE_COMP)
    assert kgctl_complete("showconf", "--as-peer=") == (["true", "false"], completion.NO_FILE_COMP)
    # A bool flag takes no value after a space: the next word is the command's.
    assert names(kgctl_complete("showconf", "--as-peer", "")[0]) == ["node", "peer"]


def test_file_names_for_flags_that_name_files_nothing_for_free_values() -> None:
    for flag in ("--kubeconfig", "--file"):
        assert kgctl_complete(flag, "") == ([], completion.DEFAULT)
        assert kgctl_complete(f"{flag}=") == ([], completion.DEFAULT)
    assert kgctl_complete("connect", "--private-key", "") == ([], completion.DEFAULT)
    assert kgctl_complete("--port", "") == ([], completion.NO_FILE_COMP)
    assert kgctl_complete("--bogus=") == ([], completion.ERROR)


def test_help_topics_are_the_commands() -> None:
    assert names(kgctl_complete("help", "")[0]) == names(kgctl_complete("")[0])
    assert names(kgctl_complete("help", "showconf", "")[0]) == ["node", "peer"]
    assert kgctl_complete("--help", "") == ([], completion.NO_FILE_COMP)


def _options(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        else:
            for option in action.option_strings:
                yield (*path, option)


def _tree_options(
    command: completion.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    for option in command.options:
        for name in option.names:
            yield (*path, name)
    for sub in command.commands:
        yield from _tree_options(sub, (*path, sub.name))


def test_the_completion_tree_is_read_from_the_parser_whole() -> None:
    parser = kgctl.build_parser()
    assert set(_tree_options(kgctl.completion_tree(parser))) == set(_options(parser))


# --- kg --------------------------------------------------------------------------------------


def kg_complete(*words: str) -> tuple[list[str], int]:
    out, err = io.StringIO(), io.StringIO()
    assert kg.main(["__complete", *words], out=out, err=err) == 0
    *lines, directive = out.getvalue().splitlines()
    assert err.getvalue().startswith("Completion ended with directive: ")
    return lines, int(directive.removeprefix(":"))


def test_kg_completes_its_commands_flags_and_their_values() -> None:
    assert names(kg_complete("")[0]) == ["completion", "help", "version", "webhook"]
    assert kg_complete("--log-level=d") == (["debug"], completion.NO_FILE_COMP)
    assert kg_complete("--encapsulate", "") == (
        ["never", "crosssubnet", "always"],
        completion.NO_FILE_COMP,
    )
    assert kg_complete("--compatibility", "") == (["flannel", "cilium"], completion.NO_FILE_COMP)
    assert kg_complete("--mesh-granularity=") == (
        ["location", "full", "cross"],
        completion.NO_FILE_COMP,
    )
    assert kg_complete("--cni-path", "") == ([], completion.DEFAULT)
    assert kg_complete("--clean-up=") == (["true", "false"], completion.NO_FILE_COMP)
    assert names(kg_complete("--service")[0]) == ["--service-cidr"]
    # Repeatable: still offered once given.
    assert names(kg_complete("--service-cidr=10.0.0.0/8", "--service")[0]) == ["--service-cidr"]
    assert names(kg_complete("--port=1", "--por")[0]) == []
    webhook = names(kg_complete("webhook", "--")[0])
    assert "--cert-file" in webhook and "--log-level" in webhook and "--mtu" not in webhook
    assert kg_complete("webhook", "--key-file", "") == ([], completion.DEFAULT)


def test_kg_completion_prints_the_scripts_and_its_help() -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = kg.main(list(argv), out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    for shell in completion.SHELLS:
        code, out, err = run("completion", shell)
        assert (code, err) == (0, "")
        assert out == completion.script(shell, "kg")
    assert run("completion", "zsh", "--no-descriptions")[1] == completion.script(
        "zsh", "kg", descriptions=False
    )
    code, out, _ = run("completion")
    assert code == 0
    assert out == command_line.help_text("completion")
    assert "bash        Generate the autocompletion script for bash" in out
    assert run("help", "completion")[1] == out
    assert run("completion", "tcsh") == (1, "", 'unknown command "tcsh" for "kg completion"\n')
    assert run("completion", "bash", "x") == (
        1,
        "",
        'unknown command "x" for "kg completion bash"\n',
    )


# --- the scripts in real shells --------------------------------------------------------------


class Terminal:
    """An interactive shell on a pseudo-terminal: keys in, screen text out."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "TERM": "dumb",
            "HOME": str(cwd),
        }
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the shell
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        self.screen = ""

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until ``pattern`` appears on the screen (the deadline only guards a hang)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (match := regex.search(self.screen)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} never appeared; the screen: {self.screen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"the shell ended; the screen: {self.screen!r}")
                self.screen += data.decode(errors="replace")
        self.screen = self.screen[match.end() :]
        return match

    def completed(self, line: str) -> list[str]:
        """The words of ``line`` after one TAB at its end: the line is run as the arguments
        of printf (Ctrl-A goes to its start, Ctrl-E to its end)."""
        self.type(line + "\t")
        self.type("\x05; echo @@\x01printf '<%s>' \r")
        return re.findall(r"<([^<>]*)>", self.expect(r"((?:<[^<>\r\n]*>)+)@@").group(1))

    def close(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


SHELLS = {
    "bash": ["bash", "--norc", "--noprofile", "-i"],
    "zsh": ["zsh", "-f", "-i"],
}
SETUP = {
    "bash": "PS1='$ '; source <(kgctl completion bash); source <(kg completion bash)",
    "zsh": "PS1='$ '; bindkey -e; autoload -Uz compinit; compinit -u; "
    "source <(kgctl completion zsh); source <(kg completion zsh)",
}


@pytest.fixture(params=sorted(SHELLS))
def terminal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Terminal]:
    shell = request.param
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (scripts/debian-packages.sh installs it)")
    (tmp_path / "example.yaml").write_text("")
    term = Terminal(SHELLS[shell], tmp_path)
    try:
        term.type(SETUP[shell] + "; echo READY\r")
        term.expect(r"READY\r?\n")
        yield term
    finally:
        term.close()


def test_tab_in_a_real_shell(terminal: Terminal) -> None:
    dump = str(EXAMPLE_DUMP)
    assert terminal.completed("kgctl sh") == ["kgctl", "showconf"]
    assert terminal.completed(f"kgctl --backend file --file {dump} showconf node g") == [
        *["kgctl", "--backend", "file", "--file", dump, "showconf", "node", "gamma"]
    ]
    # A flag's value after "=", which bash splits into words of its own.
    assert terminal.completed("kgctl showconf node a --output=y") == [
        *["kgctl", "showconf", "node", "a", "--output=yaml"]
    ]
    assert terminal.completed("kgctl showconf node a -o j") == [
        *["kgctl", "showconf", "node", "a", "-o", "json"]
    ]
    assert terminal.completed("kgctl completion f") == ["kgctl", "completion", "fish"]
    assert terminal.completed("kg --log-level=de") == ["kg", "--log-level=debug"]
    assert terminal.completed("kg webhook --cert") == ["kg", "webhook", "--cert-file"]
    # File names where a flag names a file, and only there.
    assert terminal.completed("kgctl --kubeconfig exa") == ["kgctl", "--kubeconfig", "example.yaml"]
    assert terminal.completed("kgctl graph exa") == ["kgctl", "graph", "exa"]


def test_bash_registers_the_function_for_the_command() -> None:
    script = completion.script("bash", "kgctl")
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", f"{script}\ncomplete -p kgctl"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "complete -o default -F __kgctl_complete kgctl\n"


def test_fish_completes_with_descriptions() -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed (scripts/debian-packages.sh installs it)")

    def complete(line: str) -> list[str]:
        result = subprocess.run(
            ["fish", "--no-config", "-c", f"kgctl completion fish | source; complete -C {line!r}"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        )
        return result.stdout.splitlines()

    assert complete("kgctl sh") == ["showconf\tprint the WireGuard configuration of a node or peer"]
    assert complete(f"kgctl --backend file --file {EXAMPLE_DUMP} showconf node ") == READY_NODES
    assert complete("kgctl showconf node a --output=y") == ["--output=yaml"]
    assert complete(f"kgctl --kubeconfig {EXAMPLE_DUMP.parent}/clu") == [
        f"{EXAMPLE_DUMP.parent}/cluster.yaml"
    ]
    assert complete("kgctl graph /") == []


def test_powershell_script_asks_the_program_and_registers_a_native_completer() -> None:
    # No PowerShell here to run it: its shape only.
    script = completion.script("powershell", "kgctl")
    assert "Register-ArgumentCompleter -Native -CommandName 'kgctl'" in script
    assert "& $program '__complete' @arguments" in script
    assert "__completeNoDesc" in completion.script("powershell", "kgctl", descriptions=False)
