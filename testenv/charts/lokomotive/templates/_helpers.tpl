{{- define "lokomotive.labels" -}}
k8s-app: admission-webhook-server
{{- end }}
