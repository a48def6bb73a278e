#!/usr/bin/env bash
# Install the Debian packages that kilo-sandbox and the tests use, only those that are missing
# (`make sandbox` and .ci/run call this; root, apt-get). Go is not among them: the control
# plane's build wants a newer Go than Debian ships (https://go.dev/dl/, /usr/local/go).
set -euo pipefail
# A non-interactive or non-root PATH may lack the sbin directories that ip and iptables live in.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables-restore >/dev/null || need+=(iptables)
for plugin in bridge host-local portmap; do
  [ -x "/usr/lib/cni/$plugin" ] || { need+=(containernetworking-plugins); break; }
done
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v ping >/dev/null || need+=(iputils-ping)
# nsenter, unshare and setpriv (the tests drop capabilities and users with it); sysctl.
{ command -v nsenter && command -v unshare && command -v setpriv; } >/dev/null || need+=(util-linux)
command -v sysctl >/dev/null || need+=(procps)
# Graphviz renders the mesh graph as SVG (kgctl graph, the agent's /graph, the sandbox).
command -v dot >/dev/null || need+=(graphviz)
# The completion scripts of kg and kgctl are tested in real zsh and fish (bash is there).
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)
# The venv of the Makefile.
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
# The image: docker/build.sh builds it with mmdebstrap; the tests run it with podman (which
# brings crun and conmon).
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v podman >/dev/null || need+=(podman)

if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
