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
