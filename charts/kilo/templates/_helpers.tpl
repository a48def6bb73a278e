{{/* The one image of every container. */}}
{{- define "kilo.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "kilo.labels" -}}
app.kubernetes.io/name: kilo
app.kubernetes.io/part-of: kilo
{{- end -}}

{{/* Where the agent's kubeconfig comes from: in-cluster, kube-proxy, typhoon or k3s. */}}
{{- define "kilo.kubeconfig" -}}
{{- if eq .Values.agent.kubeconfig "in-cluster" -}}
in-cluster
{{- else if eq .Values.flavour "k3s" -}}
k3s
{{- else if eq .Values.flavour "typhoon" -}}
typhoon
{{- else if or (eq .Values.flavour "bootkube") (eq .Values.mode "cilium") -}}
in-cluster
{{- else -}}
kube-proxy
{{- end -}}
{{- end -}}

{{- define "kilo.cniConfDir" -}}
{{- if .Values.cni.hostConfDir -}}
{{ .Values.cni.hostConfDir }}
{{- else if or (eq .Values.flavour "bootkube") (eq .Values.flavour "typhoon") -}}
/etc/kubernetes/cni/net.d
{{- else -}}
/etc/cni/net.d
{{- end -}}
{{- end -}}

{{/* (list N TEXT): TEXT with N spaces before every non-empty line, for block scalars. */}}
{{- define "kilo.indent" -}}
{{- regexReplaceAll "(?m)^(.)" (index . 1) (printf "%s${1}" (repeat (index . 0) " ")) -}}
{{- end -}}
