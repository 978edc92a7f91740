#!/usr/bin/env bash
# The test command of kubectl-certrotate.
#
#   scripts/test.sh [cargo test arguments]     e.g. scripts/test.sh --test env_smoke helm
#
# 1. scripts/provision.sh: the real etcd, kube-apiserver, kube-controller-manager, helm 3/4,
#    terraform providers and test binaries (cached; a warm run takes seconds);
# 2. sources the testenv.env it writes, so the tests find those programs;
# 3. cargo build --all-targets, then every test of every target (what `cargo test
#    --all-targets --no-fail-fast` runs), each test its own process, from one queue shared by
#    all test files: the longest (as the last run measured them) first, two at a time. Run by
#    file, the last slow test of each file left a core idle for minutes. With arguments
#    (`scripts/test.sh --test webhook some_name`), plain `cargo test ARGS` instead;
# 4. fails if a component process started by the tests outlived them.
#
# CERTROTATE_TEST_THREADS overrides the number of tests run at once (default 2: each test
# runs its own control plane, and this machine kind has 2 cores). Each test's output is kept
# in a log folder (printed at the end); a failing test's output is printed in full.
# CERTROTATE_TEST_ONLY=REGEX queues only the targets whose name matches (`lib`,
# `test-webhook`, `bench-rotation`, `example-demo`, ...).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T0=$(date +%s)

log() { printf 'test.sh: %s\n' "$*" >&2; }

PROVISION=$REPO/scripts/provision.sh
if [ ! -f "$PROVISION" ]; then
	log "ERROR: $PROVISION not found: the test environment cannot be provisioned"
	exit 1
fi
log "provisioning (scripts/provision.sh)"
bash "$PROVISION" >/dev/null
ENV_FILE=${CERTROTATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubectl-certrotate}/testenv.env
if [ ! -f "$ENV_FILE" ]; then
	log "ERROR: scripts/provision.sh succeeded but wrote no $ENV_FILE"
	exit 1
fi
# shellcheck disable=SC1090
. "$ENV_FILE"
T_PROVISION=$(($(date +%s) - T0))
log "environment from $ENV_FILE (provisioning took ${T_PROVISION}s)"

# Every process the tests start inherits this marker; the leftover check below looks for it,
# so that processes of anything else on the machine are never counted (nor touched).
CERTROTATE_TEST_RUN=$$-$(date +%s%N)
export CERTROTATE_TEST_RUN

THREADS=${CERTROTATE_TEST_THREADS:-2}
# Seconds each test took in the last full run, the queue's order.
DURATIONS=$(dirname "$ENV_FILE")/test-durations.tsv

# One test (or a whole target whose harness lists none) as its own process; prints one line
# and records "target::test<TAB>seconds<TAB>exit".
run_one() {
	local exe=$1 target=$2 test=$3 log rc t0 t1
	log=$LOGS/$target.$test.log
	t0=$(date +%s%N)
	if [ "$test" = '*' ]; then
		"$exe" >"$log" 2>&1
	else
		"$exe" --exact "$test" --test-threads=1 >"$log" 2>&1
	fi
	rc=$?
	t1=$(date +%s%N)
	local secs=$(((t1 - t0) / 1000000000))
	printf '%s\t%s\t%s\n' "$target::$test" "$secs" "$rc" >>"$LOGS/results"
	if [ "$rc" = 0 ]; then
		printf 'test.sh: ok      %5ss  %s::%s\n' "$secs" "$target" "$test" >&2
	else
		printf 'test.sh: FAILED  %5ss  %s::%s (exit %s)\n' "$secs" "$target" "$test" "$rc" >&2
	fi
}

