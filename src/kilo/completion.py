"""Shell completion the way cobra does it, for ``kg`` and ``kgctl``.

Pure: no I/O; the commands hand in their tree of subcommands and flags and print what comes
back. Kilo's binaries are cobra programs, and so is their completion: ``kgctl completion
bash`` prints a script, and the script asks the program itself what to offer by running

    kgctl __complete WORD... CURRENT

cobra's protocol, kept here: one candidate a line (``candidate<TAB>description``; the
description is left out by ``__completeNoDesc``), then ``:N``, ``N`` the directive bits below
(no space after the candidate, no file names, ...). A completion script written by Kilo's
``kgctl`` keeps working with this one. The scripts printed here are our own, shorter,
speaking the same protocol:

* bash: the words before the cursor are split on white space (quotes are not interpreted;
  no flag value or name here has a space), candidates without descriptions; with no
  candidate, file names unless the directive says otherwise;
* zsh: candidates with their descriptions (``_describe``), file names as in bash;
* fish: candidates with their descriptions, file names as in bash;
* PowerShell: candidates with their descriptions (``Register-ArgumentCompleter -Native``).

What is offered follows cobra: subcommands (``help`` and ``completion`` too, never the
hidden ``__complete``); after ``-``, the flags of the command and its ancestors' persistent
flags, each once unless it can repeat; after a flag that takes a value (``--output <TAB>``
or ``--output=<TAB>``), its values when it has a fixed set, file names when it names a
file, nothing otherwise; ``true``/``false`` after a bool flag's ``=``; and what the
command's ``dynamic`` completer returns for its arguments (``kgctl showconf node <TAB>``:
the ready nodes).

One module although over 500 lines: the protocol (walking the tree, the candidates and the
directive) and the four scripts that speak it change together; splitting them would put one
protocol in several places.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

# cobra's ShellCompDirective bits.
ERROR = 1
NO_SPACE = 2
NO_FILE_COMP = 4
FILTER_FILE_EXT = 8
FILTER_DIRS = 16
KEEP_ORDER = 32
DEFAULT = 0

_DIRECTIVE_NAMES = (
    (ERROR, "ShellCompDirectiveError"),
    (NO_SPACE, "ShellCompDirectiveNoSpace"),
    (NO_FILE_COMP, "ShellCompDirectiveNoFileComp"),
    (FILTER_FILE_EXT, "ShellCompDirectiveFilterFileExt"),
    (FILTER_DIRS, "ShellCompDirectiveFilterDirs"),
    (KEEP_ORDER, "ShellCompDirectiveKeepOrder"),
)

REQUEST = "__complete"
REQUEST_NO_DESCRIPTIONS = "__completeNoDesc"
REQUESTS = (REQUEST, REQUEST_NO_DESCRIPTIONS)


class Shell(enum.StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"
    POWERSHELL = "powershell"


SHELLS = tuple(shell.value for shell in Shell)
NO_DESCRIPTIONS_FLAG = "--no-descriptions"
NO_DESCRIPTIONS_HELP = "disable completion descriptions"


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """A flag: its names (the long one first), and what its value can be."""

    names: tuple[str, ...]
    help: str = ""
    takes_value: bool = True  # False: a bool flag (``--flag`` or ``--flag=VALUE``)
    choices: tuple[str, ...] = ()
    path: bool = False  # the value names a file: complete file names
    repeatable: bool = False
    persistent: bool = False  # inherited by the subcommands

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """A command of the tree: its flags, its subcommands and its arguments."""

    name: str
    help: str = ""
    options: tuple[Option, ...] = ()
    commands: tuple[Command, ...] = ()
    max_args: int = 0
    # Completes the arguments: a key of the ``dynamic`` completers handed to complete(),
    # or HELP_TOPICS for cobra's help command (the commands of the tree).
    arguments: str = ""
    hidden: bool = False

    def command(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)


HELP_TOPICS = "help topics"


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What a dynamic completer is asked: the command (its path from the root), the
    arguments and flags given so far, and the word being completed."""

    path: tuple[str, ...]
    args: tuple[str, ...]
    values: Mapping[str, str] = field(default_factory=dict)  # by long flag name, last wins
    to_complete: str = ""


