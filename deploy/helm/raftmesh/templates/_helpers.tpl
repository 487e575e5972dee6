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

{{/* A Kubernetes quantity of bytes ("2Gi", "512Mi", "1G", "1048576") as an integer. */}}
{{- define "raftmesh.bytes" -}}
{{- $q := toString .q -}}
{{- $digits := regexFind "^[0-9]+" $q -}}
{{- $unit := trimPrefix $digits $q -}}
{{- $mult := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $digits) (not (hasKey $mult $unit)) -}}
{{- fail (printf "%s %q: a whole number of bytes with an optional unit (Ki, Mi, Gi, Ti, k, M, G, T)" .what $q) -}}
{{- end -}}
{{- mul (int64 $digits) (get $mult $unit) -}}
{{- end -}}

{{/*
The store's quota: apiserver.quotaBackendBytes, or half the memory limit. The store keeps every
version in memory until compaction, so a quota at or above the limit lets the members be
OOM-killed (all together: they apply the same log) before the quota refuses a write.
*/}}
{{- define "raftmesh.quota" -}}
{{- $limit := dig "limits" "memory" "" .Values.apiserver.resources -}}
{{- if not $limit -}}
{{- fail "apiserver.resources.limits.memory is required: the store lives in memory and its quota is derived from the limit" -}}
{{- end -}}
{{- $limitBytes := include "raftmesh.bytes" (dict "q" $limit "what" "apiserver.resources.limits.memory") | int64 -}}
{{- $quota := div $limitBytes 2 -}}
{{- with .Values.apiserver.quotaBackendBytes -}}
{{- $quota = include "raftmesh.bytes" (dict "q" . "what" "apiserver.quotaBackendBytes") | int64 -}}
{{- if ge $quota $limitBytes -}}
{{- fail (printf "apiserver.quotaBackendBytes %v is not below the memory limit %s: the store lives in memory, so the members would be OOM-killed before the quota refused a write (leave it empty for half the limit)" . $limit) -}}
{{- end -}}
{{- end -}}
{{- $quota -}}
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

{{/* The agents' namespace, and whether it is not the release's. */}}
{{- define "raftmesh.agentNamespace" -}}
{{- .Values.agent.namespace.name | default (printf "%s-agent" (include "raftmesh.fullname" .)) -}}
{{- end -}}
{{- define "raftmesh.agentApart" -}}
{{- if ne (include "raftmesh.agentNamespace" .) .Release.Namespace }}true{{ end -}}
{{- end -}}

{{/* The pod-level security context of everything but the agent: the `restricted` level. */}}
{{- define "raftmesh.restrictedPod" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "raftmesh.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "raftmesh.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
- name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}
