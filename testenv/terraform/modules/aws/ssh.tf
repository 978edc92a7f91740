# The etcd certificates (and the node's kubeconfig) copied to each controller
# over SSH, as Lokomotive's platform modules do it (lokomotive-pki.md §2):
# Terraform's own `file` and `remote-exec` provisioners, run when the
# null_resource is created and whenever one of its triggers changes.
#
# The controller is the test environment's node: a real sshd on 127.0.0.1
# (port, user, keys from the harness; nothing here when ssh_port is 0, e.g. an
# asset dir made without a cluster). Its session has NODE_ROOT set to the
# node's folder (empty on a real node: the paths are the real ones) and
# `sudo`, `chown` and `systemctl` stand-ins first in PATH; `systemctl` asks
# the harness, which plays systemd for its etcd (docs/test-harness.md).
#
# Lokomotive uploads to "$HOME/…", which terraform 0.13 left to the remote
# shell; terraform 1.x quotes the destination (a file named "$HOME" in the
# login directory), so the node's home folder is given (var.ssh_home).
#
# Triggers by Lokomotive version (var.lokomotive_version):
# - "v0.8" (v0.8.0 and later): controller_id and the etcd CA, server and peer
#   certificates, so new etcd certificates are pushed and etcd restarted on
#   them (stop, the old files kept in /etc/ssl/etcd.old, start);
# - "v0.7" (v0.5.0 to v0.7.0): controller_id only, so new etcd certificates
#   are NOT pushed: the node keeps what it got at install.

locals {
  copy_triggers = merge(
    { controller_id = "${var.cluster_name}-controller-0" },
    var.lokomotive_version == "v0.7" ? {} : {
      etcd_ca_cert     = module.bootkube.etcd_ca_cert
      etcd_server_cert = module.bootkube.etcd_server_cert
      etcd_peer_cert   = module.bootkube.etcd_peer_cert
    },
  )
  # v0.8+ stops etcd and keeps the old files before the copy; v0.7 copies at
  # install only (etcd is not running yet then).
  copy_before = var.lokomotive_version == "v0.7" ? [] : [
    "sudo systemctl stop etcd",
    "sudo rm -rf $NODE_ROOT/etc/ssl/etcd.old",
    "if [ -d $NODE_ROOT/etc/ssl/etcd ]; then sudo mv $NODE_ROOT/etc/ssl/etcd $NODE_ROOT/etc/ssl/etcd.old; fi",
  ]
}

resource "null_resource" "copy-controller-secrets" {
  # One node plays every controller here (one etcd member): one copy.
  count = var.ssh_port == 0 ? 0 : 1

  connection {
    type        = "ssh"
    host        = "127.0.0.1"
    port        = var.ssh_port
    user        = var.ssh_user
    private_key = file(var.ssh_private_key_file)
    host_key    = var.ssh_host_key
    agent       = false
    timeout     = "1m"
  }

  provisioner "file" {
    content     = module.bootkube.etcd_ca_cert
    destination = "${var.ssh_home}/etcd-client-ca.crt"
  }

  provisioner "file" {
    content     = module.bootkube.etcd_client_cert
    destination = "${var.ssh_home}/etcd-client.crt"
  }

  provisioner "file" {
    content     = module.bootkube.etcd_client_key
    destination = "${var.ssh_home}/etcd-client.key"
  }

  provisioner "file" {
    content     = module.bootkube.etcd_server_cert
    destination = "${var.ssh_home}/etcd-server.crt"
  }

  provisioner "file" {
    content     = module.bootkube.etcd_server_key
    destination = "${var.ssh_home}/etcd-server.key"
  }

  provisioner "file" {
    content     = module.bootkube.etcd_peer_cert
    destination = "${var.ssh_home}/etcd-peer.crt"
  }

  provisioner "file" {
    content     = module.bootkube.etcd_peer_key
    destination = "${var.ssh_home}/etcd-peer.key"
  }

  # enable_tls_bootstrap = false: the static kubelet kubeconfig.
  provisioner "file" {
    content     = module.bootkube.kubeconfig-kubelet
    destination = "${var.ssh_home}/kubeconfig"
  }

  # Lokomotive makes the etcd files mode 500 owned by etcd; here they stay
  # the test user's (no etcd user; the harness's etcd runs as that user).
  provisioner "remote-exec" {
    inline = concat(["set -e"], local.copy_before, [
      "sudo mkdir -p $NODE_ROOT/etc/kubernetes",
      "sudo mv ${var.ssh_home}/kubeconfig $NODE_ROOT/etc/kubernetes/kubeconfig",
      "sudo chown root:root $NODE_ROOT/etc/kubernetes/kubeconfig",
      "sudo chmod 644 $NODE_ROOT/etc/kubernetes/kubeconfig",
      "sudo mkdir -p $NODE_ROOT/etc/ssl/etcd/etcd",
      "sudo mv ${var.ssh_home}/etcd-client-ca.crt ${var.ssh_home}/etcd-client.crt ${var.ssh_home}/etcd-client.key $NODE_ROOT/etc/ssl/etcd/",
      "sudo cp $NODE_ROOT/etc/ssl/etcd/etcd-client-ca.crt $NODE_ROOT/etc/ssl/etcd/etcd/server-ca.crt",
      "sudo mv ${var.ssh_home}/etcd-server.crt $NODE_ROOT/etc/ssl/etcd/etcd/server.crt",
      "sudo mv ${var.ssh_home}/etcd-server.key $NODE_ROOT/etc/ssl/etcd/etcd/server.key",
      "sudo cp $NODE_ROOT/etc/ssl/etcd/etcd-client-ca.crt $NODE_ROOT/etc/ssl/etcd/etcd/peer-ca.crt",
      "sudo mv ${var.ssh_home}/etcd-peer.crt $NODE_ROOT/etc/ssl/etcd/etcd/peer.crt",
      "sudo mv ${var.ssh_home}/etcd-peer.key $NODE_ROOT/etc/ssl/etcd/etcd/peer.key",
      "sudo chown -R etcd:etcd $NODE_ROOT/etc/ssl/etcd",
      "sudo chmod -R go-rwx $NODE_ROOT/etc/ssl/etcd",
      "sudo systemctl start etcd",
    ])
  }

  triggers = local.copy_triggers
}
