"""Go's command lines as cobra and pflag read them, for ``kg``: flags, commands, help rows.

Pure. Kilo's ``kg`` is a cobra program, so existing manifests pass it pflag syntax:

* long flags only (``-h`` is the one shorthand); ``--flag value`` and ``--flag=value``;
  the last occurrence of a flag wins;
* a bool flag is ``--flag`` or ``--flag=VALUE`` with Go's ``strconv.ParseBool`` syntax;
  ``--flag false`` leaves the flag true and makes ``false`` a positional argument;
* string-slice flags are repeatable and comma-separated (one CSV record each);
* integers and durations have Go's syntax (:mod:`kilo.mesh.gosyntax`).

Errors are :class:`CommandLineError`, whose ``str()`` is pflag's or cobra's one-line
message with control characters escaped.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from kilo.mesh.gosyntax import go_quote, parse_bool, parse_duration, parse_int
from kilo.mesh.text import printable


class CommandLineError(Exception):
    """A command line that is refused; ``str()`` is the one-line message (Kilo's where Kilo
    refuses it too). Values repeated as given have their control characters escaped, so
    that the message stays one line."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


def read_csv(text: str) -> list[str]:
    """pflag's string-slice syntax: one CSV record; an empty value is an empty list."""
    if text == "":
        return []
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise ValueError(str(exc)) from None


FlagKind = Literal["bool", "string", "int", "duration", "strings"]
FlagValue = bool | str | int | list[str]


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    kind: FlagKind
    default: FlagValue
    help: str
    shorthand: str = ""
    shown: str = ""  # the default as help shows it, where the value cannot (a duration)

    def convert(self, text: str) -> FlagValue:
        if self.kind == "bool":
            return parse_bool(text)
        if self.kind == "int":
            return parse_int(text)
        if self.kind == "duration":
            return parse_duration(text)
        if self.kind == "strings":
            return read_csv(text)
        return text

    def shown_default(self) -> str:
        if isinstance(self.default, list):
            return "[" + ",".join(self.default) + "]" if self.default else ""
        if self.shown:
            return self.shown
        if self.kind == "string":
            return go_quote(str(self.default)) if self.default else ""
        if self.default is False:
            return ""
        return str(self.default).lower()


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    short: str
    flags: tuple[Flag, ...]
    persistent: tuple[Flag, ...] = ()  # the root's flags every command takes

    @property
    def help_flag(self) -> Flag:
        return Flag("help", "bool", False, f"help for {self.name}", shorthand="h")

    def all_flags(self) -> dict[str, Flag]:
        return {f.name: f for f in (*self.flags, *self.persistent, self.help_flag)}


def _takes_value(arg: str, flags: Mapping[str, Flag]) -> bool:
    """Whether cobra thinks the flag ``arg`` (no ``=``) consumes the next argument."""
    if arg.startswith("--"):
        flag = flags.get(arg[2:])
    elif len(arg) == 2:
        flag = next((f for f in flags.values() if f.shorthand == arg[1]), None)
    else:
        return False
    return flag is None or flag.kind != "bool"


def strip_flags(args: Sequence[str], flags: Mapping[str, Flag]) -> list[str]:
    """cobra's ``stripFlags``: the arguments that are neither flags nor flag values."""
    commands: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            break
        if arg.startswith("-") and "=" not in arg and _takes_value(arg, flags):
            if len(rest) <= 1:
                break
            rest.pop(0)
        elif arg and not arg.startswith("-"):
            commands.append(arg)
    return commands


def _without_first(args: Sequence[str], name: str, flags: Mapping[str, Flag]) -> list[str]:
    """cobra's ``argsMinusFirstX``: ``args`` without the subcommand's name."""
    position = 0
    while position < len(args):
        arg = args[position]
        if arg == "--":
            break
        if arg.startswith("-") and "=" not in arg and _takes_value(arg, flags):
            position += 2
            continue
        if not arg.startswith("-") and arg == name:
            return [*args[:position], *args[position + 1 :]]
        position += 1
    return list(args)


