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

{{/*
The image: [registry/]repository, then @digest when one is given (a digest pins the exact
image; the tag is then only for people to read), else :tag (the chart's appVersion by default).
global.imageRegistry, as a parent chart sets it, wins over image.registry.
*/}}
{{- define "sharedcare.image" -}}
{{- $i := .Values.image -}}
{{- $registry := default $i.registry (default dict .Values.global).imageRegistry -}}
{{- $repo := ternary (printf "%s/%s" $registry $i.repository) $i.repository (ne $registry "") -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $repo $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $i.tag) -}}
{{- end -}}
{{- end -}}

{{/*
What the ingress (or a Gateway's HTTPRoute) sends where, as JSON [[match, path, service], …]:
match is Exact or PathPrefix. The Ingress, the HTTPRoute and the NetworkPolicies (a service is
reachable from the ingress exactly when a route leads to it) all read this one list. Disabled
services get no route.
*/}}
{{- define "sharedcare.routes" -}}
{{- $all := list
  (list "PathPrefix" "/fhir/R4/Consent" "consent")
  (list "PathPrefix" "/fhir" "records")
  (list "PathPrefix" "/passport/v1" "passport")
  (list "PathPrefix" "/audit/v1" "audit")
  (list "Exact" "/" "portal")
  (list "PathPrefix" "/portal" "portal")
  (list "PathPrefix" "/passport" "portal")
  (list "PathPrefix" "/assets" "portal")
  (list "PathPrefix" "/" "identity") -}}
{{- $routes := list -}}
{{- range $all -}}
{{- if (index $.Values.services (index . 2)).enabled -}}
{{- $routes = append $routes . -}}
{{- end -}}
{{- end -}}
{{- toJson $routes -}}
{{- end -}}

{{/* "true" when a route leads to service .name: (dict "root" $ "name" "records"). */}}
{{- define "sharedcare.routed" -}}
{{- $name := .name -}}
{{- range fromJsonArray (include "sharedcare.routes" .root) -}}
{{- if eq (index . 2) $name -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A pod setting from the service's values, else the chart-wide one, else global's (a parent
chart's): (dict "root" $ "name" "records" "key" "nodeSelector").
*/}}
{{- define "sharedcare.podSetting" -}}
{{- $svc := default (default dict (index .root.Values .name)) (index .root.Values.services .name) -}}
{{- $global := default dict .root.Values.global -}}
{{- with (default (default (index $global .key) (index .root.Values .key)) (index $svc .key)) -}}
{{- toYaml . -}}
{{- end -}}
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

{{/*
The one map of who calls whom, which drives the configuration (each `<callee>_url`), the
NetworkPolicies (egress to each callee's gRPC port) and the client Secrets:
- calls: the services it calls over gRPC;
- client: it calls them with its own client_credentials client (`clients.<name>`);
- signsIn: that client also signs people in to the web (the portal).
*/}}
{{- define "sharedcare.dependencies" -}}
identity: {calls: []}
records: {calls: [consent], client: true}
consent: {calls: [identity]}
audit: {calls: [identity]}
passport: {calls: [consent, audit], client: true}
portal: {calls: [passport, consent, records, audit, identity], client: true, signsIn: true}
connectors: {calls: [records]}
{{- end -}}

{{/* One service's entry in the map above: (include "sharedcare.dependency" "records" | fromYaml). */}}
{{- define "sharedcare.dependency" -}}
{{- toYaml (default dict (index (include "sharedcare.dependencies" . | fromYaml) .)) -}}
{{- end -}}

{{/* The services each service calls over gRPC. */}}
{{- define "sharedcare.calls" -}}
{{- toJson (default (list) (include "sharedcare.dependency" . | fromYaml).calls) -}}
{{- end -}}

{{/*
What every pod of the chart shares: its service account, pull secrets, pod security context
and topology spread: (dict "root" $ "name" "records").
*/}}
{{- define "sharedcare.podCommon" -}}
serviceAccountName: {{ include "sharedcare.svcname" . }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- range $key := list "nodeSelector" "affinity" "tolerations" }}
{{- with include "sharedcare.podSetting" (dict "root" $.root "name" $.name "key" $key) }}
{{ $key }}:
  {{- . | nindent 2 }}
{{- end }}
{{- end }}
{{- with include "sharedcare.podSetting" (dict "root" .root "name" .name "key" "priorityClassName") }}
priorityClassName: {{ . }}
{{- end }}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ .root.Values.topologySpread.maxSkew }}
    topologyKey: {{ .root.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: {{ .root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "sharedcare.selector" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* The env entries of a service's own client: (dict "root" $ "name" "records"). */}}
{{- define "sharedcare.clientEnv" -}}
- name: SHAREDCARE_AUTH__CLIENT_ID
  value: {{ (index .root.Values.clients .name).id | quote }}
- name: SHAREDCARE_AUTH__CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "sharedcare.clientSecret" . }}
      key: {{ include "sharedcare.clientKey" . }}
{{- end -}}

{{/*
The env entry of one service's database URL: (dict "root" $ "name" "records"); with "hook"
true, the migration Job's (which runs before the chart's own Secret exists).
*/}}
{{- define "sharedcare.databaseEnv" -}}
{{- $own := index (default dict .root.Values.database.services) .name -}}
- name: SHAREDCARE_DATABASE__URL
  valueFrom:
    secretKeyRef:
      {{- if $own }}
      name: {{ $own.existingSecret }}
      key: {{ default "uri" $own.existingSecretKey }}
      {{- else if and .hook (not .root.Values.database.existingSecret) }}
      name: {{ include "sharedcare.fullname" .root }}-migrate-database
      key: database-url
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

{{/*
The number of a port a service's external Service carries: (dict "root" $ "name" "connectors"
"port" "mllp"); mllp is the service's own (services.<name>.mllp.port), and only the connectors
have one.
*/}}
{{- define "sharedcare.externalPort" -}}
{{- if eq .port "mllp" -}}
{{- $svc := index .root.Values.services .name -}}
{{- if not $svc.mllp -}}
{{- fail (printf "services.%s.external.ports: %s has no mllp port" .name .name) -}}
{{- end -}}
{{- $svc.mllp.port -}}
{{- else -}}
{{- index .root.Values.ports .port -}}
{{- end -}}
{{- end -}}
