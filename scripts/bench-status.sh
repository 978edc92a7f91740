#!/usr/bin/env bash
# Benchmark: `kubectl certrotate status -o json` against the loop an operator would type,
# `for f in …; do openssl x509 -noout -enddate -in "$f"; done`, on one asset dir and on a
# fleet of 200. Prints wall time and peak memory side by side. Not a test: it asserts nothing.
#
# Usage: scripts/bench-status.sh [FLEET_SIZE]   (default 200)
set -euo pipefail

fleet_size=${1:-200}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "building release binaries..."
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" --bin kubectl-certrotate --example sample-assets
bin="$repo/target/release/kubectl-certrotate"

# One realistic asset dir (RSA 2048, Lokomotive's files), then copies: parsing cost does not
# depend on whether the keys differ, and generating 200 x 13 RSA keys would dominate the run.
"$repo/target/release/examples/sample-assets" "$work/one/assets" --expiring admin >/dev/null
for i in $(seq -w 1 "$fleet_size"); do
  mkdir -p "$work/fleet/c$i"
  cp -r "$work/one/assets" "$work/fleet/c$i/assets"
done
certs_one=$(find "$work/one/assets" -name '*.crt' | wc -l)

# Runs a command 'runs' times; prints the median wall time (s) and the peak RSS (MB).
measure() {
  local runs=$1
  shift
  python3 - "$runs" "$@" <<'PY'
import resource, statistics, subprocess, sys, time
runs = int(sys.argv[1]); cmd = sys.argv[2:]
times = []
for _ in range(runs):
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times.append(time.perf_counter() - start)
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{statistics.median(times):.4f} {peak_mb:.1f}")
PY
}

openssl_loop='for f in $(find "$1" -name "*.crt"); do openssl x509 -noout -enddate -in "$f"; done'

# No kubeconfig anywhere: status reports the local rows and says the cluster was not reached,
# which is what the openssl loop covers.
export HOME="$work"
unset KUBECONFIG ASSET_DIR

read -r t_tool_1 m_tool_1 < <(measure 10 "$bin" status -o json --assets-dir "$work/one/assets")
read -r t_loop_1 m_loop_1 < <(measure 5 bash -c "$openssl_loop" _ "$work/one/assets")
read -r t_tool_n m_tool_n < <(measure 3 "$bin" status -o json --assets-dir "$work/fleet/*/assets")
read -r t_loop_n m_loop_n < <(measure 1 bash -c "$openssl_loop" _ "$work/fleet")

ratio() { python3 -c "print(f'{$1 / $2:.0f}x')"; }
echo
echo "kubectl certrotate status vs. the openssl loop ($(nproc) cores; $certs_one .crt files per asset dir;"
echo "status also checks keys, chains, the webhook certificate in lokomotive.yaml and the service-account pair)"
printf '%-26s %14s %14s %10s %16s\n' "case" "status -o json" "openssl loop" "speed-up" "status peak RSS"
printf '%-26s %13.3fs %13.3fs %10s %13.1f MB\n' "1 asset dir" "$t_tool_1" "$t_loop_1" "$(ratio "$t_loop_1" "$t_tool_1")" "$m_tool_1"
printf '%-26s %13.3fs %13.3fs %10s %13.1f MB\n' "$fleet_size asset dirs" "$t_tool_n" "$t_loop_n" "$(ratio "$t_loop_n" "$t_tool_n")" "$m_tool_n"
