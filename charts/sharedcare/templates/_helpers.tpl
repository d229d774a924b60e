{{/* Names, labels and the settings every service shares. */}}

{{- define "sharedcare.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of one service's objects: (dict "root" $ "name" "records"). */}}
{{- define "sharedcare.svcname" -}}
{{- printf "%s-%s" (include "sharedcare.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sharedcare.labels" -}}
app.kubernetes.io/name: sharedcare
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "name" "records"). */}}
{{- define "sharedcare.selector" -}}
app.kubernetes.io/name: sharedcare
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "sharedcare.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding the database URL, and its key. */}}
{{- define "sharedcare.databaseSecret" -}}
{{- default (printf "%s-database" (include "sharedcare.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}
{{- define "sharedcare.databaseKey" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecretKey }}{{- else -}}database-url{{- end -}}
{{- end -}}

{{/* A client's Secret and key: (dict "root" $ "name" "records"). */}}
{{- define "sharedcare.clientSecret" -}}
{{- $c := index .root.Values.clients .name -}}
{{- default (printf "%s-%s-client" (include "sharedcare.fullname" .root) .name) $c.existingSecret -}}
{{- end -}}
{{- define "sharedcare.clientKey" -}}
{{- $c := index .root.Values.clients .name -}}
{{- if $c.existingSecret -}}{{ $c.existingSecretKey }}{{- else -}}client-secret{{- end -}}
{{- end -}}

{{/* The services each service calls over gRPC. */}}
{{- define "sharedcare.calls" -}}
{{- $calls := dict "records" (list "consent") "consent" (list "identity") "audit" (list "identity") "passport" (list "consent" "audit") "portal" (list "passport" "consent" "records" "audit" "identity") -}}
{{- toJson (default (list) (index $calls .)) -}}
{{- end -}}

{{/* The env entry of one service's database URL: (dict "root" $ "name" "records"). */}}
{{- define "sharedcare.databaseEnv" -}}
{{- $own := index (default dict .root.Values.database.services) .name -}}
- name: SHAREDCARE_DATABASE__URL
  valueFrom:
    secretKeyRef:
      {{- if $own }}
      name: {{ $own.existingSecret }}
      key: {{ default "uri" $own.existingSecretKey }}
      {{- else }}
      name: {{ include "sharedcare.databaseSecret" .root }}
      key: {{ include "sharedcare.databaseKey" .root }}
      {{- end }}
{{- end -}}

{{/* Whether any enabled service uses the shared database URL. */}}
{{- define "sharedcare.sharedDatabase" -}}
{{- $own := default dict .Values.database.services -}}
{{- range $name, $svc := .Values.services -}}
{{- if and $svc.enabled (not (hasKey $own $name)) -}}yes{{- end -}}
{{- end -}}
{{- end -}}