Dynamic = Callable[[Request], Sequence[str]]


def help_command(root: Command) -> Command:
    """cobra's ``help [command]``."""
    return Command(
        name="help",
        help=f"Help about any command of {root.name}",
        max_args=8,
        arguments=HELP_TOPICS,
    )


def completion_command(prog: str) -> Command:
    """cobra's ``completion bash|zsh|fish|powershell [--no-descriptions]``."""
    no_descriptions = Option(names=(NO_DESCRIPTIONS_FLAG,), help=NO_DESCRIPTIONS_HELP)
    return Command(
        name="completion",
        help="Generate the autocompletion script for the specified shell",
        commands=tuple(
            Command(
                name=shell,
                help=f"Generate the autocompletion script for {shell}",
                options=(no_descriptions,),
            )
            for shell in SHELLS
        ),
    )


# --- answering __complete ---------------------------------------------------------------------


def _find_option(options: Sequence[Option], name: str) -> Option | None:
    return next((o for o in options if name in o.names), None)


def _visible_options(path: Sequence[Command]) -> list[Option]:
    """The flags a command takes: its own, then its ancestors' persistent ones."""
    options = list(path[-1].options)
    for ancestor in reversed(path[:-1]):
        options += [o for o in ancestor.options if o.persistent and o not in options]
    return options


def complete(
    root: Command, words: Sequence[str], dynamic: Mapping[str, Dynamic] | None = None
) -> tuple[list[str], int]:
    """The candidates for the last of ``words`` (the command line after the program name;
    ``""`` when the cursor follows a space) and cobra's directive."""
    *before, current = list(words) or [""]
    path = [root]
    args: list[str] = []
    values: dict[str, str] = {}
    pending: Option | None = None
    dashdash = False
    for word in before:
        if pending is not None:
            values[pending.name] = word
            pending = None
            continue
        if not dashdash and word == "--":
            dashdash = True
            continue
        if not dashdash and word.startswith("-") and len(word) > 1:
            name, eq, value = word.partition("=")
            option = _find_option(_visible_options(path), name)
            if option is None:
                continue  # unknown here: the command would refuse it; complete on regardless
            if eq:
                values[option.name] = value
            elif option.takes_value:
                pending = option
            else:
                values[option.name] = "true"
            continue
        sub = path[-1].command(word) if not args else None
        if sub is not None and not sub.hidden:
            path.append(sub)
            continue
        args.append(word)

    if "--help" in values or "--version" in values:
        return [], NO_FILE_COMP
    if pending is not None:
        return _option_values(pending, current)
    options = _visible_options(path)
    if not dashdash and current.startswith("-"):
        name, eq, value = current.partition("=")
        if eq:
            option = _find_option(options, name)
            if option is None:
                return [], ERROR
            if not option.takes_value:
                return [b for b in ("true", "false") if b.startswith(value)], NO_FILE_COMP
            return _option_values(option, value)
        found = []
        for option in options:
            if option.name in values and not option.repeatable:
                continue
            found += [_described(n, option.help) for n in option.names if n.startswith(current)]
        return found, NO_FILE_COMP

    command = path[-1]
    found = []
    if not args:
        found += [
            _described(c.name, c.help)
            for c in command.commands
            if not c.hidden and c.name.startswith(current)
        ]
    if command.arguments and len(args) < command.max_args:
        if command.arguments == HELP_TOPICS:
            found += _help_topics(root, args, current)
        elif dynamic and command.arguments in dynamic:
            request = Request(
                path=tuple(c.name for c in path),
                args=tuple(args),
                values=dict(values),
                to_complete=current,
            )
            found += [n for n in dynamic[command.arguments](request) if n.startswith(current)]
        return found, NO_FILE_COMP
    if len(args) < command.max_args and not command.commands:
        return found, DEFAULT  # arguments of their own: file names, say
    return found, NO_FILE_COMP


