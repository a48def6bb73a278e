"""``kg``: the Kilo agent that runs on every node.

Composition root. The data-plane agent arrives with the agent issue; until then ``kg``
answers ``version`` and says plainly that it cannot run the mesh yet.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kilo import __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["version"], ["--version"]):
        print(__version__)
        return 0
    print(
        "kg: the agent is not implemented in this version; use kgctl to inspect a mesh",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
