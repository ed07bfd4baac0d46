{{/*
The name of every object: fullnameOverride, else the release name when it contains "pullgate",
else "<release>-pullgate". Truncated to 63 characters (a label value's limit).
*/}}
{{- define "pullgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "pullgate" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-pullgate" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap the agent and the admission policy share. */}}
{{- define "pullgate.gateConfigMap" -}}
{{- printf "%s-gate" (include "pullgate.fullname" .) -}}
{{- end -}}

{{/* The admission policy and its binding. */}}
{{- define "pullgate.policyName" -}}
{{- printf "%s-own-node" (include "pullgate.fullname" .) -}}
{{- end -}}

{{/* The per-namespace Role and RoleBinding. */}}
{{- define "pullgate.namespaceAccessName" -}}
{{- printf "%s-pull-credentials" (include "pullgate.fullname" .) -}}
{{- end -}}

{{/*
The labels that select the agent's pods. The DaemonSet's selector is immutable: never change
them, or an upgrade fails.
*/}}
{{- define "pullgate.selectorLabels" -}}
app.kubernetes.io/name: pullgate
{{- end -}}

{{/* Every object's labels: the base's, then helm's own. */}}
{{- define "pullgate.labels" -}}
{{ include "pullgate.selectorLabels" . }}
app.kubernetes.io/part-of: pullgate
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The agent's user name, as the API server authenticates its ServiceAccount token. */}}
{{- define "pullgate.username" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "pullgate.fullname" .) -}}
{{- end -}}

{{/* The image reference: repository@digest, else repository:tag (tag defaulting to appVersion). */}}
{{- define "pullgate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The gate namespaces, comma-separated: the release namespace first (gate.releaseNamespace), then gate.namespaces, each once. */}}
{{- define "pullgate.gateNamespaces" -}}
{{- $names := list -}}
{{- if .Values.gate.releaseNamespace -}}
{{- $names = append $names .Release.Namespace -}}
{{- end -}}
{{- range .Values.gate.namespaces -}}
{{- $names = append $names . -}}
{{- end -}}
{{- $names | uniq | join "," -}}
{{- end -}}

{{/* host:port for --metrics-addr; an IPv6 address in brackets. */}}
{{- define "pullgate.metricsAddr" -}}
{{- if contains ":" .Values.metrics.address -}}
{{- printf "[%s]:%d" .Values.metrics.address (int .Values.metrics.port) -}}
{{- else -}}
{{- printf "%s:%d" .Values.metrics.address (int .Values.metrics.port) -}}
{{- end -}}
{{- end -}}
