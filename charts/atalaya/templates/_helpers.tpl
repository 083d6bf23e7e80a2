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

{{/* The fully qualified name of a Service of the release: <name>.<namespace>.svc.<clusterDomain>.
Context: dict root, name. */}}
{{- define "atalaya.serviceFqdn" -}}
{{- printf "%s.%s.svc.%s" .name .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/* A gRPC target of a service. Context: dict root, component. */}}
{{- define "atalaya.target" -}}
{{- $svc := index .root.Values.services .component -}}
{{- $host := include "atalaya.serviceFqdn" (dict "root" .root "name" (include "atalaya.headlessName" .)) -}}
{{- printf "dns:///%s:%d" $host (int $svc.port) -}}
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
{{- printf "http://%s:4317" (include "atalaya.serviceFqdn" (dict "root" . "name" (include "atalaya.otelCollectorName" .))) -}}
{{- end -}}
{{- end -}}

{{/* An image reference: `<repository>@<digest>` when a digest is given (in `digest`, or as a
tag that is one: `sha256:...`), else `<repository>:<tag>`. A tag of the form
`<tag>@sha256:...` passes through as `<repository>:<tag>@sha256:...`.
Context: dict repository (with its registry), tag, digest (may be empty). */}}
{{- define "atalaya.imageRef" -}}
{{- $digest := .digest | default "" -}}
{{- if and (not $digest) (hasPrefix "sha256:" .tag) -}}
{{- $digest = .tag -}}
{{- end -}}
{{- if $digest -}}
{{- printf "%s@%s" .repository $digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* An image of the project. Context: dict root, repository, tag, digest (all may be empty
but the repository). */}}
{{- define "atalaya.serviceImage" -}}
{{- $tag := .tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $repository := printf "%s/%s" .root.Values.image.registry .repository -}}
{{- include "atalaya.imageRef" (dict "repository" $repository "tag" $tag "digest" .digest) -}}
{{- end -}}

{{/* The GPU image (vLLM + the project). Context: root. */}}
{{- define "atalaya.gpuImage" -}}
{{- $gpu := .Values.image.gpu -}}
{{- include "atalaya.serviceImage" (dict "root" . "repository" $gpu.repository "tag" $gpu.tag "digest" $gpu.digest) -}}
{{- end -}}

{{/* The image of a service: the GPU image when it runs on a GPU. Context: dict root, component. */}}
{{- define "atalaya.image" -}}
{{- $svc := index .root.Values.services .component -}}
{{- if $svc.gpu.enabled -}}
{{- include "atalaya.gpuImage" .root -}}
{{- else -}}
{{- include "atalaya.serviceImage" (dict "root" .root "repository" $svc.image.repository "tag" $svc.image.tag "digest" $svc.image.digest) -}}
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

{{/* Scheduling: GPU nodes for GPU pods, plus the component's own node selector, tolerations,
affinity, topology spread (a constraint without a labelSelector gets the component's pod
labels) and priority class. Context: dict root, spec, component. */}}
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
{{- $spread := list -}}
{{- range $constraint := default list .spec.topologySpreadConstraints -}}
{{- $c := deepCopy $constraint -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "atalaya.selectorLabels" (dict "root" $.root "component" $.component) | fromYaml)) -}}
{{- end -}}
{{- $spread = append $spread $c -}}
{{- end -}}
{{- with $spread }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.priorityClassName }}
priorityClassName: {{ . }}
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

