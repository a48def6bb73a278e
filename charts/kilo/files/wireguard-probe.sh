# wireguard-probe: let the kernel load its wireguard module, if it has one, before nkml reads
# /proc/modules (nkml's init container). Creating a WireGuard link loads the module on demand, as
# kg's own link would; without this, a node whose module is not loaded yet (most distributions
# load it only on demand) would be labelled "false" and run userspace WireGuard for good.
# A WireGuard built into the kernel is not in /proc/modules: nkml labels such a node "false".
set -u
probe=${KILO_PROBE_INTERFACE:-kilo-wg-probe}
ip link delete "$probe" 2>/dev/null
if ip link add "$probe" type wireguard 2>/dev/null; then
  ip link delete "$probe"
  echo "wireguard-probe: the kernel created a WireGuard link, so its module is loaded"
else
  echo "wireguard-probe: the kernel cannot create WireGuard links: userspace WireGuard here"
fi
