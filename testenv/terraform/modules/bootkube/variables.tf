# The subset of Lokomotive's bootkube variables that shapes the PKI.

variable "cluster_name" {
  description = "Cluster name; names the kubeconfig entries."
  type        = string
}

variable "api_servers" {
  description = "FQDNs of the API server (apiserver certificate DNS SANs)."
  type        = list(string)
}

variable "api_servers_external" {
  description = "External FQDNs of the API server (also DNS SANs). Defaults to api_servers."
  type        = list(string)
  default     = []
}

variable "api_servers_ips" {
  description = "Extra IP SANs of the apiserver certificate."
  type        = list(string)
  default     = []
}

variable "etcd_servers" {
  description = "FQDNs of the etcd members (etcd certificate SANs)."
  type        = list(string)
}

variable "asset_dir" {
  description = "Where the rendered assets go; lokoctl passes ../cluster-assets."
  type        = string
}

variable "service_cidr" {
  description = "Service CIDR; its first address is an apiserver IP SAN."
  type        = string
  default     = "10.3.0.0/16"
}

variable "cluster_domain_suffix" {
  description = "Cluster DNS domain."
  type        = string
  default     = "cluster.local"
}

variable "enable_aggregation" {
  description = "Create the aggregation (front-proxy) CA and client certificate."
  type        = bool
  default     = false
}

variable "certs_validity_period_hours" {
  description = "Validity of every certificate, CAs included."
  type        = number
  default     = 8760
}

variable "external_apiserver_host" {
  description = "Host of the server URL in the admin kubeconfig (Lokomotive: api_servers_external[0])."
  type        = string
  default     = ""
}

variable "external_apiserver_port" {
  description = "Port of the server URL in the admin kubeconfig."
  type        = number
  default     = 6443
}

variable "controller_count" {
  description = "Number of controllers: 1 renders kube-apiserver as a Deployment, more as a DaemonSet."
  type        = number
  default     = 1
}

variable "kubelet_ca_syncer" {
  description = "Lokomotive v0.8+: the kubelet values carry kubernetesCACert for the chart's ca-syncer; v0.5-v0.7 have neither."
  type        = bool
  default     = true
}

locals {
  api_servers_external = length(var.api_servers_external) > 0 ? var.api_servers_external : var.api_servers
}