{{/* The gRPC health check of one probe. Context: dict port, service (the grpc.health.v1
service name; empty: the server's overall health), probe (period, thresholds). */}}
{{- define "atalaya.grpcProbe" -}}
grpc:
  port: {{ .port }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
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
{{- include "atalaya.serviceFqdn" (dict "root" .root "name" (include "atalaya.headlessName" .)) -}}
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
{{- $names = concat $names (list $s (printf "%s.%s" $s $ns) (printf "%s.%s.svc" $s $ns) (include "atalaya.serviceFqdn" (dict "root" $.root "name" $s))) -}}
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

{{/*
The settings the chart derives for a service, as a JSON map of KEY -> value
(ATALAYA_<SVC>_<KEY>), on top of `settings` and `commonSettings`:
  GRACE_PERIOD_S   how long in-flight RPCs may drain after SIGTERM: the pod's
                   terminationGracePeriodSeconds minus the preStop sleep (which runs first) and
                   drainMarginSeconds (for releasing the engine and exiting)
  <...>VLLM__TENSOR_PARALLEL_SIZE   for each vLLM model of a GPU service (a <...>VLLM__MODEL
                   setting): gpu.count, so the engine spreads over every GPU the pod gets
Both are refused when given by hand, so they cannot disagree with the pod.
Context: dict root, component.
*/}}
{{- define "atalaya.derivedSettings" -}}
{{- $svc := index .root.Values.services .component -}}
{{- $given := merge (deepCopy $svc.settings) .root.Values.commonSettings -}}
{{- $out := dict -}}
{{- if hasKey $given "GRACE_PERIOD_S" -}}
{{- fail (printf "services.%s: GRACE_PERIOD_S is derived from terminationGracePeriodSeconds, preStopSleepSeconds and drainMarginSeconds; set those instead" .component) -}}
{{- end -}}
{{- $drain := sub (int $svc.terminationGracePeriodSeconds) (add (int $svc.preStopSleepSeconds) (int $svc.drainMarginSeconds)) -}}
{{- if lt $drain 1 -}}
{{- fail (printf "services.%s: terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) + drainMarginSeconds (%d), or nothing is left for draining" .component (int $svc.terminationGracePeriodSeconds) (int $svc.preStopSleepSeconds) (int $svc.drainMarginSeconds)) -}}
{{- end -}}
{{- $_ := set $out "GRACE_PERIOD_S" (toString $drain) -}}
{{- if $svc.gpu.enabled -}}
{{- range $key, $value := $given -}}
{{- if hasSuffix "VLLM__MODEL" $key -}}
{{- $tp := printf "%sTENSOR_PARALLEL_SIZE" (trimSuffix "MODEL" $key) -}}
{{- if hasKey $given $tp -}}
{{- fail (printf "services.%s: %s is derived from gpu.count; set gpu.count instead" $.component $tp) -}}
{{- end -}}
{{- $_ := set $out $tp (toString (int $svc.gpu.count)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The ConfigMap of environment variables of one service, from values, the call graph and
the derived settings. Context: dict root, component. */}}
{{- define "atalaya.serviceConfigMap" -}}
{{- $root := .root -}}
{{- $name := .component -}}
{{- $svc := index $root.Values.services $name -}}
{{- $prefix := printf "ATALAYA_%s_" (upper $name) -}}
{{- $otlp := include "atalaya.otlpEndpoint" $root -}}
{{- $settings := merge (include "atalaya.derivedSettings" . | fromJson) (deepCopy $svc.settings) $root.Values.commonSettings -}}
apiVersion: v1
kind: ConfigMap
metadata:
  {{- include "atalaya.metadata" . | nindent 2 }}
data:
  {{- range $key, $value := $settings }}
  {{ printf "%s%s" $prefix $key }}: {{ $value | toString | quote }}
  {{- end }}
  {{ $prefix }}HOST: "0.0.0.0"
  {{ $prefix }}PORT: {{ $svc.port | quote }}
  {{- range $edge := (include "atalaya.edges" $root | fromJson).edges }}
  {{- if and (eq $edge.from $name) (ne $edge.to "postgresql") }}
  {{ printf "%s%s__TARGET" $prefix (upper $edge.to) }}: {{ include "atalaya.target" (dict "root" $root "component" $edge.to) | quote }}
  {{- end }}
  {{- end }}
  {{- range $key, $value := include "atalaya.securityEnv" . | fromJson }}
  {{ $key }}: {{ $value | quote }}
  {{- end }}
  {{- if and (eq $name "memory") $root.Values.postgresql.enabled }}
  {{- /* libpq keyword DSN without the password: PGPASSWORD comes from the Secret. */}}
  {{- $host := include "atalaya.serviceFqdn" (dict "root" $root "name" (include "atalaya.postgresqlName" $root)) }}
  ATALAYA_MEMORY_DSN: {{ printf "host=%s port=%d dbname=%s user=%s" $host (int $root.Values.postgresql.port) $root.Values.postgresql.database $root.Values.postgresql.username | quote }}
  {{- end }}
  OTEL_SERVICE_NAME: {{ printf "atalaya-%s" $name | quote }}
  OTEL_LOGS_EXPORTER: "none"
  {{- if $otlp }}
  OTEL_TRACES_EXPORTER: "otlp"
  OTEL_EXPORTER_OTLP_ENDPOINT: {{ $otlp | quote }}
  OTEL_EXPORTER_OTLP_PROTOCOL: "grpc"
  OTEL_TRACES_SAMPLER: "parentbased_traceidratio"
  OTEL_TRACES_SAMPLER_ARG: {{ $root.Values.telemetry.traceSampleRatio | quote }}
  {{- else }}
  OTEL_TRACES_EXPORTER: "none"
  {{- end }}
  {{- if $root.Values.telemetry.metrics.enabled }}
  OTEL_METRICS_EXPORTER: "prometheus"
  OTEL_EXPORTER_PROMETHEUS_HOST: "0.0.0.0"
  OTEL_EXPORTER_PROMETHEUS_PORT: {{ $root.Values.telemetry.metrics.port | quote }}
  {{- else }}
  OTEL_METRICS_EXPORTER: "none"
  {{- end }}
  {{- range $key, $value := merge (deepCopy $svc.env) $root.Values.commonEnv }}
  {{ $key }}: {{ $value | toString | quote }}
  {{- end }}
{{- end -}}

{{/*
The model cache (modelCache): a Hugging Face hub cache on a volume, filled once (by a Job, or
by an init container of each pod) and mounted read-only by the services that list
`cachedModels`; they load the weights from it offline (HF_HUB_CACHE, HF_HUB_OFFLINE=1).
*/}}

{{/* Whether a service reads its models from the cache. Context: dict root, component. */}}
{{- define "atalaya.usesModelCache" -}}
{{- $svc := index .root.Values.services .component -}}
{{- if and .root.Values.modelCache.enabled $svc.cachedModels -}}true{{- end -}}
{{- end -}}

{{/* Every model of the cache, sorted and without repeats, as a JSON list. Context: root. */}}
{{- define "atalaya.cachedModels" -}}
{{- $models := list -}}
{{- range $name, $svc := .Values.services -}}
{{- $models = concat $models (default list $svc.cachedModels) -}}
{{- end -}}
{{- toJson (dict "models" ($models | uniq | sortAlpha)) -}}
{{- end -}}

{{/* The cache's PersistentVolumeClaim. Context: root. */}}
{{- define "atalaya.modelCacheClaim" -}}
{{- .Values.modelCache.volume.existingClaim | default (include "atalaya.componentName" (dict "root" . "component" "model-cache")) -}}
{{- end -}}

{{/* The cache volume. Context: dict root, readOnly. */}}
{{- define "atalaya.modelCacheVolume" -}}
{{- $volume := .root.Values.modelCache.volume -}}
- name: model-cache
{{- if eq $volume.type "hostPath" }}
  hostPath:
    path: {{ $volume.hostPath }}
    type: Directory
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "atalaya.modelCacheClaim" .root }}
    {{- if .readOnly }}
    readOnly: true
    {{- end }}
{{- end }}
{{- end -}}

