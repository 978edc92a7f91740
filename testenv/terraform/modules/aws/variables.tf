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

variable "lokomotive_version" {
  description = "Which Lokomotive's copy-controller-secrets to play: \"v0.8\" (v0.8.0+) or \"v0.7\" (v0.5.0-v0.7.0)."
  type        = string
  default     = "v0.8"

  validation {
    condition     = contains(["v0.7", "v0.8"], var.lokomotive_version)
    error_message = "The lokomotive_version must be \"v0.7\" or \"v0.8\"."
  }
}

variable "ssh_port" {
  description = "Port of the controller node's sshd on 127.0.0.1; 0: no node (no copy-controller-secrets)."
  type        = number
  default     = 0
}

variable "ssh_user" {
  description = "The user Terraform logs in as on the controller node (Lokomotive: core)."
  type        = string
  default     = "core"
}

variable "ssh_private_key_file" {
  description = "The test user's private key (Lokomotive uses the operator's ssh-agent instead)."
  type        = string
  default     = ""
}

variable "ssh_host_key" {
  description = "The node's public host key, which the connection verifies."
  type        = string
  default     = ""
}

variable "ssh_home" {
  description = "The node user's home folder, where the files are uploaded before they are moved."
  type        = string
  default     = ""
}
