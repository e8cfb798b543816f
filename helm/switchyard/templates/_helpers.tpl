{{/* Names, labels and the pieces every pod spec shares. */}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.fullname" -}}
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

{{- define "switchyard.routerName" -}}
{{- printf "%s-router" (include "switchyard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.redisName" -}}
{{- printf "%s-redis" (include "switchyard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of a model-server pool's objects; call with (dict "root" $ "pool" $pool). */}}
{{- define "switchyard.poolName" -}}
{{- printf "%s-%s" (include "switchyard.fullname" .root) .pool.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- end -}}

{{- define "switchyard.routerSelectorLabels" -}}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/component: router
{{- end -}}

{{- define "switchyard.redisSelectorLabels" -}}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end -}}

{{/* Call with (dict "root" $ "pool" $pool). */}}
{{- define "switchyard.poolSelectorLabels" -}}
{{ include "switchyard.selectorLabels" .root }}
app.kubernetes.io/component: modelserver
switchyard.dev/pool: {{ .pool.name }}
{{- end -}}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. Call with (dict "root" $ "image" $image). */}}
{{- define "switchyard.image" -}}
{{- $ref := printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- if .image.digest -}}
{{- $ref = printf "%s@%s" $ref .image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* Service-mesh pod labels (Istio's injection switch is a label). */}}
{{- define "switchyard.meshPodLabels" -}}
{{- if .Values.mesh.istio.enabled }}
sidecar.istio.io/inject: "true"
{{- end }}
{{- end -}}

{{/* Service-mesh pod annotations. */}}
{{- define "switchyard.meshPodAnnotations" -}}
{{- if .Values.mesh.istio.enabled }}
# The router dials its pools at start: let the sidecar come up first.
proxy.istio.io/config: '{"holdApplicationUntilProxyStarts": true}'
{{- end }}
{{- if .Values.mesh.linkerd.enabled }}
linkerd.io/inject: enabled
{{- end }}
{{- end -}}

{{/* OpenTelemetry environment for a container; call with (dict "root" $ "service" NAME). */}}
{{- define "switchyard.otelEnv" -}}
{{- $otel := .root.Values.otel -}}
{{- if $otel.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: grpc
{{- if $otel.insecure }}
- name: OTEL_EXPORTER_OTLP_INSECURE
  value: "true"
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $otel.samplerArg | quote }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE_NAME)%s" (ternary (printf ",%s" $otel.resourceAttributes) "" (ne $otel.resourceAttributes "")) | quote }}
{{- if $otel.captureMessageContent }}
- name: OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT
  value: "true"
{{- end }}
{{- end }}
{{- end -}}

{{/* Where the chart mounts Secrets in its pods (the rendered configs name these files). */}}
{{- define "switchyard.tlsDir" -}}/var/run/switchyard/tls{{- end -}}
{{- define "switchyard.upstreamTLSDir" -}}/var/run/switchyard/upstream-tls{{- end -}}
{{- define "switchyard.keysDir" -}}/var/run/switchyard/api-keys{{- end -}}
{{- define "switchyard.redisDir" -}}/var/run/switchyard/redis{{- end -}}
{{- define "switchyard.redisTLSDir" -}}/var/run/switchyard/redis-tls{{- end -}}

{{/* The router config's `redis:` section (empty unless redis.enabled). */}}
{{- define "switchyard.redisConfig" -}}
{{- $redis := .Values.redis -}}
{{- if $redis.enabled -}}
{{- $url := $redis.url -}}
{{- if not $url -}}
{{- if not $redis.deploy.enabled -}}
{{- fail "redis.enabled needs redis.url (an existing Redis) or redis.deploy.enabled" -}}
{{- end -}}
{{- $url = printf "redis://%s.%s.svc.%s:%d/0" (include "switchyard.redisName" .) .Release.Namespace .Values.clusterDomain (int $redis.deploy.port) -}}
{{- end -}}
{{- $config := dict "url" $url "when_unreachable" $redis.whenUnreachable "timeout_seconds" $redis.timeoutSeconds -}}
{{- if $redis.passwordSecret -}}
{{- $_ := set $config "password_file" (printf "%s/password" (include "switchyard.redisDir" .)) -}}
{{- end -}}
{{- if $redis.tls.caSecret -}}
{{- $_ := set $config "tls" (dict "ca_file" (printf "%s/ca.crt" (include "switchyard.redisTLSDir" .))) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
{{- end -}}

{{/* A listener's `tls:` config from (dict "tls" $values.tls); empty without a Secret. */}}
{{- define "switchyard.listenerTLS" -}}
{{- if and .tls .tls.secretName -}}
{{- $dir := include "switchyard.tlsDir" . -}}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) -}}
{{- if .tls.mutual -}}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" $dir) -}}
{{- end -}}
{{- toYaml $tls -}}
{{- end -}}
{{- end -}}

{{/*
A gRPC probe's target: native gRPC against grpc.health.v1, or, when the
listener has TLS (which Kubernetes' gRPC probes cannot speak), a TCP probe on
the port. Call with (dict "port" PORT "service" NAME "tls" BOOL).
*/}}
{{- define "switchyard.probeTarget" -}}
{{- if .tls }}
tcpSocket:
  port: {{ .port }}
{{- else }}
grpc:
  port: {{ .port }}
  service: {{ .service | quote }}
{{- end }}
{{- end -}}
