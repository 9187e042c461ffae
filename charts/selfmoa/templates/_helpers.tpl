{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "selfmoa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources: <release>-<chart> unless the release already says it. */}}
{{- define "selfmoa.fullname" -}}
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

{{- define "selfmoa.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pod; never change them (Deployment selectors are immutable). */}}
{{- define "selfmoa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "selfmoa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "selfmoa.labels" -}}
helm.sh/chart: {{ include "selfmoa.chart" . }}
{{ include "selfmoa.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: selfmoa
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "selfmoa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "selfmoa.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "selfmoa.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's permissions: exactly the (resource, verb) pairs its code and Kopf request, checked
against the apiserver's audit log of real runs (tests/cluster). Nothing else: no ConfigMaps,
no pods/log, no events.k8s.io, no update (Kopf and the executor only patch), no Secret list/watch.
*/}}
{{- define "selfmoa.rules" -}}
# Kopf lists and watches the runs and patches its finalizer and progress annotations on them.
- apiGroups: ["selfmoa.dev"]
  resources: ["alignmentruns"]
  verbs: ["list", "watch", "patch"]
# The run's status (phase, conditions, stages) is a merge patch of the status subresource.
- apiGroups: ["selfmoa.dev"]
  resources: ["alignmentruns/status"]
  verbs: ["patch"]
# Stage Jobs: Kopf watches them (a finished Job kicks its run); the executor lists, creates,
# deletes them, and gets one only when its create answers 409 (adopted after a restart).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# vLLM servers: as Jobs, plus patch to scale them and roll a changed spec.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# The vLLM servers' Services: created, listed and deleted with them (get: on a 409 create).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "create", "delete"]
# A failed stage's Pods, listed by job-name to report their termination message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# The storage Secret a run names in spec.storage.secretRef, read by name (never listed).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Kopf posts Events on the run as core/v1 Events (create only; it never patches them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
