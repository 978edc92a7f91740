{{/* Labels shared by the workload, its selector and its pods. */}}
{{- define "kube-apiserver.labels" -}}
tier: control-plane
k8s-app: kube-apiserver
{{- end }}

{{/* The certificate data of the Secret; the token below is derived from it. */}}
{{- define "kube-apiserver.certs" -}}
apiserver.key: {{ .Values.apiserver.apiserverKey | quote }}
apiserver.crt: {{ .Values.apiserver.apiserverCert | quote }}
service-account.key: {{ .Values.apiserver.serviceAccountPrivate | quote }}
ca.crt: {{ .Values.apiserver.caCert | quote }}
etcd-client-ca.crt: {{ .Values.apiserver.etcdClientCaCert | quote }}
etcd-client.crt: {{ .Values.apiserver.etcdClientCert | quote }}
etcd-client.key: {{ .Values.apiserver.etcdClientKey | quote }}
aggregation-ca.crt: {{ .Values.apiserver.aggregationCaCert | quote }}
aggregation-client.crt: {{ .Values.apiserver.aggregationClientCert | quote }}
aggregation-client.key: {{ .Values.apiserver.aggregationClientKey | quote }}
{{- end }}

{{/* As in Lokomotive: a token that changes whenever a certificate does. */}}
{{- define "kube-apiserver.token" -}}
{{ include "kube-apiserver.certs" . | sha256sum | trunc 32 }}
{{- end }}

{{- define "kube-apiserver.flags" -}}
- /hyperkube
- kube-apiserver
- --advertise-address=$(POD_IP)
- --allow-privileged=true
- --anonymous-auth=false
- --authorization-mode=Node,RBAC
- --client-ca-file=/etc/kubernetes/secrets/ca.crt
- --cloud-provider={{ .Values.apiserver.cloudProvider }}
- --enable-admission-plugins=NodeRestriction
- --etcd-cafile=/etc/kubernetes/secrets/etcd-client-ca.crt
- --etcd-certfile=/etc/kubernetes/secrets/etcd-client.crt
- --etcd-keyfile=/etc/kubernetes/secrets/etcd-client.key
- --etcd-servers={{ .Values.apiserver.etcdServers }}
- --insecure-port=0
- --kubelet-client-certificate=/etc/kubernetes/secrets/apiserver.crt
- --kubelet-client-key=/etc/kubernetes/secrets/apiserver.key
- --secure-port=6443
- --service-account-key-file=/etc/kubernetes/secrets/service-account.key
- --service-account-signing-key-file=/etc/kubernetes/secrets/service-account.key
- --service-account-issuer=https://kubernetes.default.svc
- --service-cluster-ip-range={{ .Values.apiserver.serviceCIDR }}
- --tls-cert-file=/etc/kubernetes/secrets/apiserver.crt
- --tls-private-key-file=/etc/kubernetes/secrets/apiserver.key
- --token-auth-file=/etc/kubernetes/secrets/token-auth-file
{{- if .Values.apiserver.enableAggregation }}
- --proxy-client-cert-file=/etc/kubernetes/secrets/aggregation-client.crt
- --proxy-client-key-file=/etc/kubernetes/secrets/aggregation-client.key
- --requestheader-client-ca-file=/etc/kubernetes/secrets/aggregation-ca.crt
- --requestheader-allowed-names=kube-apiserver
- --requestheader-extra-headers-prefix=X-Remote-Extra-
- --requestheader-group-headers=X-Remote-Group
- --requestheader-username-headers=X-Remote-User
{{- end }}
{{- range .Values.apiserver.extraFlags }}
- {{ . }}
{{- end }}
{{- end }}

{{/* Pod template of both the Deployment and the DaemonSet. */}}
{{- define "kube-apiserver.podTemplate" -}}
metadata:
  labels:
    {{- include "kube-apiserver.labels" . | nindent 4 }}
  annotations:
    checkpointer.alpha.coreos.com/checkpoint: "true"
    {{- /* v0.8+: a certificate change rolls the pods. */}}
    checksum/secret: {{ include (print $.Template.BasePath "/kube-apiserver-secret.yaml") . | sha256sum }}
spec:
  hostNetwork: true
  nodeSelector:
    node.kubernetes.io/controller: "true"
  priorityClassName: system-cluster-critical
  tolerations:
  - key: node-role.kubernetes.io/master
    operator: Exists
    effect: NoSchedule
  containers:
  - name: kube-apiserver
    image: {{ .Values.apiserver.image }}
    command:
      {{- include "kube-apiserver.flags" . | nindent 6 }}
    env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    readinessProbe:
      httpGet:
        path: /healthz
        port: 6443
        scheme: HTTPS
        httpHeaders:
        - name: Authorization
          value: Bearer {{ include "kube-apiserver.token" . }}
    volumeMounts:
    - name: secrets
      mountPath: /etc/kubernetes/secrets
      readOnly: true
    - name: ssl-certs-host
      mountPath: /etc/ssl/certs
      readOnly: true
  volumes:
  - name: secrets
    secret:
      secretName: kube-apiserver
  - name: ssl-certs-host
    hostPath:
      path: {{ .Values.apiserver.trustedCertsDir }}
{{- end }}
