{{/* The one image of every container. */}}
{{- define "kilo.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* (NAME): the labels of a Kilo workload NAME (kilo, kilo-userspace, ...). */}}
{{- define "kilo.labels" -}}
app.kubernetes.io/name: {{ . }}
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

{{/* The init container that writes a k3s kubeconfig (for the pod's own service account), as
list items under initContainers; nothing for the other kubeconfig sources. */}}
{{- define "kilo.generateKubeconfig" -}}
{{- if eq (include "kilo.kubeconfig" .) "k3s" }}
      - name: generate-kubeconfig
        image: {{ include "kilo.image" . }}
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        command:
        - /bin/sh
        - -c
        - |
{{ include "kilo.indent" (list 10 (.Files.Get "files/k3s-kubeconfig.sh" | trim)) }}
        securityContext:
          # uid 0 reads the k3s agent's root-only files; no capability is needed.
          runAsUser: 0
          allowPrivilegeEscalation: false
          capabilities:
            drop: [ALL]
        volumeMounts:
        - name: kubeconfig
          mountPath: /etc/kubernetes
        - name: k3s-agent
          mountPath: /var/lib/rancher/k3s/agent
          readOnly: true
{{- end }}
{{- end -}}

{{/* (list ROOT ACCOUNT): the volumes of the kubeconfig mounted at /etc/kubernetes, as list items
under volumes; nothing for the in-cluster config. */}}
{{- define "kilo.kubeconfigVolumes" -}}
{{- $root := index . 0 }}
{{- $account := index . 1 }}
{{- $kubeconfig := include "kilo.kubeconfig" $root }}
{{- if eq $kubeconfig "kube-proxy" }}
      # kubeadm's kube-proxy kubeconfig: the API server's address, with the pod's own
      # service-account token, so the {{ $account }} ClusterRole applies.
      - name: kubeconfig
        configMap:
          name: kube-proxy
          items:
          - key: kubeconfig.conf
            path: kubeconfig
{{- else if eq $kubeconfig "typhoon" }}
      # Typhoon's kubeconfig-in-cluster: the API server's address with the pod's own token.
      - name: kubeconfig
        configMap:
          name: kubeconfig-in-cluster
{{- else if eq $kubeconfig "k3s" }}
      - name: kubeconfig
        emptyDir: {}
      - name: k3s-agent
        hostPath:
          path: /var/lib/rancher/k3s/agent
          type: Directory
{{- end }}
{{- end -}}