run_all() {
	LOGS=$(mktemp -d "${TMPDIR:-/tmp}/certrotate-tests.XXXXXX")
	export LOGS
	export -f run_one
	# The test executables of every target, as `cargo test --all-targets` builds them.
	cargo test --no-run --all-targets --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = m["target"]["kind"][0]
        print(("lib" if kind == "lib" else kind + "-" + m["target"]["name"]) + "\t" + m["executable"])
' | grep -E "^(${CERTROTATE_TEST_ONLY:-.*})"$'\t' >"$LOGS/targets"
	local target exe listed ignored
	: >"$LOGS/jobs"
	while IFS=$'\t' read -r target exe; do
		listed=$("$exe" --list 2>/dev/null | sed -n 's/: test$//p')
		ignored=$("$exe" --list --ignored 2>/dev/null | sed -n 's/: test$//p')
		if [ -z "$listed" ]; then
			printf '%s\t%s\t*\n' "$exe" "$target" >>"$LOGS/jobs"
			continue
		fi
		while read -r test; do
			grep -qxF -- "$test" <<<"$ignored" || printf '%s\t%s\t%s\n' "$exe" "$target" "$test" >>"$LOGS/jobs"
		done <<<"$listed"
	done <"$LOGS/targets"
	log "$(wc -l <"$LOGS/jobs") tests from $(wc -l <"$LOGS/targets") targets, $THREADS at a time (logs in $LOGS)"
	# Longest first; a test the last run did not measure goes first of all.
	python3 - "$DURATIONS" "$LOGS/jobs" <<'PY' | tr '\t' '\n' | xargs -d '\n' -n 3 -P "$THREADS" bash -c 'run_one "$@"' _
import sys
known = {}
try:
    for line in open(sys.argv[1]):
        name, secs = line.rstrip("\n").split("\t")[:2]
        known[name] = int(secs)
except FileNotFoundError:
    pass
jobs = [line.rstrip("\n").split("\t") for line in open(sys.argv[2])]
jobs.sort(key=lambda j: -known.get(j[1] + "::" + j[2], 10**6))
for j in jobs:
    print("\t".join(j))
PY
	local failed=0 passed=0
	while IFS=$'\t' read -r name secs code; do
		if [ "$code" = 0 ]; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			printf '\n===== %s (exit %s) =====\n' "$name" "$code"
			cat "$LOGS/${name/::/.}.log"
		fi
	done <"$LOGS/results"
	local ran
	ran=$(wc -l <"$LOGS/results")
	if [ "$ran" != "$(wc -l <"$LOGS/jobs")" ]; then
		log "ERROR: $(wc -l <"$LOGS/jobs") tests queued, $ran reported"
		failed=$((failed + 1))
	fi
	# Keep the measured seconds for the next run's order (passed or not: a slow failure is
	# still slow).
	{
		[ -f "$DURATIONS" ] && awk -F'\t' 'NR == FNR { ran[$1] = 1; next } !($1 in ran)' "$LOGS/results" "$DURATIONS"
		cut -f1,2 "$LOGS/results"
	} >"$DURATIONS.tmp" && mv "$DURATIONS.tmp" "$DURATIONS"
	log "tests: $passed passed, $failed failed (logs in $LOGS)"
	[ "$failed" = 0 ]
}

cargo build --all-targets
set +e
if [ $# -gt 0 ]; then
	# A second `--` would turn --test-threads into a name filter that matches nothing: when
	# the arguments already pass the test binary flags, ours go after them (or not at all).
	case " $* " in
	*" --test-threads"*) cargo test --no-fail-fast "$@" ;;
	*" -- "*) cargo test --no-fail-fast "$@" --test-threads="$THREADS" ;;
	*) cargo test --no-fail-fast "$@" -- --test-threads="$THREADS" ;;
	esac
else
	run_all
fi
rc=$?
set -e

# Component processes that carry this run's marker and are still alive (comm is cut to 15
# characters: kube-controller-manager shows as kube-controller, admission-webhook as
# admission-webho).
leftovers=()
for pid in $(pgrep -x 'etcd|kube-apiserver|kube-controller|ext-apiserver|admission-webho' 2>/dev/null || true); do
	if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "CERTROTATE_TEST_RUN=$CERTROTATE_TEST_RUN"; then
		leftovers+=("$pid:$(cat "/proc/$pid/comm" 2>/dev/null || echo '?')")
	fi
done
if [ ${#leftovers[@]} -gt 0 ]; then
	log "ERROR: processes started by the tests are still running: ${leftovers[*]}"
	for entry in "${leftovers[@]}"; do
		kill -KILL "${entry%%:*}" 2>/dev/null || true
	done
	log "killed them; the harness's teardown is broken"
	rc=1
else
	log "no test component process left behind"
fi
log "done in $(($(date +%s) - T0))s (exit $rc)"
exit "$rc"
