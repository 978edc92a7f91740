output "kube-apiserver_values" {
  value     = module.bootkube.kube-apiserver_values
  sensitive = true
}

output "kubernetes_values" {
  value     = module.bootkube.kubernetes_values
  sensitive = true
}

output "kubelet_values" {
  value     = module.bootkube.kubelet_values
  sensitive = true
}

output "lokomotive_values" {
  value     = module.bootkube.lokomotive_values
  sensitive = true
}

output "kubeconfig" {
  value     = module.bootkube.kubeconfig-admin
  sensitive = true
}
