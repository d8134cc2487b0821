{{/* Names, labels and the constants the code expects (services/common/vocabulary.py). */}}

{{- define "liqo-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "liqo-gateway.fullname" -}}
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

{{/* The labels the labeler selects the gateway pods (and the Service) by: vocabulary.GATEWAY_SELECTOR,
plus the release so that two releases never elect each other's pods. */}}
{{- define "liqo-gateway.selectorLabels" -}}
app.kubernetes.io/name: gateway
app.kubernetes.io/component: networking
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "liqo-gateway.selectorString" -}}
app.kubernetes.io/name=gateway,app.kubernetes.io/component=networking,app.kubernetes.io/instance={{ .Release.Name }}
{{- end }}

{{- define "liqo-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: liqo
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Labels of objects that are not the gateway pods or the gateway Service. */}}
{{- define "liqo-gateway.commonLabels" -}}
{{ include "liqo-gateway.labels" . }}
app.kubernetes.io/name: {{ include "liqo-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "liqo-gateway.serviceAccountName" -}}
{{- default (include "liqo-gateway.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "liqo-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* vocabulary.KEY_SECRET and vocabulary.LEASE_NAME: the RBAC names them. */}}
{{- define "liqo-gateway.keySecret" -}}wireguard-pubkey{{- end }}
{{- define "liqo-gateway.leaseName" -}}1d5hml1.gateway.net.liqo.io{{- end }}

{{/* The security context of the three controllers; argument: the uid. */}}
{{- define "liqo-gateway.controllerSecurityContext" -}}
runAsUser: {{ . }}
runAsGroup: {{ . }}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The Downward API variables of the controllers. */}}
{{- define "liqo-gateway.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}

{{/* httpGet probes on a health port of the node's loopback (the pod is hostNetwork); argument:
dict "port" N. */}}
{{- define "liqo-gateway.httpProbes" -}}
livenessProbe:
  httpGet:
    host: 127.0.0.1
    port: {{ .port }}
    path: /healthz
  initialDelaySeconds: 10
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    host: 127.0.0.1
    port: {{ .port }}
    path: /readyz
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/* The three CIDRs, required (see values.yaml `networking`). */}}
{{- define "liqo-gateway.cidr" -}}
{{- $v := index .root.Values.networking .key }}
{{- required (printf "networking.%s is required: %s (canonical IPv4 CIDR); the netagent refuses tunnels that overlap it" .key .what) $v }}
{{- end }}

{{/* The labeler's election flags: the preset `election.profile` names (the same numbers as
services/common/leaderelection.py PROFILES), each value overridable. The labeler validates them
again at start; the checks here make a bad combination fail the install instead of a crash loop. */}}
{{- define "liqo-gateway.electionArgs" -}}
{{- $e := .Values.election }}
{{- $presets := dict
  "default" (dict "leaseDuration" 7 "renewDeadline" 5.0 "retryPeriod" 2.0 "requestTimeout" 1.0 "outageGrace" 60.0)
  "fast" (dict "leaseDuration" 2 "renewDeadline" 1.5 "retryPeriod" 0.25 "requestTimeout" 0.4 "outageGrace" 60.0) }}
{{- $p := index $presets $e.profile }}
{{- $lease := ternary $p.leaseDuration $e.leaseDuration (kindIs "invalid" $e.leaseDuration) }}
{{- $renew := ternary $p.renewDeadline $e.renewDeadline (kindIs "invalid" $e.renewDeadline) }}
{{- $retry := ternary $p.retryPeriod $e.retryPeriod (kindIs "invalid" $e.retryPeriod) }}
{{- $timeout := ternary $p.requestTimeout $e.requestTimeout (kindIs "invalid" $e.requestTimeout) }}
{{- $grace := ternary $p.outageGrace $e.outageGrace (kindIs "invalid" $e.outageGrace) }}
{{- if not (and (lt (float64 $retry) (float64 $renew)) (lt (float64 $renew) (float64 $lease))) }}
{{- fail (printf "election: need retryPeriod (%v) < renewDeadline (%v) < leaseDuration (%v)" $retry $renew $lease) }}
{{- end }}
{{- /* Renewals that succeed just before the request timeout still extend the role in time
(services/common/leaderelection.py check_request_timeout); the fencing margin is 0.5 s. */}}
{{- $attempt := ternary (float64 $retry) (mulf 2 $timeout) (gt (float64 $retry) (mulf 2 $timeout)) }}
{{- if ge (addf $attempt $timeout) (subf $lease 0.5) }}
{{- fail (printf "election: need max(retryPeriod, 2 x requestTimeout) + requestTimeout < leaseDuration - 0.5 (got retryPeriod %v, requestTimeout %v, leaseDuration %v): a slow API server would let the active role lapse between renewals" $retry $timeout $lease) }}
{{- end }}
- --lease-duration={{ $lease }}
- --renew-deadline={{ $renew }}
- --retry-period={{ $retry }}
- --election-request-timeout={{ $timeout }}
- --outage-grace={{ $grace }}
{{- end }}
