"""``kg`` with exactly the capabilities the manifests give the agent: NET_ADMIN and NET_RAW.

``python -m tests.e2e.restricted_kg ARGS`` re-executes itself as ``python -m kilo.agent ARGS``
through util-linux's setpriv with every other capability out of the bounding set (so uid 0
keeps only these two, as in a container with ``drop: [ALL]`` and ``add: [NET_ADMIN,
NET_RAW]``), no inheritable capabilities and no_new_privs (``allowPrivilegeEscalation:
false``). The harness starts it through ``Testbed.start_agent(module=...)``.
"""

from __future__ import annotations

import os
import sys

CAPABILITIES = ("net_admin", "net_raw")


def main() -> None:
    keep = ",".join(f"+{c}" for c in CAPABILITIES)
    os.execvp(
        "setpriv",
        [
            "setpriv",
            f"--bounding-set=-all,{keep}",
            "--inh-caps=-all",
            "--no-new-privs",
            sys.executable,
            "-m",
            "kilo.agent",
            *sys.argv[1:],
        ],
    )


if __name__ == "__main__":
    main()
