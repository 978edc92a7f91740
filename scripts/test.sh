#!/usr/bin/env bash
# The test command of kubectl-certrotate.
#
#   scripts/test.sh [cargo test arguments]     e.g. scripts/test.sh --test env_smoke helm
#
# 1. scripts/provision.sh: the real etcd, kube-apiserver, kube-controller-manager, helm 3/4,
#    terraform providers and test binaries (cached; a warm run takes seconds);
# 2. sources the testenv.env it writes, so the tests find those programs;
# 3. cargo build --all-targets, then cargo test --no-fail-fast --all-targets (or the given
#    arguments) with plain libtest, whose threads let the tests of one file run side by side;
# 4. fails if a component process started by the tests outlived them.
#
# CERTROTATE_TEST_THREADS overrides the number of tests run at once (default 2: each test
# runs its own control plane, and this machine kind has 2 cores).
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
if [ $# -gt 0 ]; then
	TEST_ARGS=("$@")
else
	TEST_ARGS=(--all-targets)
fi

cargo build --all-targets
set +e
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --no-fail-fast "${TEST_ARGS[@]}" -- --test-threads="$THREADS"
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
