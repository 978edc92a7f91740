#!/usr/bin/env bash
# Make a real Lokomotive-style asset dir by a real `terraform apply`.
#
#   testenv/make-assets.sh CONFIG_DIR [--api-port N] [--cluster NAME]
#       [--validity-hours H] [--controllers N] [--fake-now RFC3339]
#       [--lokomotive v0.7|v0.8] [--ssh-port N --ssh-user U --ssh-home DIR
#        --ssh-key FILE --ssh-host-key FILE.pub]
#
# Lays out CONFIG_DIR as lokoctl would for an AWS cluster:
#   CONFIG_DIR/cluster.lokocfg
#   CONFIG_DIR/assets/terraform/cluster.tf        module "aws-<cluster>" -> module "bootkube"
#   CONFIG_DIR/assets/terraform-modules/{aws,bootkube}/
#   CONFIG_DIR/assets/cluster-assets/charts/kube-system/kube-apiserver/        (chart)
#   CONFIG_DIR/assets/cluster-assets/charts/kube-system/{kubernetes,kubelet}/  (charts)
#   CONFIG_DIR/assets/cluster-assets/charts/lokomotive-system/lokomotive/      (chart)
# then runs `terraform init` and `terraform apply -auto-approve` in
# assets/terraform, which writes tls/, auth/ and the chart values files.
#
# --fake-now issues every certificate as if "now" were that instant (the
# test providers read CERTROTATE_FAKE_NOW), e.g. a year ago to get certificates
# that have already expired. Re-running on an existing dir re-applies.
#
# --ssh-port and the rest name the controller node (a real sshd on 127.0.0.1,
# run by the test harness): the apply then copies the etcd certificates and
# the kubelet kubeconfig to it (null_resource.copy-controller-secrets, over
# SSH), with the triggers of Lokomotive --lokomotive (default v0.8: new etcd
# certificates are pushed; v0.7: only at install). Without them no node.
#
# Tool paths come from the environment (CERTROTATE_TERRAFORM,
# CERTROTATE_TF_CLI_CONFIG), else from the testenv.env that
# scripts/provision.sh writes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=$(date +%s)

die() {
	echo "make-assets: $*" >&2
	exit 1
}

usage() {
	sed -n '3,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[ $# -ge 1 ] || usage
CONFIG_DIR=$1
shift
API_PORT=6443
CLUSTER=l8e-mat
VALIDITY=8760
CONTROLLERS=1
FAKE_NOW=
LOKOMOTIVE=v0.8
SSH_PORT=0
SSH_USER=core
SSH_HOME=
SSH_KEY=
SSH_HOST_KEY=
while [ $# -gt 0 ]; do
	case $1 in
	--api-port) API_PORT=${2:?}; shift 2 ;;
	--cluster) CLUSTER=${2:?}; shift 2 ;;
	--validity-hours) VALIDITY=${2:?}; shift 2 ;;
	--controllers) CONTROLLERS=${2:?}; shift 2 ;;
	--fake-now) FAKE_NOW=${2:?}; shift 2 ;;
	--lokomotive) LOKOMOTIVE=${2:?}; shift 2 ;;
	--ssh-port) SSH_PORT=${2:?}; shift 2 ;;
	--ssh-user) SSH_USER=${2:?}; shift 2 ;;
	--ssh-home) SSH_HOME=${2:?}; shift 2 ;;
	--ssh-key) SSH_KEY=${2:?}; shift 2 ;;
	--ssh-host-key) SSH_HOST_KEY=${2:?}; shift 2 ;;
	-h | --help) usage ;;
	*) die "unknown argument: $1" ;;
	esac
