#!/usr/bin/env bash
# The manual aggregation CA rotation of the seed's docs (certificate-rotation.md, "Rotating
# Aggregation CA private key" -> "If certificate did not expire yet", with the optional
# cleanup), its commands in the seed's order and words, for benches/rotation.rs to time next
# to `kubectl certrotate aggregation --cleanup`. Not a tool: a benchmark's stand-in for an
# operator typing the procedure.
#
#   seed-rotation.sh NAMESPACE/DEPLOYMENT...   (every extension API server's workload)
#
# Environment: what `kubectl certrotate` gets from an operator (ASSET_DIR, CONFIG_DIR,
# TERRAFORM, HELM, LOKOCTL, TF_CLI_CONFIG_FILE, the HELM_*_HOME folders), plus
#   MODULE     the bootkube module address (the seed's module.aws-l8e-mat.module.bootkube)
#   SEED_LOG   file that gets every command's output (0600; helm --debug prints the release's
#              values, private keys included, so none of it goes to stdout)
#   KUBECTL    kubectl to run (optional; else kubectl from PATH)
#
# Stdout: one `phase NAME SECONDS` line per section (backup, ca, bundle, restart, client,
# apply, cleanup) and `retried WHAT N` when a command had to be run again.
#
# Where it departs from the seed's text, and why (each also marked below):
#   - `terraform apply` gets -auto-approve: nobody is there to type "yes".
#   - `lokoctl cluster apply` gets --confirm: without it lokoctl (and its test double) asks,
#     and on no answer cancels on an existing cluster with exit code 0.
#   - lokoctl runs in $CONFIG_DIR (where the *.lokocfg is), as the seed's expired path says.
#   - the addresses carrying [0] are quoted, so no shell can take them for a glob.
#   - the cleanup restarts `deployment` kube-apiserver, not `ds`: the fixture's single
#     controller runs it as a one-replica Deployment.
#   - `kubectl rollout status` of kube-apiserver is run again when it exits because the API
#     it watches went away (kube-apiserver restarting itself), as an operator would.
#   - the extension servers' rollouts name their namespace (-n), which the seed leaves to
#     the kubeconfig's default.
set -Eeuo pipefail

: "${ASSET_DIR:?}" "${CONFIG_DIR:?}" "${TERRAFORM:?}" "${HELM:?}" "${LOKOCTL:?}" "${MODULE:?}" "${SEED_LOG:?}"
[ $# -gt 0 ] || { echo "usage: $0 NAMESPACE/DEPLOYMENT..." >&2; exit 2; }
SERVERS=("$@")

# The seed calls the programs by name; here the names resolve to the programs the operator
# environment names, as they do for kubectl certrotate.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
ln -s "$TERRAFORM" "$bin/terraform"
ln -s "$HELM" "$bin/helm"
ln -s "$LOKOCTL" "$bin/lokoctl"
if [ -n "${KUBECTL:-}" ]; then ln -s "$KUBECTL" "$bin/kubectl"; fi
export PATH=$bin:$PATH

umask 077
# fd 3: the timings (stdout); fd 4: failures (stderr); everything else to the log.
exec 3>&1 4>&2 >>"$SEED_LOG" 2>&1

SECTION=setup
T0=$(date +%s.%N)
trap 'echo "seed-rotation.sh: section $SECTION failed at line $LINENO: $BASH_COMMAND (output in $SEED_LOG)" >&4' ERR
begin() {
	SECTION=$1
	echo "=== $SECTION"
	T0=$(date +%s.%N)
}
end() {
	local t1
	t1=$(date +%s.%N)
	awk -v a="$T0" -v b="$t1" -v s="$SECTION" 'BEGIN { printf "phase %s %.3f\n", s, b - a }' >&3
}

# Runs a command until it succeeds (at most 60 times, 1 s apart); says how often it re-ran.
again() {
	local what=$1 n=0
	shift
	until "$@"; do
		n=$((n + 1))
		[ "$n" -lt 60 ] || return 1
		echo "--- $what failed, running it again ($n)"
		sleep 1
	done
	if [ "$n" -gt 0 ]; then echo "retried $what $n" >&3; fi
}

restart_extension_servers() {
	local s ns name
	for s in "${SERVERS[@]}"; do
		ns=${s%%/*} name=${s#*/}
		kubectl rollout restart deployment/"$name" -n "$ns"
		kubectl rollout status deployment/"$name" -n "$ns" --watch
	done
}

begin backup
cd $ASSET_DIR/terraform

# Backup old CA certificate.
cp ../cluster-assets/tls/aggregation-ca.crt ./aggregation-ca.crt
end

begin ca
# Re-create CA certificate with new private key.
terraform taint "$MODULE.tls_private_key.aggregation-ca[0]"
# -auto-approve: not in the seed, which expects someone to type "yes".
terraform apply -auto-approve -target $MODULE.local_file.aggregation-ca-crt
end

begin bundle
# Create a CA bundle including old and new certificate.
cat ../cluster-assets/tls/aggregation-ca.crt >> ./aggregation-ca.crt

# Make sure we speak to the right cluster.
export KUBECONFIG=$ASSET_DIR/cluster-assets/auth/kubeconfig

# Upgrade kube-apiserver to include new CA certificate.
helm upgrade -n kube-system kube-apiserver --reuse-values --set apiserver.aggregationCaCert=$(cat ./aggregation-ca.crt | base64 -w0) --wait ../cluster-assets/charts/kube-system/kube-apiserver --debug
end

begin restart
# kubectl rollout restart + kubectl rollout status --watch, for every extension API server.
restart_extension_servers
end

begin client
cd $ASSET_DIR/terraform
# Re-create client certificate.
terraform taint "$MODULE.tls_locally_signed_cert.aggregation-client[0]"
terraform apply -auto-approve -target $MODULE.local_file.aggregation-client-crt

# Make sure we speak to the right cluster.
export KUBECONFIG=$ASSET_DIR/cluster-assets/auth/kubeconfig

# Upgrade kube-apiserver to use new client certificate signed by new CA certificate.
helm upgrade -n kube-system kube-apiserver --reuse-values --set apiserver.aggregationClientCert=$(cat ../cluster-assets/tls/aggregation-client.crt | base64 -w0) --wait ../cluster-assets/charts/kube-system/kube-apiserver --debug
end

begin apply
cd $CONFIG_DIR
# --confirm: not in the seed; without it lokoctl cancels on an existing cluster.
lokoctl cluster apply --skip-pre-update-health-check --confirm
end

begin cleanup
# (Optional) Removing old extension API CA certificate from trusted bundle.
kubectl delete configmap -n kube-system extension-apiserver-authentication
# The seed says `ds`; the fixture's single controller runs a Deployment.
kubectl rollout restart deployment -n kube-system kube-apiserver
again kube-apiserver-rollout-status kubectl rollout status -w deployment -n kube-system kube-apiserver
# Finally, restart all extension API servers as explained above.
restart_extension_servers
end
