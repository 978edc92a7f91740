# Provider pins of Lokomotive v0.8.0/v0.9.0 (assets/terraform-modules/bootkube/versions.tf).
# Offline, both are served by testenv's test-only providers from the filesystem
# mirror that scripts/provision.sh writes (see docs/testenv.md). Lokomotive also
# pins hashicorp/template 2.2.0; this fixture renders with templatefile() instead.
terraform {
  required_version = ">= 0.13"

  required_providers {
    local = {
      source  = "hashicorp/local"
      version = "2.1.0"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "3.1.0"
    }
  }
}
