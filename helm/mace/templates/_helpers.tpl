{{/* Chart name, overridable. */}}
{{- define "mace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object's name: the release name, plus the chart name unless it already has it. */}}
{{- define "mace.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := include "mace.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mace.operator.fullname" -}}{{ include "mace.fullname" . }}-operator{{- end }}
{{- define "mace.agent.fullname" -}}{{ include "mace.fullname" . }}-agent{{- end }}

{{/* Labels on every object, besides its selector labels (which carry app.kubernetes.io/instance). */}}
{{- define "mace.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mace
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Selector labels. The agent's name/component pair is how the operator finds agents (fixed). */}}
{{- define "mace.operator.selectorLabels" -}}
app.kubernetes.io/name: mace-operator
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "mace.agent.selectorLabels" -}}
app.kubernetes.io/name: mace-agent
app.kubernetes.io/component: agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Images: <registry>/mace-<component>:<tag>, each part overridable. */}}
{{- define "mace.image" -}}
{{- $component := index . 0 }}
{{- $root := index . 1 }}
{{- $values := index $root.Values $component }}
{{- $repository := $values.image.repository | default (printf "%s/mace-%s" $root.Values.image.registry $component) }}
{{- $tag := $values.image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* The username the operator's ServiceAccount tokens authenticate as (the agents accept only it). */}}
{{- define "mace.operator.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "mace.operator.fullname" . }}
{{- end }}

{{/* The pre-1.30 AppArmor annotation value of agent.appArmorProfile. */}}
{{- define "mace.agent.appArmorAnnotation" -}}
{{- $profile := .Values.agent.appArmorProfile }}
{{- if eq $profile.type "Unconfined" }}unconfined
{{- else if eq $profile.type "RuntimeDefault" }}runtime/default
{{- else }}localhost/{{ required "agent.appArmorProfile.localhostProfile is required with type Localhost" $profile.localhostProfile }}
{{- end }}
{{- end }}
