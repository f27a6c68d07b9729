{{/* The configuration signet runs with: `config` from the values, or this
     default when it is empty. Templates read it with
     `include "signet.config" . | fromYaml`. */}}
{{- define "signet.config" -}}
{{- if .Values.config -}}
{{- toYaml .Values.config -}}
{{- else -}}
trust_domain: cluster.local
admin:
  listen: 0.0.0.0:9090
backends:
  ca:
    type: local
    cert_file: /etc/signet/ca/tls.crt
    key_file: /etc/signet/ca/tls.key
    roots_file: /etc/signet/ca/ca.crt
authorities:
  mesh:
    backend: ca
    policy:
      default_ttl: 24h
      max_ttl: 24h
frontends:
  istio:
    listen: 0.0.0.0:15012
    authority: mesh
    server_names:
      - istiod.istio-system.svc
      - {{ include "signet.fullname" . }}.{{ .Release.Namespace }}.svc
    auth:
      mtls: true
      token_review:
        clusters:
          Kubernetes: {}
{{- end -}}
{{- end -}}
