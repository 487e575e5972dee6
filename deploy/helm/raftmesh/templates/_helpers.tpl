{{/* The base name of every object. */}}
{{- define "raftmesh.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "raftmesh.labels" -}}
app.kubernetes.io/name: raftmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "raftmesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The cluster's name and id, which every install must give. */}}
{{- define "raftmesh.clusterName" -}}
{{- required "cluster.name is required: this cluster's name (a DNS label)" .Values.cluster.name -}}
{{- end -}}
{{- define "raftmesh.clusterId" -}}
{{- if not .Values.cluster.id -}}
{{- fail "cluster.id is required: 1..255, unique among connected clusters" -}}
{{- end -}}
{{- $id := int .Values.cluster.id -}}
{{- if or (lt $id 1) (gt $id 255) -}}
{{- fail (printf "cluster.id %d is out of 1..255" $id) -}}
{{- end -}}
{{- $id -}}
{{- end -}}

{{- define "raftmesh.apiserverSecret" -}}
{{- .Values.tls.apiserverSecret | default (printf "%s-apiserver-tls" (include "raftmesh.fullname" .)) -}}
{{- end -}}
{{- define "raftmesh.adminSecret" -}}
{{- .Values.tls.adminSecret | default (printf "%s-admin-tls" (include "raftmesh.fullname" .)) -}}
{{- end -}}
{{- define "raftmesh.caSecret" -}}
{{- .Values.tls.caSecret | default (printf "%s-ca" (include "raftmesh.fullname" .)) -}}
{{- end -}}

{{/* KUBERNETES_SERVICE_HOST/PORT when the API is reached elsewhere (Talos' KubePrism). */}}
{{- define "raftmesh.kubernetesEnv" -}}
{{- if .host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .port | quote }}
{{- end }}
{{- end -}}