def _option_values(option: Option, value: str) -> tuple[list[str], int]:
    if option.choices:
        return [c for c in option.choices if c.startswith(value)], NO_FILE_COMP
    if option.path:
        return [], DEFAULT
    return [], NO_FILE_COMP


def _help_topics(root: Command, args: Sequence[str], current: str) -> list[str]:
    command: Command | None = root
    for arg in args:
        command = command.command(arg) if command is not None else None
    if command is None:
        return []
    return [
        _described(c.name, c.help)
        for c in command.commands
        if not c.hidden and c.name.startswith(current)
    ]


def _described(candidate: str, description: str) -> str:
    first_line = description.strip().split("\n", 1)[0]
    return f"{candidate}\t{first_line}" if first_line else candidate


def directive_name(directive: int) -> str:
    names = [name for bit, name in _DIRECTIVE_NAMES if directive & bit]
    return ", ".join(names) or "ShellCompDirectiveDefault"


def answer(candidates: Sequence[str], directive: int, *, descriptions: bool) -> str:
    """The text ``__complete`` prints on stdout: the candidates, then ``:DIRECTIVE``."""
    lines = []
    for candidate in candidates:
        text = candidate if descriptions else candidate.split("\t", 1)[0]
        # One line each, trimmed (a trailing tab would show an empty description).
        lines.append(text.split("\n", 1)[0].strip())
    return "".join(f"{line}\n" for line in lines) + f":{directive}\n"


def find_help_topic(root: Command, topics: Sequence[str]) -> tuple[Command, ...] | None:
    """The commands named by ``help TOPIC...`` (the path from the root), ``None`` when the
    first topic is not a command (as cobra, later words that are no subcommand are ignored:
    ``help showconf x`` is the help of showconf)."""
    path = [root]
    for index, topic in enumerate(topics):
        sub = path[-1].command(topic)
        if sub is None or sub.hidden:
            if index == 0:
                return None
            break
        path.append(sub)
    return tuple(path)


# --- the scripts ------------------------------------------------------------------------------


def _function(prog: str) -> str:
    return "__" + "".join(c if c.isalnum() else "_" for c in prog) + "_complete"


def script(shell: Shell | str, prog: str, *, descriptions: bool = True) -> str:
    """The completion script of ``prog`` for ``shell``."""
    request = REQUEST if descriptions else REQUEST_NO_DESCRIPTIONS
    text = _SCRIPTS[Shell(shell)]
    return (
        text.replace("@PROG@", prog)
        .replace("@FUNC@", _function(prog))
        .replace("@REQUEST@", request)
        .replace("@REQUEST_NO_DESC@", REQUEST_NO_DESCRIPTIONS)
    )


