#!/usr/bin/env bash
# Benchmark: `kubectl certrotate status -o json` against
# - the loop an operator would type, `for f in …; do openssl x509 -noout -enddate -in "$f"; done`,
#   on one asset dir and on a fleet (FLEET_SIZE, default 200);
# - the floor: a bare in-process parse of the same certificate files (examples/bare-parse.rs:
#   one process, OpenSSL as `status` uses it, every *.crt parsed and nothing else), on 1, 20
#   and FLEET_SIZE asset dirs.
# Prints wall time, CPU time (user + system) and peak memory. Not a test: it asserts nothing.
#
# Usage: scripts/bench-status.sh [FLEET_SIZE]   (default 200)
set -euo pipefail

fleet_size=${1:-200}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "building release binaries..."
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" --bin kubectl-certrotate \
  --example sample-assets --example bare-parse
bin="$repo/target/release/kubectl-certrotate"
bare="$repo/target/release/examples/bare-parse"

# One realistic asset dir (RSA 2048, Lokomotive's files), then copies: parsing cost does not
# depend on whether the keys differ, and generating 200 x 13 RSA keys would dominate the run.
"$repo/target/release/examples/sample-assets" "$work/one/assets" --expiring admin >/dev/null
for i in $(seq -w 1 "$fleet_size"); do
  mkdir -p "$work/fleet/c$i"
  cp -r "$work/one/assets" "$work/fleet/c$i/assets"
done
for i in $(seq -w 1 20); do
  mkdir -p "$work/twenty/c$i"
  cp -r "$work/one/assets" "$work/twenty/c$i/assets"
done
certs_one=$(find "$work/one/assets" -name '*.crt' | wc -l)

# Runs a command 'runs' times; prints the medians of the wall time (s) and of the CPU time of
# the process, user + system (s), the peak RSS (MB), and the median of what the command
# reports as "parsed in S s" (bare-parse's in-process time; 0 for other commands).
measure() {
  local runs=$1
  shift
  python3 - "$runs" "$@" <<'PY'
import os, re, statistics, subprocess, sys, time
runs = int(sys.argv[1]); cmd = sys.argv[2:]
walls, cpus, inside, peak = [], [], [], 0
for _ in range(runs):
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = child.stdout.read()
    _, _, usage = os.wait4(child.pid, 0)
    walls.append(time.perf_counter() - start)
    cpus.append(usage.ru_utime + usage.ru_stime)
    peak = max(peak, usage.ru_maxrss / 1024)
    found = re.search(rb"parsed in ([0-9.]+) s", out)
    inside.append(float(found.group(1)) if found else 0.0)
print(f"{statistics.median(walls):.4f} {statistics.median(cpus):.4f} {peak:.1f} {statistics.median(inside):.4f}")
PY
}

openssl_loop='for f in $(find "$1" -name "*.crt"); do openssl x509 -noout -enddate -in "$f"; done'

# No kubeconfig anywhere: status reports the local rows and says the cluster was not reached,
# which is what the openssl loop and the bare parse cover.
export HOME="$work"
unset KUBECONFIG ASSET_DIR

read -r t_tool_1 c_tool_1 m_tool_1 _ < <(measure 20 "$bin" status -o json --assets-dir "$work/one/assets")
read -r t_bare_1 c_bare_1 _ i_bare_1 < <(measure 20 "$bare" "$work/one/assets")
read -r t_loop_1 _ _ _ < <(measure 5 bash -c "$openssl_loop" _ "$work/one/assets")
read -r t_tool_20 c_tool_20 m_tool_20 _ < <(measure 20 "$bin" status -o json --assets-dir "$work/twenty/*/assets")
read -r t_bare_20 c_bare_20 _ i_bare_20 < <(measure 20 "$bare" "$work/twenty")
read -r t_tool_n c_tool_n m_tool_n _ < <(measure 5 "$bin" status -o json --assets-dir "$work/fleet/*/assets")
read -r t_bare_n c_bare_n _ i_bare_n < <(measure 5 "$bare" "$work/fleet")
read -r t_loop_n _ _ _ < <(measure 1 bash -c "$openssl_loop" _ "$work/fleet")

ratio() { python3 -c "print(f'{$1 / $2:.1f}x')"; }
echo
echo "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $certs_one .crt files per asset dir;"
echo "status also checks keys, chains, the webhook certificate in lokomotive.yaml, the"
echo "service-account pair and the rotation journals"
echo
echo "kubectl certrotate status vs. the openssl loop (wall time)"
printf '%-16s %14s %14s %10s %16s\n' "case" "status -o json" "openssl loop" "speed-up" "status peak RSS"
printf '%-16s %13.3fs %13.3fs %10s %13.1f MB\n' "1 asset dir" "$t_tool_1" "$t_loop_1" "$(ratio "$t_loop_1" "$t_tool_1")" "$m_tool_1"
printf '%-16s %13.3fs %13.3fs %10s %13.1f MB\n' "$fleet_size asset dirs" "$t_tool_n" "$t_loop_n" "$(ratio "$t_loop_n" "$t_tool_n")" "$m_tool_n"
echo
echo "kubectl certrotate status vs. a bare in-process parse of the same .crt files (bare-parse:"
echo "its parse loop's time inside the process, and its whole process)"
printf '%-16s %12s %11s %13s %13s %13s %11s\n' "case" "status wall" "status CPU" "parse inside" "bare wall" "bare CPU" "status wall"
printf '%-16s %12s %11s %13s %13s %13s %11s\n' "" "" "" "the process" "" "" "/ inside"
for n in 1 20 n; do
  eval "tw=\$t_tool_$n tc=\$c_tool_$n bi=\$i_bare_$n bw=\$t_bare_$n bc=\$c_bare_$n"
  label="$n asset dirs"
  [ "$n" = 1 ] && label="1 asset dir"
  [ "$n" = n ] && label="$fleet_size asset dirs"
  printf '%-16s %11.3fs %10.3fs %12.3fs %12.3fs %12.3fs %11s\n' "$label" "$tw" "$tc" "$bi" "$bw" "$bc" "$(ratio "$tw" "$bi")"
done
