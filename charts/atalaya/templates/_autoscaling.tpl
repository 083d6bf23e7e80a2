{{/* Autoscaling: what each service scales on, and the settings that must hold for a scaler
to see its load. */}}

{{/* The Prometheus series KEDA scales a service on: requests waiting (`queue`) and requests
being served (`inFlight`), as the services export them (tests/charts/test_metric_names.py
checks every name against the code's exporter). A service missing here has no such signal
and scales on CPU only. Context: none; use with fromYaml. */}}
{{- define "atalaya.scalingSignals" -}}
generation:
  queue: atalaya_generation_queue_depth
  inFlight: atalaya_generation_in_flight
guardrail:
  queue: atalaya_guardrail_queue_depth
  inFlight: atalaya_guardrail_in_flight
embedding:
  queue: atalaya_embedding_queue_depth
  inFlight: atalaya_rpc_server_active_requests
{{- end -}}

{{/* Settings that would leave a scaler blind or fighting another; a wrong combination stops
the render with the reason. Context: root. */}}
{{- define "atalaya.checkAutoscaling" -}}
{{- $signals := include "atalaya.scalingSignals" . | fromYaml -}}
{{- range $name, $svc := .Values.services -}}
{{- $keda := and (hasKey $svc "keda") $svc.keda.enabled -}}
{{- if and $svc.gpu.enabled $svc.autoscaling.enabled -}}
{{- fail (printf "services.%s runs on a GPU: an HPA on CPU does not see its load (the GPU does the work); set services.%s.autoscaling.enabled=false and scale it on its queue with services.%s.keda" $name $name $name) -}}
{{- end -}}
{{- if $keda -}}
{{- if not (hasKey $signals $name) -}}
{{- fail (printf "services.%s.keda: %s exports no queue or in-flight gauge to scale on; use services.%s.autoscaling (CPU)" $name $name $name) -}}
{{- end -}}
{{- if not $.Values.telemetry.metrics.enabled -}}
{{- fail (printf "services.%s.keda reads the service's Prometheus metrics, which telemetry.metrics.enabled=false turns off" $name) -}}
{{- end -}}
{{- if not (or $.Values.telemetry.serviceMonitor.enabled $.Values.keda.externalScrape) -}}
{{- fail (printf "services.%s.keda: nothing makes Prometheus scrape the services, so the scaler would never see a queue; set telemetry.serviceMonitor.enabled=true (Prometheus Operator), or keda.externalScrape=true if your Prometheus scrapes the metrics port with its own configuration" $name) -}}
{{- end -}}
{{- if not $.Values.keda.prometheusUrl -}}
{{- fail (printf "services.%s.keda: keda.prometheusUrl is empty; give the query endpoint of the Prometheus that scrapes the services, e.g. http://prometheus-operated.monitoring.svc:9090" $name) -}}
{{- end -}}
{{- $k := $svc.keda -}}
{{- if gt (int $k.minReplicas) (int $k.maxReplicas) -}}
{{- fail (printf "services.%s.keda: minReplicas %d is above maxReplicas %d" $name (int $k.minReplicas) (int $k.maxReplicas)) -}}
{{- end -}}
{{- if gt (int $k.fallback.replicas) (int $k.maxReplicas) -}}
{{- fail (printf "services.%s.keda.fallback.replicas %d is above maxReplicas %d" $name (int $k.fallback.replicas) (int $k.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
