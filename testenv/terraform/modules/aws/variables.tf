variable "cluster_name" {
  type = string
}

variable "dns_zone" {
  description = "DNS zone of the cluster (documentation domain: nothing resolves it)."
  type        = string
  default     = "example.com"
}

variable "asset_dir" {
  type = string
}

variable "controller_count" {
  type    = number
  default = 1
}

variable "api_port" {
  description = "Port of the local kube-apiserver the admin kubeconfig points at."
  type        = number
  default     = 6443
}

variable "service_cidr" {
  type    = string
  default = "10.3.0.0/16"
}

variable "cluster_domain_suffix" {
  type    = string
  default = "cluster.local"
}

variable "enable_aggregation" {
  description = "Every Lokomotive platform module defaults this to true."
  type        = bool
  default     = true
}

variable "certs_validity_period_hours" {
  type    = number
  default = 8760
}
