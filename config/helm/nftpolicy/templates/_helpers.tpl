{{/* Chart name, overridable. */}}
{{- define "nftpolicy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart>, or the release name when it already holds the chart name. */}}
{{- define "nftpolicy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the agent's DaemonSet, ClusterRole and (by default) ServiceAccount. */}}
{{- define "nftpolicy.agentName" -}}
{{- printf "%s-agent" (include "nftpolicy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nftpolicy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nftpolicy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "nftpolicy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "nftpolicy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "nftpolicy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nftpolicy.agentName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "nftpolicy.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Scheme of the metrics endpoint (metrics.secure). */}}
{{- define "nftpolicy.metricsScheme" -}}
{{- if .Values.metrics.secure }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* Where the metrics.certSecret is mounted (--metrics-cert-dir). */}}
{{- define "nftpolicy.metricsCertDir" -}}
/etc/nftpolicy/metrics-certs
{{- end -}}

{{/* Name of the ClusterRole that may read the agents' /metrics. */}}
{{- define "nftpolicy.metricsReaderName" -}}
{{- printf "%s-metrics-reader" (include "nftpolicy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