def find(
    root: Command, subcommands: Mapping[str, Command], argv: Sequence[str]
) -> tuple[Command, list[str]]:
    """cobra's ``Find``: the command named on the command line, and its arguments.

    As in cobra, the help flag is not defined yet at this point, so ``-h``/``--help`` count
    as flags that take a value (``kg --help version`` is help for ``kg``).
    """
    flags = {name: f for name, f in root.all_flags().items() if name != "help"}
    commands = strip_flags(argv, flags)
    if not commands:
        return root, list(argv)
    sub = subcommands.get(commands[0])
    if sub is None:
        # A root command without positional arguments (cobra's "legacyArgs").
        raise CommandLineError(f"unknown command {go_quote(commands[0])} for {go_quote(root.name)}")
    return sub, _without_first(argv, sub.name, flags)


def _flag_label(flag: Flag) -> str:
    return f"-{flag.shorthand}, --{flag.name}" if flag.shorthand else f"--{flag.name}"


def parse_flags(
    args: Sequence[str], flags: Mapping[str, Flag]
) -> tuple[dict[str, FlagValue], list[str]]:
    """pflag's ``Parse``: the value of every flag (defaults included) and the positionals."""
    values: dict[str, FlagValue] = {name: f.default for name, f in flags.items()}
    seen: set[str] = set()
    positionals: list[str] = []

    def set_value(flag: Flag, text: str) -> None:
        try:
            value = flag.convert(text)
        except ValueError as exc:
            raise CommandLineError(
                f"invalid argument {go_quote(text)} for {go_quote(_flag_label(flag))} flag: {exc}"
            ) from None
        if flag.kind == "strings" and flag.name in seen:
            previous = values[flag.name]
            assert isinstance(previous, list) and isinstance(value, list)
            value = previous + value
        values[flag.name] = value
        seen.add(flag.name)

    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if len(arg) < 2 or not arg.startswith("-"):
            positionals.append(arg)
            continue
        if arg == "--":
            positionals.extend(rest)
            break
        if arg.startswith("--"):
            if arg[2] in "-=":
                raise CommandLineError(f"bad flag syntax: {arg}")
            name, eq, text = arg[2:].partition("=")
            flag = flags.get(name)
            if flag is None:
                raise CommandLineError(f"unknown flag: --{name}")
            if eq:
                set_value(flag, text)
            elif flag.kind == "bool":
                set_value(flag, "true")
            elif rest:
                set_value(flag, rest.pop(0))
            else:
                raise CommandLineError(f"flag needs an argument: --{name}")
            continue
        shorthands = arg[1:]
        while shorthands:
            char = shorthands[0]
            flag = next((f for f in flags.values() if f.shorthand == char), None)
            if flag is None:
                raise CommandLineError(f"unknown shorthand flag: {_go_rune(char)} in -{shorthands}")
            if len(shorthands) > 2 and shorthands[1] == "=":
                set_value(flag, shorthands[2:])
                shorthands = ""
            else:  # the only shorthand, -h, is a bool flag
                set_value(flag, "true")
                shorthands = shorthands[1:]
    return values, positionals


def _go_rune(char: str) -> str:
    """Go's ``%q`` of a rune."""
    if char == "'":
        return "'\\''"
    return "'" + go_quote(char)[1:-1].replace('\\"', '"') + "'"


def flag_rows(group: Sequence[Flag]) -> list[str]:
    """cobra's help lines for ``group``: the flags, their types and defaults, aligned."""
    rows = []
    for flag in group:
        kind = {"bool": "", "int": " int", "duration": " duration"}.get(flag.kind, " string")
        kind = " strings" if flag.kind == "strings" else kind
        label = f"-{flag.shorthand}, --{flag.name}" if flag.shorthand else f"    --{flag.name}"
        default = flag.shown_default()
        text = flag.help + (f" (default {default})" if default else "")
        rows.append((f"  {label}{kind}", text))
    width = max(len(left) for left, _ in rows)
    return [f"{left:<{width}}   {text}" for left, text in rows]


__all__ = [
    "Command",
    "CommandLineError",
    "Flag",
    "FlagKind",
    "FlagValue",
    "find",
    "flag_rows",
    "parse_flags",
    "read_csv",
    "strip_flags",
]