done
[[ $API_PORT =~ ^[0-9]+$ ]] || die "--api-port must be a number"
[[ $VALIDITY =~ ^[0-9]+$ ]] || die "--validity-hours must be a number"
[[ $CONTROLLERS =~ ^[1-9][0-9]*$ ]] || die "--controllers must be a positive number"
[[ $CLUSTER =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "--cluster must be lower-case letters, digits and dashes"
[[ $LOKOMOTIVE =~ ^v0\.[78]$ ]] || die "--lokomotive must be v0.7 or v0.8"
[[ $SSH_PORT =~ ^[0-9]+$ ]] || die "--ssh-port must be a number"
[[ $SSH_USER =~ ^[a-z_][a-z0-9_-]*$ ]] || die "--ssh-user must be a user name"
if [ "$SSH_PORT" != 0 ]; then
	[ -f "$SSH_KEY" ] || die "--ssh-key must name the test user's private key file"
	[ -f "$SSH_HOST_KEY" ] || die "--ssh-host-key must name the node's public host key file"
	[[ $SSH_HOME == /* ]] || die "--ssh-home must be the node user's home folder (absolute)"
	[[ $SSH_KEY$SSH_HOST_KEY$SSH_HOME != *[\|\"]* ]] || die "paths must not contain | or \""
fi

if [ -z "${CERTROTATE_TF_CLI_CONFIG:-}" ] || [ -z "${CERTROTATE_TERRAFORM:-}" ]; then
	ENV_FILE=${CERTROTATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubectl-certrotate}/testenv.env
	[ -f "$ENV_FILE" ] || die "$ENV_FILE not found: run scripts/provision.sh first"
	# shellcheck disable=SC1090
	. "$ENV_FILE"
fi
TERRAFORM=${CERTROTATE_TERRAFORM:-terraform}

mkdir -p "$CONFIG_DIR"
CONFIG_DIR=$(cd "$CONFIG_DIR" && pwd)
ASSETS=$CONFIG_DIR/assets

# What lokoctl's initialize() does: lokocfg, modules, rendered root module,
# and (v0.6.0+) the control-plane charts unpacked into cluster-assets/charts.
sed "s/\"l8e-mat\"/\"$CLUSTER\"/" "$HERE/terraform/cluster.lokocfg" >"$CONFIG_DIR/cluster.lokocfg"
mkdir -p "$ASSETS/terraform" "$ASSETS/terraform-modules" \
	"$ASSETS/cluster-assets/charts/kube-system" "$ASSETS/cluster-assets/charts/lokomotive-system"
rm -rf "$ASSETS/terraform-modules/aws" "$ASSETS/terraform-modules/bootkube"
cp -r "$HERE/terraform/modules/aws" "$HERE/terraform/modules/bootkube" "$ASSETS/terraform-modules/"
sed -e "s/@CLUSTER_NAME@/$CLUSTER/g" -e "s/@API_PORT@/$API_PORT/g" \
	-e "s/@VALIDITY_HOURS@/$VALIDITY/g" -e "s/@CONTROLLER_COUNT@/$CONTROLLERS/g" \
	-e "s/@LOKOMOTIVE_VERSION@/$LOKOMOTIVE/g" -e "s/@SSH_PORT@/$SSH_PORT/g" \
	-e "s/@SSH_USER@/$SSH_USER/g" -e "s|@SSH_HOME@|$SSH_HOME|g" -e "s|@SSH_KEY_FILE@|$SSH_KEY|g" \
	-e "s|@SSH_HOST_KEY_FILE@|$SSH_HOST_KEY|g" \
	"$HERE/terraform/cluster.tf.tmpl" >"$ASSETS/terraform/cluster.tf"
for chart in kube-system/kube-apiserver:kube-apiserver kube-system/kubernetes:kubernetes \
	kube-system/kubelet:kubelet lokomotive-system/lokomotive:lokomotive; do
	dst=$ASSETS/cluster-assets/charts/${chart%%:*}
	rm -rf "$dst"
	cp -r "$HERE/charts/${chart##*:}" "$dst"
done
if [ "$LOKOMOTIVE" = v0.7 ]; then
	# v0.5-v0.7's kubelet chart: no ca-syncer init container, no kubernetesCACert
	# (the values template leaves it out for v0.7 too).
	kubelet=$ASSETS/cluster-assets/charts/kube-system/kubelet
	sed -i '/^      initContainers:$/,/^      containers:$/{/^      containers:$/!d}' "$kubelet/templates/kubelet.yaml"
	sed -i '/kubernetesCACert\|ca-syncer\|From v0.8/d' "$kubelet/values.yaml"
fi

cd "$ASSETS/terraform"
export TF_CLI_CONFIG_FILE=$CERTROTATE_TF_CLI_CONFIG TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1
# The providers are rebuilt whenever testenv's sources change, and Terraform
# pins their checksums in the lock file: start from a fresh lock.
rm -f .terraform.lock.hcl
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$TERRAFORM" init -input=false -no-color >"$log" 2>&1; then
	cat "$log" >&2
	die "terraform init failed in $ASSETS/terraform"
fi
if [ -n "$FAKE_NOW" ]; then
	export CERTROTATE_FAKE_NOW=$FAKE_NOW
fi
if ! "$TERRAFORM" apply -auto-approve -input=false -no-color >"$log" 2>&1; then
	cat "$log" >&2
	die "terraform apply failed in $ASSETS/terraform"
fi
grep -E '^Apply complete' "$log" >&2 || true
echo "make-assets: $ASSETS ready (cluster $CLUSTER, api port $API_PORT, validity ${VALIDITY}h${FAKE_NOW:+, issued at $FAKE_NOW}, Lokomotive $LOKOMOTIVE, node ssh port $SSH_PORT) in $(($(date +%s) - T0))s" >&2
