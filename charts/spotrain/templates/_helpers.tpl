{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "spotrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "spotrain.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names of cluster-scoped objects carry the release namespace, so that the chart can be installed in
several namespaces (e.g. one per watchNamespace) without two releases claiming one ClusterRole. */}}
{{- define "spotrain.clusterScopedName" -}}
{{- printf "%s-%s" (include "spotrain.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "spotrain.agentName" -}}
{{- printf "%s-agent" (include "spotrain.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "spotrain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "spotrain.labels" -}}
helm.sh/chart: {{ include "spotrain.chart" . }}
app.kubernetes.io/name: {{ include "spotrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spotrain
{{- end }}

{{- define "spotrain.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spotrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "spotrain.operator.labels" -}}
{{ include "spotrain.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "spotrain.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spotrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "spotrain.agent.labels" -}}
{{ include "spotrain.labels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "spotrain.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "spotrain.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "spotrain.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "spotrain.agentName" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "spotrain.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "spotrain.agent.image" -}}
{{- if .Values.agent.image.repository }}
{{- printf "%s:%s" .Values.agent.image.repository (default .Chart.AppVersion .Values.agent.image.tag) }}
{{- else }}
{{- include "spotrain.image" . }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security Standard, for both workloads. */}}
{{- define "spotrain.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "spotrain.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}
