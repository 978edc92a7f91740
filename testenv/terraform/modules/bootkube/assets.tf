# Rendered assets: the admin and kubelet kubeconfigs and the values files of
# the control-plane charts lokoctl upgrades (kube-apiserver, kubernetes,
# kubelet, lokomotive).
# Certificate values are base64 of the PEM, as Lokomotive's assets.tf does.

locals {
  kubeconfig_server = format(
    "https://%s:%d",
    var.external_apiserver_host != "" ? var.external_apiserver_host : local.api_servers_external[0],
    var.external_apiserver_port,
  )

  kubeconfig_admin = templatefile("${path.module}/resources/kubeconfig-admin", {
    name         = var.cluster_name
    ca_cert      = base64encode(tls_self_signed_cert.kube-ca.cert_pem)
    kubelet_cert = base64encode(tls_locally_signed_cert.admin.cert_pem)
    kubelet_key  = base64encode(tls_private_key.admin.private_key_pem)
    server       = local.kubeconfig_server
  })

  kubeconfig_kubelet = templatefile("${path.module}/resources/kubeconfig-kubelet", {
    ca_cert      = base64encode(tls_self_signed_cert.kube-ca.cert_pem)
    kubelet_cert = base64encode(tls_locally_signed_cert.kubelet.cert_pem)
    kubelet_key  = base64encode(tls_private_key.kubelet.private_key_pem)
    server       = local.kubeconfig_server
  })

  kube_apiserver_values = templatefile("${path.module}/resources/charts/kube-apiserver.yaml", {
    apiserver_key           = base64encode(tls_private_key.apiserver.private_key_pem)
    apiserver_cert          = base64encode(tls_locally_signed_cert.apiserver.cert_pem)
    serviceaccount_key      = base64encode(tls_private_key.service-account.private_key_pem)
    ca_cert                 = base64encode(tls_self_signed_cert.kube-ca.cert_pem)
    etcd_ca_cert            = base64encode(tls_self_signed_cert.etcd-ca.cert_pem)
    etcd_client_cert        = base64encode(tls_locally_signed_cert.client.cert_pem)
    etcd_client_key         = base64encode(tls_private_key.client.private_key_pem)
    etcd_servers            = join(",", formatlist("https://%s:2379", var.etcd_servers))
    service_cidr            = var.service_cidr
    enable_aggregation      = var.enable_aggregation
    aggregation_ca_cert     = var.enable_aggregation ? base64encode(join(" ", tls_self_signed_cert.aggregation-ca.*.cert_pem)) : ""
    aggregation_client_cert = var.enable_aggregation ? base64encode(join(" ", tls_locally_signed_cert.aggregation-client.*.cert_pem)) : ""
    aggregation_client_key  = var.enable_aggregation ? base64encode(join(" ", tls_private_key.aggregation-client.*.private_key_pem)) : ""
    replicas                = var.controller_count
  })

  kubernetes_values = templatefile("${path.module}/resources/charts/kubernetes.yaml", {
    serviceaccount_key = base64encode(tls_private_key.service-account.private_key_pem)
    ca_cert            = base64encode(tls_self_signed_cert.kube-ca.cert_pem)
    ca_key             = base64encode(tls_private_key.kube-ca.private_key_pem)
    replicas           = var.controller_count
  })

  kubelet_values = templatefile("${path.module}/resources/charts/kubelet.yaml", {
    cluster_dns_service_ip = cidrhost(var.service_cidr, 10)
    kubernetes_ca_cert     = base64encode(tls_self_signed_cert.kube-ca.cert_pem)
    ca_syncer              = var.kubelet_ca_syncer
  })

  lokomotive_values = templatefile("${path.module}/resources/charts/lokomotive.yaml", {
    serving_key  = base64encode(tls_private_key.admission-webhook-server.private_key_pem)
    serving_cert = base64encode(tls_locally_signed_cert.admission-webhook-server.cert_pem)
  })
}

# auth/kubeconfig: the admin kubeconfig (bootkube requires this path).
resource "local_file" "kubeconfig-admin" {
  content  = local.kubeconfig_admin
  filename = "${var.asset_dir}/auth/kubeconfig"
}

# auth/<cluster_name>-config: an identical copy.
resource "local_file" "kubeconfig-admin-named" {
  content  = local.kubeconfig_admin
  filename = "${var.asset_dir}/auth/${var.cluster_name}-config"
}

resource "local_file" "kubeconfig-kubelet" {
  content  = local.kubeconfig_kubelet
  filename = "${var.asset_dir}/auth/kubeconfig-kubelet"
}

resource "local_file" "kube-apiserver" {
  content  = local.kube_apiserver_values
  filename = "${var.asset_dir}/charts/kube-system/kube-apiserver.yaml"
}

resource "local_file" "lokomotive" {
  content  = local.lokomotive_values
  filename = "${var.asset_dir}/charts/lokomotive-system/lokomotive.yaml"
}

resource "local_file" "kubernetes" {
  content  = local.kubernetes_values
  filename = "${var.asset_dir}/charts/kube-system/kubernetes.yaml"
}

resource "local_file" "kubelet" {
  content  = local.kubelet_values
  filename = "${var.asset_dir}/charts/kube-system/kubelet.yaml"
}