_BASH = r"""# bash completion for @PROG@
#
#   source <(@PROG@ completion bash)                        # in this shell
#   @PROG@ completion bash > /etc/bash_completion.d/@PROG@    # in every new shell
#
# The script asks @PROG@ itself: "@PROG@ __complete WORD... CURRENT" prints one candidate a
# line, then ":DIRECTIVE" (cobra's protocol and bits: 1 error, 2 no space, 4 no file names,
# 32 keep the order).
@FUNC@() {
    local line=${COMP_LINE:0:COMP_POINT}
    local -a words
    read -r -a words <<<"$line"
    if [[ -z $line || $line == *[[:space:]] ]]; then
        words+=("")
    fi
    local cur=${words[${#words[@]}-1]}
    local bashcur=${COMP_WORDS[COMP_CWORD]}
    local prog=${words[0]}
    prog=${prog/#\~/$HOME}
    COMPREPLY=()
    local out
    out=$("$prog" @REQUEST_NO_DESC@ "${words[@]:1}" 2>/dev/null) || return 0
    local directive=${out##*:}
    [[ $directive =~ ^[0-9]+$ ]] || return 0
    ((directive & 1)) && return 0
    local prefix=""
    if [[ $cur == -*=* ]]; then
        prefix=${cur%%=*}=
    fi
    # bash may have split the current word at "=" or ":" (COMP_WORDBREAKS): its current word
    # is the end of ours, and only that end is replaced.
    local strip=0
    if [[ ${#bashcur} -le ${#cur} && ${cur: ${#cur}-${#bashcur}} == "$bashcur" ]]; then
        strip=$((${#cur} - ${#bashcur}))
    fi
    local candidate
    while IFS= read -r candidate; do
        [[ $candidate == :* || -z $candidate ]] && continue
        candidate=$prefix$candidate
        if [[ $candidate == "$cur"* ]]; then
            COMPREPLY+=("${candidate:strip}")
        fi
    done <<<"$out"
    if ((directive & 2)); then
        compopt -o nospace 2>/dev/null
    fi
    if ((directive & 32)); then
        compopt -o nosort 2>/dev/null
    fi
    if ((${#COMPREPLY[@]} == 0 && (directive & 4))); then
        compopt +o default 2>/dev/null
    fi
    return 0
}
complete -o default -F @FUNC@ @PROG@
"""

_ZSH = r"""#compdef @PROG@
compdef _@PROG@ @PROG@

# zsh completion for @PROG@
#
#   source <(@PROG@ completion zsh)                 # in this shell (after compinit)
#   @PROG@ completion zsh > "${fpath[1]}/_@PROG@"    # in every new shell
#
# The script asks @PROG@ itself: "@PROG@ __complete WORD... CURRENT" prints one candidate a
# line ("candidate<TAB>description"), then ":DIRECTIVE" (cobra's protocol and bits: 1 error,
# 2 no space, 4 no file names, 32 keep the order).
_@PROG@() {
    local -a lines candidates options
    local out directive line value description
    out=$(${words[1]} @REQUEST@ "${(@)words[2,CURRENT]}" 2>/dev/null) || return 1
    lines=("${(@f)out}")
    directive=${lines[-1]#:}
    [[ $directive == <-> ]] || return 1
    (( directive & 1 )) && return 1
    # A flag's value after "=": complete the value alone.
    [[ ${words[CURRENT]} == -*=* ]] && compset -P '*='
    for line in "${(@)lines[1,-2]}"; do
        [[ -z $line ]] && continue
        value=${line%%$'\t'*}
        description=
        [[ $line == *$'\t'* ]] && description=${line#*$'\t'}
        candidates+=("${value//:/\\:}${description:+:$description}")
    done
    (( directive & 2 )) && options+=(-S '')
    (( directive & 32 )) && options+=(-V @PROG@)
    if (( ${#candidates} )); then
        _describe -t @PROG@ '@PROG@' candidates "${options[@]}"
        return
    fi
    (( directive & 4 )) && return 1
    _files
}

# Run when zsh autoloads this file as the function _@PROG@, not when it is sourced.
if [ "$funcstack[1]" = "_@PROG@" ]; then
    _@PROG@ "$@"
fi
"""

