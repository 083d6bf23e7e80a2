{{/* Names, labels, images, security and the call graph, defined once for every template. */}}

{{- define "atalaya.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "atalaya.fullname" -}}
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

{{/* Name of one component's objects. Context: dict root, component. */}}
{{- define "atalaya.componentName" -}}
{{- printf "%s-%s" (include "atalaya.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select one component's pods. Context: dict root, component. */}}
{{- define "atalaya.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atalaya.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of one component's objects. Context: dict root, component. */}}
{{- define "atalaya.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "atalaya.selectorLabels" . }}
app.kubernetes.io/part-of: atalaya
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* metadata: name, namespace, labels. Context: dict root, component, name (optional). */}}
{{- define "atalaya.metadata" -}}
name: {{ default (include "atalaya.componentName" .) .name }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "atalaya.labels" . | nindent 2 }}
{{- end -}}

{{/* The headless Service of a service: gRPC clients resolve every pod and round_robin. */}}
{{- define "atalaya.headlessName" -}}
{{- printf "%s-headless" (include "atalaya.componentName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A gRPC target of a service. Context: dict root, component. */}}
{{- define "atalaya.target" -}}
{{- $svc := index .root.Values.services .component -}}
{{- printf "dns:///%s.%s.svc.cluster.local:%d" (include "atalaya.headlessName" .) .root.Release.Namespace (int $svc.port) -}}
{{- end -}}

{{- define "atalaya.otelCollectorName" -}}
{{- include "atalaya.componentName" (dict "root" . "component" "otel-collector") -}}
{{- end -}}

{{- define "atalaya.postgresqlName" -}}
{{- include "atalaya.componentName" (dict "root" . "component" "postgresql") -}}
{{- end -}}

{{- define "atalaya.otlpEndpoint" -}}
{{- if .Values.telemetry.otlpEndpoint -}}
{{- .Values.telemetry.otlpEndpoint -}}
{{- else if .Values.otelCollector.enabled -}}
{{- printf "http://%s.%s.svc.cluster.local:4317" (include "atalaya.otelCollectorName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* An image reference. Context: dict root, repository, tag (both may be empty). */}}
{{- define "atalaya.serviceImage" -}}
{{- $tag := .tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .repository $tag -}}
{{- end -}}

{{/* The image of a service: the GPU image when it runs on a GPU. Context: dict root, component. */}}
{{- define "atalaya.image" -}}
{{- $svc := index .root.Values.services .component -}}
{{- if $svc.gpu.enabled -}}
{{- include "atalaya.serviceImage" (dict "root" .root "repository" .root.Values.image.gpu.repository "tag" .root.Values.image.gpu.tag) -}}
{{- else -}}
{{- include "atalaya.serviceImage" (dict "root" .root "repository" $svc.image.repository "tag" $svc.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Pod-level spec shared by every pod of the chart: service account, security, pull secrets. */}}
{{- define "atalaya.podCommon" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "atalaya.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end -}}

{{/* Scheduling: GPU nodes for GPU pods, plus the component's own. Context: dict root, spec. */}}
{{- define "atalaya.scheduling" -}}
{{- $gpu := and (hasKey .spec "gpu") .spec.gpu.enabled -}}
{{- $nodeSelector := deepCopy (default dict .spec.nodeSelector) -}}
{{- $tolerations := default list .spec.tolerations -}}
{{- if $gpu -}}
{{- $nodeSelector = merge $nodeSelector .root.Values.gpu.nodeSelector -}}
{{- if .root.Values.gpu.type -}}
{{- $_ := set $nodeSelector "nvidia.com/gpu.product" .root.Values.gpu.type -}}
{{- end -}}
{{- $tolerations = concat $tolerations .root.Values.gpu.tolerations -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The call graph as a list of edges {from, to, port}, from .Values.callGraph: the one place
the NetworkPolicies and the services' targets come from. `to` is a service or "postgresql".
*/}}
{{- define "atalaya.edges" -}}
{{- $edges := list -}}
{{- range $from, $callees := .Values.callGraph -}}
{{- if not (hasKey $.Values.services $from) -}}
{{- fail (printf "callGraph: %q is not a service" $from) -}}
{{- end -}}
{{- range $to := $callees -}}
{{- if eq $to "postgresql" -}}
{{- $port := ternary $.Values.postgresql.port $.Values.postgresql.external.port $.Values.postgresql.enabled -}}
{{- $edges = append $edges (dict "from" $from "to" $to "port" (int $port)) -}}
{{- else if hasKey $.Values.services $to -}}
{{- $edges = append $edges (dict "from" $from "to" $to "port" (int (index $.Values.services $to).port)) -}}
{{- else -}}
{{- fail (printf "callGraph: %s calls %q, which is neither a service nor postgresql" $from $to) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "edges" $edges) -}}
{{- end -}}

{{/* The gRPC health check of one probe. Context: dict port, probe (period, thresholds). */}}
{{- define "atalaya.grpcProbe" -}}
grpc:
  port: {{ .port }}
{{- range $k, $v := .probe }}
{{ $k }}: {{ $v }}
{{- end }}
{{- end -}}

{{/* Writable scratch volumes of a read-only root filesystem. Context: sizeLimit. */}}
{{- define "atalaya.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ . }}
- name: cache
  emptyDir:
    sizeLimit: {{ . }}
{{- end -}}

{{- define "atalaya.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /cache
{{- end -}}

{{/* A memory quantity in Mi or Gi as a whole number of MiB (for GOMEMLIMIT). */}}
{{- define "atalaya.mebibytes" -}}
{{- $q := toString . -}}
{{- if hasSuffix "Gi" $q -}}
{{- mul (trimSuffix "Gi" $q | int) 1024 -}}
{{- else if hasSuffix "Mi" $q -}}
{{- trimSuffix "Mi" $q | int -}}
{{- else -}}
{{- fail (printf "memory limit %q: use Mi or Gi" $q) -}}
{{- end -}}
{{- end -}}
