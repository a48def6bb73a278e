# install-cni: put Kilo's CNI plugins and conflist on the host (the agent's init container).
# The plugins come from Debian's containernetworking-plugins in the image (/usr/lib/cni).
set -eu
plugins_dir=${KILO_CNI_PLUGINS_DIR:-/usr/lib/cni}
bin_dir=${KILO_HOST_CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${KILO_HOST_CNI_CONF_DIR:-/host/etc/cni/net.d}
for plugin in bridge host-local loopback portmap; do
  # Copy, then rename over the old binary: a plugin the runtime is running right now cannot be
  # overwritten in place ("text file busy"), and a half-copied plugin is never executed.
  cp "$plugins_dir/$plugin" "$bin_dir/.$plugin.kilo-new"
  mv -f "$bin_dir/.$plugin.kilo-new" "$bin_dir/$plugin"
done
# Only Kilo's own conflist is written, atomically (the runtime never sees half a file; a name
# starting with a dot and not ending in .conf/.conflist/.json is not read by the runtime).
# Kilo's init container deleted every file in this directory, which also removed configs other
# tools own (Multus, a chained plugin, a previous CNI's file kept for rollback).
printf '%s' "$CNI_NETWORK_CONFIG" > "$conf_dir/.$CNI_CONF_NAME.kilo-new"
mv -f "$conf_dir/.$CNI_CONF_NAME.kilo-new" "$conf_dir/$CNI_CONF_NAME"
# The runtime uses the first config by name, so name the files that would win over Kilo's.
first=$(ls -1 "$conf_dir" | grep -E '\.(conf|conflist|json)$' | LC_ALL=C sort | head -n 1)
if [ "$first" != "$CNI_CONF_NAME" ]; then
  echo "install-cni: warning: $first sorts before $CNI_CONF_NAME in the host's CNI config" \
    "directory, so the container runtime uses it instead of Kilo's; remove it (and every" \
    "other config sorting before $CNI_CONF_NAME) for Kilo to be the CNI" >&2
fi
echo "install-cni: installed bridge, host-local, loopback, portmap and $CNI_CONF_NAME"
