# generate-kubeconfig: a kubeconfig for kg on k3s (the agent's init container; nkml's too). It
# names the API server the k3s agent itself uses (its client load balancer, reachable on the
# host network before any pod network exists) and authenticates as the pod's service account.
# Unlike Kilo's script it embeds the CA (Kilo's kubeconfig pointed at a file the agent
# container does not mount) and refers to the token file, so the kubelet's token rotation
# reaches the agent instead of a copied token expiring.
set -eu
agent_dir=${KILO_K3S_AGENT_DIR:-/var/lib/rancher/k3s/agent}
out=${KILO_KUBECONFIG_OUT:-/etc/kubernetes/kubeconfig}
token_file=${KILO_TOKEN_FILE:-/var/run/secrets/kubernetes.io/serviceaccount/token}
server=$(sed -n 's/^[[:space:]]*server:[[:space:]]*//p' "$agent_dir/kubelet.kubeconfig" |
  head -n 1 | tr -d "\"' ")
if [ -z "$server" ]; then
  echo "generate-kubeconfig: no server: line in $agent_dir/kubelet.kubeconfig" >&2
  exit 1
fi
ca=$(base64 -w 0 < "$agent_dir/server-ca.crt")
cat > "$out.new" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: k3s
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: kilo
  user:
    tokenFile: $token_file
contexts:
- name: kilo
  context:
    cluster: k3s
    user: kilo
current-context: kilo
EOF
mv -f "$out.new" "$out"
echo "generate-kubeconfig: $out names $server"
