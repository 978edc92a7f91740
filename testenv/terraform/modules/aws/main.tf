# Stand-in for Lokomotive's aws/flatcar-linux/kubernetes module: no cloud
# resources, only the call of the bootkube module with the SANs an AWS cluster
# gets (<cluster>.<dns_zone>, <cluster>-etcd<i>.<dns_zone>), plus 127.0.0.1 and
# localhost so that a kube-apiserver on this machine can serve with the
# apiserver certificate and the admin kubeconfig can reach it.

locals {
  api_fqdn     = "${var.cluster_name}.${var.dns_zone}"
  etcd_servers = [for i in range(var.controller_count) : "${var.cluster_name}-etcd${i}.${var.dns_zone}"]
}

module "bootkube" {
  source = "../bootkube"

  cluster_name          = var.cluster_name
  api_servers           = [local.api_fqdn]
  api_servers_external  = [local.api_fqdn, "localhost"]
  api_servers_ips       = ["127.0.0.1"]
  etcd_servers          = local.etcd_servers
  asset_dir             = var.asset_dir
  service_cidr          = var.service_cidr
  cluster_domain_suffix = var.cluster_domain_suffix
  enable_aggregation    = var.enable_aggregation
  controller_count      = var.controller_count

  certs_validity_period_hours = var.certs_validity_period_hours
  kubelet_ca_syncer           = var.lokomotive_version != "v0.7"

  external_apiserver_host = "127.0.0.1"
  external_apiserver_port = var.api_port
}
