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

{{/*
Transport security and authentication: names, files and settings, defined once.

Each service's certificate is a Secret (tls.crt, tls.key, ca.crt) mounted read-only at
tls.mountPath; the services reload the files when cert-manager rotates them, so nothing
here checksums a certificate into a pod annotation.
*/}}

{{/* Secret of a service's certificate. Context: dict root, component. */}}
{{- define "atalaya.tlsSecretName" -}}
{{- $given := index .root.Values.tls.secretNames .component | default "" -}}
{{- $given | default (printf "%s-tls" (include "atalaya.componentName" .)) -}}
{{- end -}}

{{/* Labels of a certificate Secret that cert-manager writes (and manages, not Helm).
Context: dict root, component. */}}
{{- define "atalaya.secretLabels" -}}
{{ include "atalaya.selectorLabels" . }}
app.kubernetes.io/part-of: atalaya
{{- end -}}

{{/* The name a client checks a service's certificate for: the FQDN of its headless Service
(the host of its dns:/// target). Context: dict root, component. */}}
{{- define "atalaya.serverName" -}}
{{- printf "%s.%s.svc.cluster.local" (include "atalaya.headlessName" .) .root.Release.Namespace -}}
{{- end -}}

{{/* DNS SANs of a service's certificate: its headless Service and, for the gateway, its
ClusterIP Service, each short and qualified. JSON list. Context: dict root, component. */}}
{{- define "atalaya.dnsNames" -}}
{{- $ns := .root.Release.Namespace -}}
{{- $services := list (include "atalaya.headlessName" .) -}}
{{- if eq .component "gateway" -}}
{{- $services = append $services (include "atalaya.componentName" .) -}}
{{- end -}}
{{- $names := list -}}
{{- range $s := $services -}}
{{- $names = concat $names (list $s (printf "%s.%s" $s $ns) (printf "%s.%s.svc" $s $ns) (printf "%s.%s.svc.cluster.local" $s $ns)) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* SPIFFE ID of a service (URI SAN): its namespace and service account. Context: dict root,
component. */}}
{{- define "atalaya.spiffeId" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .root.Values.tls.trustDomain .root.Release.Namespace (include "atalaya.componentName" .) -}}
{{- end -}}

{{/* Path of the CA bundle every server and client trusts. Context: root. */}}
{{- define "atalaya.tlsCaFile" -}}
{{- if .Values.tls.caBundle.configMap -}}
{{- printf "%s-ca/%s" .Values.tls.mountPath .Values.tls.caBundle.key -}}
{{- else -}}
{{- printf "%s/ca.crt" .Values.tls.mountPath -}}
{{- end -}}
{{- end -}}

