{{/* Labels shared by the workload, its selector and its pods. */}}
{{- define "kube-controller-manager.labels" -}}
tier: control-plane
k8s-app: kube-controller-manager
{{- end }}

{{/* Pod template of both the Deployment and the DaemonSet. */}}
{{- define "kube-controller-manager.podTemplate" -}}
metadata:
  labels:
    {{- include "kube-controller-manager.labels" . | nindent 4 }}
  annotations:
    {{- /* v0.8+: a certificate change rolls the pods. */}}
    checksum/secret: {{ include (print $.Template.BasePath "/kube-controller-manager-secret.yaml") . | sha256sum }}
spec:
  nodeSelector:
    node.kubernetes.io/controller: "true"
  priorityClassName: system-cluster-critical
  serviceAccountName: kube-controller-manager
  tolerations:
  - key: node-role.kubernetes.io/master
    operator: Exists
    effect: NoSchedule
  containers:
  - name: kube-controller-manager
    image: {{ .Values.controllerManager.image }}
    command:
    - kube-controller-manager
    - --use-service-account-credentials
    - --allocate-node-cidrs=true
    - --cluster-signing-cert-file=/etc/kubernetes/secrets/ca.crt
    - --cluster-signing-key-file=/etc/kubernetes/secrets/ca.key
    - --leader-elect=true
    - --root-ca-file=/etc/kubernetes/secrets/ca.crt
    - --service-account-private-key-file=/etc/kubernetes/secrets/service-account.key
    volumeMounts:
    - name: secrets
      mountPath: /etc/kubernetes/secrets
      readOnly: true
  volumes:
  - name: secrets
    secret:
      secretName: kube-controller-manager
{{- end }}