{{/* A container that fills the cache or waits for it (files/model_cache.py). Context: dict
root, mode (fill | wait), models (list), image. */}}
{{- define "atalaya.modelCacheContainer" -}}
{{- $cache := .root.Values.modelCache -}}
{{- $fill := eq .mode "fill" -}}
- name: {{ ternary "model-cache-fill" "model-cache-wait" $fill }}
  image: {{ .image | quote }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    - python3
    - -c
    - {{ .root.Files.Get "files/model_cache.py" | quote }}
    - {{ .mode }}
    {{- range .models }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: HF_HUB_CACHE
      value: {{ $cache.mountPath | quote }}
    {{- if $fill }}
    - name: HF_HOME
      value: /tmp/huggingface
    - name: HF_HUB_OFFLINE
      value: "0"
    - name: HF_HUB_DISABLE_TELEMETRY
      value: "1"
    {{- /* The download's chunk cache (up to 10 GB) on the volume, not in the pod. */}}
    - name: HF_XET_CACHE
      value: {{ printf "%s/.xet" $cache.mountPath | quote }}
    - name: ATALAYA_MODEL_CACHE_IGNORE
      value: {{ join "," $cache.fill.ignorePatterns | quote }}
    {{- with .root.Values.secrets.hfToken.existingSecret }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $.root.Values.secrets.hfToken.key }}
    {{- end }}
    {{- else }}
    - name: ATALAYA_MODEL_CACHE_WAIT_S
      value: {{ $cache.waitTimeoutSeconds | quote }}
    {{- end }}
  resources:
    {{- toYaml (ternary $cache.fill.resources $cache.waitResources $fill) | nindent 4 }}
  {{- include "atalaya.containerSecurity" .root | nindent 2 }}
  volumeMounts:
    - name: model-cache
      mountPath: {{ $cache.mountPath }}
      {{- if not $fill }}
      readOnly: true
      {{- end }}
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Settings of the cache that only make sense together. Context: root. */}}
{{- define "atalaya.checkModelCache" -}}
{{- $cache := .Values.modelCache -}}
{{- if $cache.enabled -}}
{{- if not (include "atalaya.cachedModels" . | fromJson).models -}}
{{- fail "modelCache.enabled: no service lists cachedModels; name the models of services.<svc>.cachedModels, or turn the cache off" -}}
{{- end -}}
{{- if and (eq $cache.volume.type "hostPath") (eq $cache.fill.mode "job") -}}
{{- fail "modelCache.fill.mode job fills one volume once; a hostPath cache is one per node: use fill.mode initContainer" -}}
{{- end -}}
{{- range $name, $svc := .Values.services -}}
{{- if $svc.cachedModels -}}
{{- $repos := list -}}
{{- range $svc.cachedModels -}}{{- $repos = append $repos (splitList "@" . | first) -}}{{- end -}}
{{- range $key, $value := $svc.settings -}}
{{- if and (hasSuffix "VLLM__MODEL" $key) (not (has (toString $value) $repos)) -}}
{{- fail (printf "services.%s.cachedModels: the cache would not hold %s (settings.%s), which the service loads offline; list it" $name $value $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
