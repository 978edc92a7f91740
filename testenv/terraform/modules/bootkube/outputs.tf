# Outputs lokoctl reads: `terraform output -json <chart>_values` for each
# control-plane chart, and the admin kubeconfig.

output "kube-apiserver_values" {
  value     = local.kube_apiserver_values
  sensitive = true
}

output "kubernetes_values" {
  value     = local.kubernetes_values
  sensitive = true
}

output "kubelet_values" {
  value     = local.kubelet_values
  sensitive = true
}

output "lokomotive_values" {
  value     = local.lokomotive_values
  sensitive = true
}

output "kubeconfig-admin" {
  value     = local.kubeconfig_admin
  sensitive = true
}

output "ca_cert" {
  value = tls_self_signed_cert.kube-ca.cert_pem
}

output "server" {
  value = local.kubeconfig_server
}

# What the platform module's copy-controller-secrets sends to each controller
# (lokomotive-pki.md §2), as the real bootkube module outputs them.
output "etcd_ca_cert" {
  value = tls_self_signed_cert.etcd-ca.cert_pem
}

output "etcd_client_cert" {
  value = tls_locally_signed_cert.client.cert_pem
}

output "etcd_client_key" {
  value     = tls_private_key.client.private_key_pem
  sensitive = true
}

output "etcd_server_cert" {
  value = tls_locally_signed_cert.server.cert_pem
}

output "etcd_server_key" {
  value     = tls_private_key.server.private_key_pem
  sensitive = true
}

output "etcd_peer_cert" {
  value = tls_locally_signed_cert.peer.cert_pem
}

output "etcd_peer_key" {
  value     = tls_private_key.peer.private_key_pem
  sensitive = true
}

output "kubeconfig-kubelet" {
  value     = local.kubeconfig_kubelet
  sensitive = true
}
