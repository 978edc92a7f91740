#!/usr/bin/env bash
# Demo: build the plugin, write a sample Lokomotive asset dir (RSA 2048, the files and subjects
# of the bootkube Terraform module, the aggregation CA already expired and the admin
# certificate about to expire), and show `kubectl certrotate status` on it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
demo=${1:-$(mktemp -d)/demo}

cargo build --quiet --manifest-path "$repo/Cargo.toml" --bin kubectl-certrotate --example sample-assets
export PATH="$repo/target/debug:$PATH"
"$repo/target/debug/examples/sample-assets" "$demo/assets" --expired aggregation-ca --expiring admin

run() {
  echo
  echo "\$ $*"
  "$@" && code=0 || code=$?
  echo "(exit code $code)"
}
# Through kubectl when it is installed, as an operator runs it; the plugin binary otherwise.
if command -v kubectl >/dev/null; then
  run kubectl certrotate status --assets-dir "$demo/assets"
else
  run kubectl-certrotate status --assets-dir "$demo/assets"
fi
# A narrower window: the admin certificate no longer counts as expiring.
run kubectl-certrotate status --assets-dir "$demo/assets" --local --expiring-within 1d
echo
echo "JSON (docs/status-json.md): kubectl certrotate status --assets-dir $demo/assets -o json"
