output "kube-apiserver_values" {
  value     = module.bootkube.kube-apiserver_values
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