_FISH = r"""# fish completion for @PROG@
#
#   @PROG@ completion fish | source                                    # in this shell
#   @PROG@ completion fish > ~/.config/fish/completions/@PROG@.fish    # in every new shell
#
# The script asks @PROG@ itself: "@PROG@ __complete WORD... CURRENT" prints one candidate a
# line ("candidate<TAB>description"), then ":DIRECTIVE" (cobra's protocol and bits: 1 error,
# 2 no space, 4 no file names, 32 keep the order).
function @FUNC@
    set -l words (commandline -opc)
    set -l current (commandline -ct)
    set -l out ($words[1] @REQUEST@ $words[2..-1] $current 2>/dev/null)
    or return
    set -l directive (string replace -r '^:' '' -- $out[-1])
    string match -qr '^[0-9]+$' -- $directive
    or return
    if test (math "bitand($directive, 1)") -ne 0
        return
    end
    # A flag's value after "=": the candidates are the values alone.
    set -l prefix (string match -r -- '^-[^=]*=' $current)
    set -l count 0
    for candidate in $out[1..-2]
        test -n "$candidate"
        or continue
        set count (math $count + 1)
        printf '%s%s\n' "$prefix" "$candidate"
    end
    if test $count -eq 0; and test (math "bitand($directive, 4)") -eq 0
        __fish_complete_path $current
    end
end
complete -c @PROG@ -f -a '(@FUNC@)'
"""

_POWERSHELL = r"""# powershell completion for @PROG@
#
#   @PROG@ completion powershell | Out-String | Invoke-Expression
#
# (add that line to your PowerShell profile for every new session). The script asks @PROG@
# itself: "@PROG@ __complete WORD... CURRENT" prints one candidate a line
# ("candidate<TAB>description"), then ":DIRECTIVE" (cobra's protocol and bits: 1 error,
# 2 no space, 4 no file names, 32 keep the order).
Register-ArgumentCompleter -Native -CommandName '@PROG@' -ScriptBlock {
    param($WordToComplete, $CommandAst, $CursorPosition)
    $words = @($CommandAst.CommandElements |
        Where-Object { $_.Extent.StartOffset -lt $CursorPosition } |
        ForEach-Object { $_.Extent.Text })
    if ($WordToComplete -eq '') { $words += '' }
    $program = $words[0]
    $arguments = @($words | Select-Object -Skip 1)
    $out = @(& $program '@REQUEST@' @arguments 2>$null)
    if ($out.Count -eq 0) { return }
    $directive = 0
    if (-not [int]::TryParse(($out[-1] -replace '^:', ''), [ref]$directive)) { return }
    if ($directive -band 1) { return }
    $prefix = ''
    if ($WordToComplete -match '^(-[^=]*=)') { $prefix = $Matches[1] }
    $found = 0
    foreach ($line in ($out | Select-Object -SkipLast 1)) {
        if ($line -eq '') { continue }
        $parts = $line -split "`t", 2
        $value = $prefix + $parts[0]
        $description = $parts[0]
        if ($parts.Count -gt 1 -and $parts[1] -ne '') { $description = $parts[1] }
        if (-not ($directive -band 2)) { $value = $value + ' ' }
        $found++
        [System.Management.Automation.CompletionResult]::new(
            $value, $parts[0], 'ParameterValue', $description)
    }
    if ($found -eq 0 -and -not ($directive -band 4)) {
        Get-ChildItem -Path "$WordToComplete*" -ErrorAction SilentlyContinue | ForEach-Object {
            [System.Management.Automation.CompletionResult]::new(
                $_.Name, $_.Name, 'ProviderItem', $_.Name)
        }
    }
}
"""

_SCRIPTS = {Shell.BASH: _BASH, Shell.ZSH: _ZSH, Shell.FISH: _FISH, Shell.POWERSHELL: _POWERSHELL}


__all__ = [
    "DEFAULT",
    "ERROR",
    "HELP_TOPICS",
    "KEEP_ORDER",
    "NO_DESCRIPTIONS_FLAG",
    "NO_FILE_COMP",
    "NO_SPACE",
    "REQUEST",
    "REQUESTS",
    "REQUEST_NO_DESCRIPTIONS",
    "SHELLS",
    "Command",
    "Dynamic",
    "Option",
    "Request",
    "Shell",
    "answer",
    "complete",
    "completion_command",
    "directive_name",
    "find_help_topic",
    "help_command",
    "script",
]
