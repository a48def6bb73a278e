#!/usr/bin/env bash
# Install the Debian packages of the named sets, only those that are missing (root, apt-get,
# never recommended packages). Every set lists what it installs before installing it.
#   sandbox  what `make sandbox` (kilo-sandbox up) needs: the default
#   kernel   `kilo-sandbox up --kernel` and the kernel suite: QEMU and the VM's initramfs
#   test     what `make test` needs besides: sandbox, kernel, the shells and the image's tools
# .ci/run installs `test`. Go is not among them: the control plane's build wants a newer Go
# than Debian ships (https://go.dev/dl/, /usr/local/go).
set -euo pipefail
# A non-interactive or non-root PATH may lack the sbin directories that ip and iptables live in.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

sets=("${@:-sandbox}")
want() { local s; for s in "${sets[@]}"; do [ "$s" = "$1" ] || [ "$s" = test ] && return 0; done; return 1; }
for s in "${sets[@]}"; do
  case "$s" in
    sandbox|kernel|test) ;;
    *) echo "debian-packages.sh: unknown set \"$s\"; the sets are sandbox, kernel and test" >&2; exit 2 ;;
  esac
done

need=()
# sandbox: the testbed's network namespaces, real iptables, the CNI plugins, wireguard-go and wg.
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
# The venv of the Makefile.
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)

if want kernel; then
  # `kilo-sandbox up --kernel` and the kernel suite (tests/kernel) boot Debian's kernel under
  # QEMU's emulation (src/kilo/sandbox/vm.py): QEMU for x86 (without recommends: no GUI, only
  # SeaBIOS and the iPXE ROMs), a static busybox for its initramfs, kmod's depmod and
  # modprobe. The kernel package itself is fetched with `apt-get download` into
  # ~/.cache/kilo-kernel, never installed.
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need+=(busybox-static)
  { command -v depmod && command -v modprobe; } >/dev/null || need+=(kmod)
fi

if want test; then
  # The completion scripts of kg and kgctl are tested in real zsh and fish (bash is there).
  command -v zsh >/dev/null || need+=(zsh)
  command -v fish >/dev/null || need+=(fish)
  # The image: docker/build.sh builds it with mmdebstrap; the tests run it with podman (which
  # brings crun and conmon).
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v podman >/dev/null || need+=(podman)
fi

if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]}; run as root (or: sudo apt-get install --no-install-recommends ${need[*]})" >&2
  exit 1
fi
echo "installing Debian packages (${sets[*]}), without recommended packages: ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
