{{/*
Names are fixed rather than derived from the release name: weftctl, the injector and the
proxies find the control plane by them (weft-control.<ns>.svc:7200), and a second release in
the same cluster would be a second mesh fighting the first over one webhook.
*/}}

{{- define "weft.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "...") */}}
{{- define "weft.labels" -}}
{{ include "weft.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: weft
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "weft.chart" .ctx }}
{{- end }}

{{/* The subset that selects pods: it must never change across upgrades. */}}
{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "weft.controlPlaneImage" -}}
{{ .Values.controlPlane.image.repository }}:{{ .Values.controlPlane.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The issuer Secret weft-control reads, whoever writes it. */}}
{{- define "weft.issuerSecret" -}}
{{- if eq .Values.identity.mode "existingSecret" -}}
{{ required "identity.existingSecret.issuer is required with identity.mode=existingSecret" .Values.identity.existingSecret.issuer }}
{{- else -}}
weft-issuer
{{- end }}
{{- end }}

{{/* The Secret whose ca.crt holds the trust anchor(s): weft-trust-anchor when the chart
stores a bundle, the user's when named, else the issuer Secret's own ca.crt. */}}
{{- define "weft.trustAnchorSecret" -}}
{{- if or .Values.identity.trustAnchorsPEM (eq .Values.identity.mode "given") -}}
weft-trust-anchor
{{- else if and (eq .Values.identity.mode "existingSecret") .Values.identity.existingSecret.trustAnchor -}}
{{ .Values.identity.existingSecret.trustAnchor }}
{{- else -}}
{{ include "weft.issuerSecret" . }}
{{- end }}
{{- end }}

{{/* Mount paths inside the control plane's container. */}}
{{- define "weft.dataDir" -}}/var/lib/weft{{- end }}
{{- define "weft.pkiDir" -}}/var/run/weft/pki{{- end }}
{{- define "weft.adminTokenDir" -}}/var/run/weft/admin{{- end }}
{{- define "weft.webhookTlsDir" -}}/var/run/weft/webhook{{- end }}

{{/* The binaries' paths in the control-plane image (FROM scratch: no PATH lookup to rely on),
beside /weft-proxy in the proxy image. */}}
{{- define "weft.controlBinary" -}}/weft-control{{- end }}
{{- define "weft.weftctlBinary" -}}/weftctl{{- end }}

{{/* The restricted Pod Security Standard, for every container the chart runs. */}}
{{- define "weft.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The images the webhook injects, tagged with the chart's appVersion unless given. */}}
{{- define "weft.proxyImage" -}}
{{ .Values.proxy.image.repository }}:{{ .Values.proxy.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- define "weft.initImage" -}}
{{ .Values.proxy.initImage.repository }}:{{ .Values.proxy.initImage.tag | default .Chart.AppVersion }}
{{- end }}