{{/*
The security settings of one service, as a JSON map of environment variables: the one place
they are written.
  server   ATALAYA_<SVC>_TLS__MODE (tls, or mtls for the backends), __CERT_FILE, __KEY_FILE,
           __CA_FILE, ATALAYA_<SVC>_PEERS__TRUST_DOMAIN (the SPIFFE IDs' trust domain) and
           ATALAYA_<SVC>_HEALTH_PORT (plaintext grpc.health.v1 for the kubelet's probes)
  clients  per callee of callGraph: ATALAYA_<SVC>_<CALLEE>__TLS__CA_FILE, __SERVER_NAME,
           __CERT_FILE, __KEY_FILE
  gateway  ATALAYA_GATEWAY_AUTH__MODE, __ISSUER, __AUDIENCE, __JWKS_URL, __JWKS_FILE,
           __TENANT_CLAIM, __USER_CLAIM, __SCOPE_CLAIMS (a JSON list), __LEEWAY_S, __API_KEYS_FILE
Context: dict root, component.
*/}}
{{- define "atalaya.securityEnv" -}}
{{- $v := .root.Values -}}
{{- $prefix := printf "ATALAYA_%s_" (upper .component) -}}
{{- $env := dict -}}
{{- if $v.tls.enabled -}}
{{- $crt := printf "%s/tls.crt" $v.tls.mountPath -}}
{{- $key := printf "%s/tls.key" $v.tls.mountPath -}}
{{- $ca := include "atalaya.tlsCaFile" .root -}}
{{- $_ := set $env (printf "%sHEALTH_PORT" $prefix) (toString $v.tls.healthPort) -}}
{{- $_ := set $env (printf "%sTLS__CERT_FILE" $prefix) $crt -}}
{{- $_ := set $env (printf "%sTLS__KEY_FILE" $prefix) $key -}}
{{- /* mTLS between services; the gateway's own clients use tokens, not certificates. */ -}}
{{- $mutual := and $v.tls.mutual (ne .component "gateway") -}}
{{- $_ := set $env (printf "%sTLS__MODE" $prefix) (ternary "mtls" "tls" $mutual) -}}
{{- $_ := set $env (printf "%sPEERS__TRUST_DOMAIN" $prefix) $v.tls.trustDomain -}}
{{- if $v.tls.mutual -}}
{{- $_ := set $env (printf "%sTLS__CA_FILE" $prefix) $ca -}}
{{- end -}}
{{- range $edge := (include "atalaya.edges" .root | fromJson).edges -}}
{{- if and (eq $edge.from $.component) (hasKey $v.services $edge.to) -}}
{{- $channel := printf "%s%s__TLS__" $prefix (upper $edge.to) -}}
{{- $_ := set $env (printf "%sCA_FILE" $channel) $ca -}}
{{- $_ := set $env (printf "%sSERVER_NAME" $channel) (include "atalaya.serverName" (dict "root" $.root "component" $edge.to)) -}}
{{- if $v.tls.mutual -}}
{{- $_ := set $env (printf "%sCERT_FILE" $channel) $crt -}}
{{- $_ := set $env (printf "%sKEY_FILE" $channel) $key -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* auth off (the default): nothing, the gateway's own default. */ -}}
{{- if and (eq .component "gateway") (eq $v.auth.mode "required") -}}
{{- $auth := $v.auth -}}
{{- $p := printf "%sAUTH__" $prefix -}}
{{- $_ := set $env (printf "%sMODE" $p) $auth.mode -}}
{{- with $auth.oidc -}}
{{- if .issuer -}}
{{- $_ := set $env (printf "%sISSUER" $p) .issuer -}}
{{- $_ := set $env (printf "%sAUDIENCE" $p) .audience -}}
{{- $_ := set $env (printf "%sTENANT_CLAIM" $p) .tenantClaim -}}
{{- $_ := set $env (printf "%sUSER_CLAIM" $p) .userClaim -}}
{{- $_ := set $env (printf "%sSCOPE_CLAIMS" $p) (list .scopesClaim | toJson) -}}
{{- $_ := set $env (printf "%sLEEWAY_S" $p) (toString .leewaySeconds) -}}
{{- if .jwksUrl -}}
{{- $_ := set $env (printf "%sJWKS_URL" $p) .jwksUrl -}}
{{- end -}}
{{- if .jwksFile.existingConfigMap -}}
{{- $_ := set $env (printf "%sJWKS_FILE" $p) (printf "%s/jwks/%s" $auth.mountPath .jwksFile.key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $auth.apiKeys.existingSecret -}}
{{- $_ := set $env (printf "%sAPI_KEYS_FILE" $p) (printf "%s/api-keys/%s" $auth.mountPath $auth.apiKeys.key) -}}
{{- end -}}
{{- end -}}
{{- toJson $env -}}
{{- end -}}

{{/* Volumes of a pod's certificate (and the CA bundle). Context: dict root, component. */}}
{{- define "atalaya.tlsVolumes" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "atalaya.tlsSecretName" . }}
    defaultMode: 288 # 0440: the owner and the pod's fsGroup read
{{- with .root.Values.tls.caBundle.configMap }}
- name: tls-ca
  configMap:
    name: {{ . }}
    defaultMode: 292 # 0444
{{- end }}
{{- end }}
{{- end -}}

{{- define "atalaya.tlsMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ .Values.tls.mountPath }}
  readOnly: true
{{- if .Values.tls.caBundle.configMap }}
- name: tls-ca
  mountPath: {{ printf "%s-ca" .Values.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes of the gateway's JWKS file and API keys file (auth required). Context: root. */}}
{{- define "atalaya.authVolumes" -}}
{{- $auth := .Values.auth -}}
{{- if eq $auth.mode "required" }}
{{- if and $auth.oidc.issuer $auth.oidc.jwksFile.existingConfigMap }}
- name: jwks
  configMap:
    name: {{ $auth.oidc.jwksFile.existingConfigMap }}
    defaultMode: 292 # 0444
{{- end }}
{{- with $auth.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ . }}
    defaultMode: 288 # 0440
{{- end }}
{{- end }}
{{- end -}}

{{- define "atalaya.authMounts" -}}
{{- $auth := .Values.auth -}}
{{- if eq $auth.mode "required" }}
{{- if and $auth.oidc.issuer $auth.oidc.jwksFile.existingConfigMap }}
- name: jwks
  mountPath: {{ printf "%s/jwks" $auth.mountPath }}
  readOnly: true
{{- end }}
{{- if $auth.apiKeys.existingSecret }}
- name: api-keys
  mountPath: {{ printf "%s/api-keys" $auth.mountPath }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Settings that only make sense together; a wrong combination stops the render with the
reason. Context: root. */}}
{{- define "atalaya.checkSecurity" -}}
{{- $auth := .Values.auth -}}
{{- if eq $auth.mode "required" -}}
{{- if not (or $auth.oidc.issuer $auth.apiKeys.existingSecret) -}}
{{- fail "auth.mode required: give auth.oidc.issuer (JWT) or auth.apiKeys.existingSecret (API keys), or both" -}}
{{- end -}}
{{- if and $auth.oidc.issuer (not $auth.oidc.audience) -}}
{{- fail "auth.oidc.audience: the audience the tokens of auth.oidc.issuer must name" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled $auth.oidc.issuer (not $auth.oidc.jwksFile.existingConfigMap) (not $auth.oidc.egress) -}}
{{- fail "auth.oidc.egress: the gateway fetches the JWKS from the issuer; give the NetworkPolicy egress rules to it (or a JWKS file in auth.oidc.jwksFile)" -}}
{{- end -}}
{{- end -}}
{{- if .Values.ingress.enabled -}}
{{- if not .Values.ingress.hosts -}}
{{- fail "ingress.hosts: the host names of the gateway" -}}
{{- end -}}
{{- if not .Values.ingress.tlsSecretName -}}
{{- fail "ingress.tlsSecretName: the Secret with the certificate of ingress.hosts (the Ingress serves TLS only)" -}}
{{- end -}}
{{- end -}}
{{- if .Values.grpcRoute.enabled -}}
{{- if not .Values.grpcRoute.parentRefs -}}
{{- fail "grpcRoute.parentRefs: the Gateway (and listener) the route attaches to" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not (or .Values.grpcRoute.backendCAConfigMap .Values.tls.caBundle.configMap)) -}}
{{- fail "grpcRoute.backendCAConfigMap: with tls.enabled the Gateway must check the gateway's certificate; give a ConfigMap with the CA in ca.crt (e.g. a trust-manager Bundle)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
