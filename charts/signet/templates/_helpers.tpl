{{/* Names */}}
{{- define "signet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "signet.fullname" -}}
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

{{- define "signet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "signet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "signet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "signet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "signet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "signet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The port of a listen address such as "0.0.0.0:8443" or "[::]:8443". */}}
{{- define "signet.port" -}}
{{- $p := regexFind "[0-9]+$" . -}}
{{- if or (not $p) (eq (int $p) 0) -}}
{{- fail (printf "listen address %q needs a fixed port in a pod: the Service and the probes use it" .) -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{/* The front-ends that write to the Kubernetes API (and so elect a leader). */}}
{{- define "signet.writesToKubernetes" -}}
{{- $f := (include "signet.config" . | fromYaml).frontends | default dict -}}
{{- if or $f.kubernetes_csr $f.istio_cacerts $f.istio_root_cert $f.istiod_tls $f.cert_manager $f.cluster_trust_bundles $f.pod_certificates -}}
true
{{- end -}}
{{- end -}}

{{/* The Lease namespace and name, as signet defaults them. */}}
{{- define "signet.leaseNamespace" -}}
{{- $le := (include "signet.config" . | fromYaml).leader_election | default dict -}}
{{- $le.namespace | default .Release.Namespace -}}
{{- end -}}
{{- define "signet.leaseName" -}}
{{- $le := (include "signet.config" . | fromYaml).leader_election | default dict -}}
{{- $le.lease_name | default "signet-leader" -}}
{{- end -}}

{{/* Whether the Istio front-end uses the in-cluster API server for
     TokenReview (a cluster entry without a kubeconfig). */}}
{{- define "signet.inClusterTokenReview" -}}
{{- $istio := ((include "signet.config" . | fromYaml).frontends | default dict).istio -}}
{{- if $istio -}}
{{- $tr := (($istio.auth | default dict).token_review | default dict) -}}
{{- range $id, $c := ($tr.clusters | default dict) -}}
{{- if not ($c | default dict).kubeconfig -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
