{{- define "dbqo.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dbqo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dbqo.labels" -}}
app.kubernetes.io/name: {{ include "dbqo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dbqo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dbqo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dbqo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dbqo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The --allowed-kinds value: Kind for the core group, group/Kind otherwise. */}}
{{- define "dbqo.allowedKinds" -}}
{{- $kinds := list -}}
{{- range .Values.allowedKinds -}}
{{- if .group -}}
{{- $kinds = append $kinds (printf "%s/%s" .group .kind) -}}
{{- else -}}
{{- $kinds = append $kinds .kind -}}
{{- end -}}
{{- end -}}
{{- join "," $kinds -}}
{{- end -}}
