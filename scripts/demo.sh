#!/usr/bin/env bash
# Demo of kubectl-certrotate:
# 1. offline: a sample Lokomotive asset dir (RSA 2048, the files and subjects of the bootkube
#    Terraform module; the aggregation CA already expired, the admin certificate about to
#    expire) and `kubectl certrotate status` on it;
# 2. against a real cluster: a real Terraform-made asset dir, a real etcd + kube-apiserver +
#    kube-controller-manager on its PKI, the control-plane charts installed by real helm, an
#    extension API server behind an APIService; then `status` and `extension-servers`, the
#    aggregation CA rotation, the webhook certificate rotation, and last `renew` (every other
#    certificate, CA keys kept), each planned then run end to end.
# Part 2 needs the test environment: scripts/provision.sh installs it (cached; the first run
# builds Kubernetes from source, about 10-20 minutes).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
demo=$(mktemp -d)/demo

cargo build --quiet --manifest-path "$repo/Cargo.toml" --bin kubectl-certrotate --example sample-assets
export PATH="$repo/target/debug:$PATH"
"$repo/target/debug/examples/sample-assets" "$demo/assets" --expired aggregation-ca --expiring admin

echo "== 1. status of a sample asset dir (no cluster) =="
echo "\$ kubectl certrotate status --assets-dir $demo/assets"
# Through kubectl when it is installed, as an operator runs it.
if command -v kubectl >/dev/null; then runner=(kubectl certrotate); else runner=(kubectl-certrotate); fi
"${runner[@]}" status --assets-dir "$demo/assets" && code=0 || code=$?
echo "(exit code $code: 4 means something has expired or is invalid)"

echo
echo "== 2. a real local control plane =="
bash "$repo/scripts/provision.sh" >/dev/null
# shellcheck disable=SC1091
. "${CERTROTATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubectl-certrotate}/testenv.env"
cargo run --quiet --manifest-path "$repo/Cargo.toml" --example demo
