"""``kg``: the Kilo agent that runs on every node.

Composition root. The command line is read and validated exactly as Kilo's ``kg`` does
(``kilo.agent.settings``); the agent loop itself arrives later, so after a successful
validation ``kg`` says so and exits 1. Exit status, as in Kilo: 0 for ``version``,
``--version`` and help, 1 for every error, printed as one line on stderr.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from typing import TextIO

from kilo.agent.settings import SettingsError, ShowText, WebhookRequested, parse_args

PROG = "kg"


def _os_hostname() -> str | None:
    """Go's ``os.Hostname``: the kernel's host name, ``None`` when it cannot be read."""
    try:
        return socket.gethostname() or None
    except OSError:
        return None


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        parse_args(args, hostname_fallback=_os_hostname)
    except ShowText as shown:
        try:
            out.write(shown.text)
            out.flush()
        except BrokenPipeError:
            return 1
        return 0
    except SettingsError as exc:
        print(exc, file=err)
        return 1
    except WebhookRequested:
        print(f"{PROG} webhook: the peer-validation webhook is not implemented yet", file=err)
        return 1
    print(f"{PROG}: the agent loop is not implemented yet; flags are valid", file=err)
    return 1


if __name__ == "__main__":
    sys.exit(main())
