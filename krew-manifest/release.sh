#!/usr/bin/env bash
# Build, pack and describe a kubectl-certrotate release for krew.
#
#   release.sh build [--ref REF] [--out-dir DIR] [--with ARCHIVE]... [--partial] [TARGET...]
#       Export the committed tree of REF (default HEAD) and build it with
#       `cargo build --release --locked --target TARGET` for each Rust target triple (default:
#       the host's), pack each binary with LICENSE into DIR/kubectl-certrotate_<os>_<arch>.tar.gz,
#       then render DIR/certrotate.yaml from those archives and the --with ones (archives built
#       elsewhere, e.g. by a CI matrix).
#   release.sh pack --binary FILE --os OS --arch ARCH [--out-dir DIR]
#       Pack an already built binary with LICENSE; print the archive's path and sha256.
#   release.sh render [--out FILE | --out-dir DIR] [--partial] [--version X.Y.Z] [--note TEXT]...
#                     ARCHIVE...
#       Render the manifest (default DIR/certrotate.yaml) from krew-manifest/certrotate.yaml.tmpl,
#       one platform per archive, after checking that each archive holds the files krew installs.
#   release.sh targets
#       Print the supported Rust targets, their krew platform, and whether this toolchain has them.
#
# DIR defaults to dist/ in the repository. Without --partial, build and render insist on an
# archive for every platform of the template: the manifest for krew-index must cover them all.
# A toolchain only builds targets whose standard library is installed (`rustup target add`
# downloads it, which needs network access); other platforms come in as --with archives.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATE=$REPO/krew-manifest/certrotate.yaml.tmpl
PLUGIN=certrotate
BIN=kubectl-certrotate
INDEX_FILE=$PLUGIN.yaml

# Extra header lines of the rendered manifest (--note, and what build made).
NOTES=()
# Temporary folders to remove on exit.
CLEANUP=()
trap 'rm -rf ${CLEANUP[@]+"${CLEANUP[@]}"}' EXIT

die() {
	printf 'release.sh: error: %s\n' "$*" >&2
	exit 1
}
note() { printf 'release.sh: %s\n' "$*" >&2; }

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
}

# ------------------------------------------------------------------ helpers --

# The crate version from Cargo.toml's [package] table.
crate_version() {
	awk '
		/^\[/ { in_pkg = ($0 == "[package]") }
		in_pkg && $1 == "version" && $2 == "=" { gsub(/"/, "", $3); print $3; exit }
	' "${1:-$REPO/Cargo.toml}"
}

sha256_of() {
	if command -v sha256sum >/dev/null; then
		sha256sum "$1" | awk '{print $1}'
	elif command -v shasum >/dev/null; then
		shasum -a 256 "$1" | awk '{print $1}'
	else
		die "neither sha256sum nor shasum is installed"
	fi
}

# Platforms of the template, "os/arch" one per line, in template order.
template_platforms() {
	awk '$1 == "##@" && $2 == "platform" { print $3 "/" $4 }' "$TEMPLATE"
}

# Rust target triple -> krew "os arch" (Go names).
platform_of_target() {
	case $1 in
	x86_64-unknown-linux-gnu | x86_64-unknown-linux-musl) echo "linux amd64" ;;
	aarch64-unknown-linux-gnu | aarch64-unknown-linux-musl) echo "linux arm64" ;;
	x86_64-apple-darwin) echo "darwin amd64" ;;
	aarch64-apple-darwin) echo "darwin arm64" ;;
	*) return 1 ;;
	esac
}
KNOWN_TARGETS=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-apple-darwin
	aarch64-apple-darwin x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

host_target() { rustc -vV | awk '$1 == "host:" { print $2 }'; }

# Whether the active toolchain has the standard library of a target.
toolchain_has_target() {
	[[ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ]]
}

# GNU tar makes archives that are the same bytes for the same inputs.
gnu_tar() {
	local t
	for t in tar gtar; do
		if command -v "$t" >/dev/null && "$t" --version 2>/dev/null | grep -q 'GNU tar'; then
			echo "$t"
			return 0
		fi
	done
	return 1
}

# Check that a binary is built for os/arch (when `file` is there to tell).
check_binary_format() {
	local binary=$1 os=$2 arch=$3 desc want_os want_arch
	command -v file >/dev/null || {
		note "file(1) is missing: not checking that $binary is a $os/$arch binary"
		return 0
	}
	desc=$(file -bL "$binary")
	case $os in
	linux) want_os='ELF' ;;
	darwin) want_os='Mach-O' ;;
	*) die "unsupported os '$os'" ;;
	esac
	case $arch in
	amd64) want_arch='x86-64|x86_64' ;;
	arm64) want_arch='aarch64|arm64' ;;
	*) die "unsupported arch '$arch'" ;;
	esac
	if [[ $desc != *"$want_os"* ]] || ! grep -Eq "$want_arch" <<<"$desc"; then
		die "$binary is not a $os/$arch executable (file says: $desc)"
	fi
}

# ---------------------------------------------------------------- commands --

# pack BINARY OS ARCH OUT_DIR: prints the archive path on stdout.
pack() {
	local binary=$1 os=$2 arch=$3 out_dir=$4 license=${5:-$REPO/LICENSE} tar_cmd stage archive
	local epoch sum
	[[ -f $binary && -x $binary ]] || die "--binary $binary is not an executable file"
	[[ -f $license ]] || die "$license is missing: krew requires the licence in the archive"
	template_platforms | grep -qx "$os/$arch" ||
		die "platform $os/$arch is not in $TEMPLATE (it has: $(template_platforms | tr '\n' ' '))"
	check_binary_format "$binary" "$os" "$arch"
	mkdir -p "$out_dir"
	archive=$(cd "$out_dir" && pwd)/${BIN}_${os}_${arch}.tar.gz

	stage=$(mktemp -d)
	CLEANUP+=("$stage")
	install -m 0755 "$binary" "$stage/$BIN"
	install -m 0644 "$license" "$stage/LICENSE"
	# Fixed owner, order and time stamps: the archive depends on the two files only.
	epoch=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}
	if tar_cmd=$(gnu_tar); then
		"$tar_cmd" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
			--format=gnu -C "$stage" -cf - "$BIN" LICENSE | gzip -n >"$archive.tmp"
	else
		note "GNU tar not found: the archive is valid but not byte-reproducible"
		tar -C "$stage" -cf - "$BIN" LICENSE | gzip -n >"$archive.tmp"
	fi
	mv "$archive.tmp" "$archive"
	rm -rf "$stage"
	sum=$(sha256_of "$archive")
	printf '%s  %s\n' "$sum" "$(basename "$archive")" >"$archive.sha256"
	note "packed $archive ($(wc -c <"$archive" | tr -d ' ') bytes) sha256 $sum"
	echo "$archive"
}

# Check that an archive holds what the manifest's files/bin name; print "os/arch sha256".
inspect_archive() {
	local archive=$1 name os arch listing entry mode
	[[ -f $archive ]] || die "archive $archive does not exist"
	name=$(basename "$archive")
	[[ $name =~ ^${BIN}_([a-z0-9]+)_([a-z0-9]+)\.tar\.gz$ ]] ||
		die "$archive: the name must be ${BIN}_<os>_<arch>.tar.gz"
	os=${BASH_REMATCH[1]} arch=${BASH_REMATCH[2]}
	template_platforms | grep -qx "$os/$arch" ||
		die "$archive: platform $os/$arch is not in $TEMPLATE"
	listing=$(tar -tvzf "$archive") || die "$archive is not a readable .tar.gz"
	for entry in "$BIN" LICENSE; do
		mode=$(awk -v want="$entry" '{ p = $NF; sub(/^\.\//, "", p) } p == want { print $1; exit }' <<<"$listing")
		[[ -n $mode ]] || die "$archive has no $entry at its root (krew installs $BIN and LICENSE from there)"
		[[ $mode == -* ]] || die "$archive: $entry is not a regular file ($mode)"
	done
	mode=$(awk -v want="$BIN" '{ p = $NF; sub(/^\.\//, "", p) } p == want { print $1; exit }' <<<"$listing")
	[[ $mode == ???x* ]] || die "$archive: $BIN is not executable ($mode)"
	echo "$os/$arch $(sha256_of "$archive")"
}

# render OUT PARTIAL VERSION ARCHIVE...
render() {
	local out=$1 partial=$2 version=$3 archive line pairs=' ' p
	local -a missing=() have=()
	shift 3
	(($# > 0)) || die "render needs at least one archive"
	[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$ ]] ||
		die "version '$version' is not semver X.Y.Z (without the leading v)"
	# pairs: " os/arch=sha256 os/arch=sha256 ..."
	for archive in "$@"; do
		line=$(inspect_archive "$archive")
		p=${line%% *}
		[[ $pairs != *" $p="* ]] || die "two archives for $p"
		pairs+="$p=${line#* } "
	done
	while read -r p; do
		if [[ $pairs == *" $p="* ]]; then have+=("$p"); else missing+=("$p"); fi
	done < <(template_platforms)
	if ((${#missing[@]} > 0)) && [[ $partial != yes ]]; then
		die "no archive for ${missing[*]}: krew-index needs every platform (build them where the \
target is installed and pass them, or pass --partial for a manifest of fewer platforms)"
	fi

	mkdir -p "$(dirname "$out")"
	{
		echo "# krew plugin manifest of kubectl-certrotate v$version; in krew-index: plugins/$INDEX_FILE."
		echo "# Rendered by krew-manifest/release.sh from krew-manifest/certrotate.yaml.tmpl:"
		echo "# change those and render again rather than editing this file."
		if ((${#missing[@]} > 0)); then
			echo "# PARTIAL: only ${have[*]}; ${missing[*]} come from their own release archives."
		fi
		for p in ${NOTES[@]+"${NOTES[@]}"}; do echo "# $p"; done
		awk -v version="$version" -v pairs="$pairs" '
			BEGIN {
				n = split(pairs, list, " ")
				for (i = 1; i <= n; i++) { split(list[i], kv, "="); sum[kv[1]] = kv[2] }
			}
			$1 == "##@" && $2 == "platform" { in_block = 1; plat = $3 "/" $4; next }
			$1 == "##@" && $2 == "end" { in_block = 0; next }
			/^##/ { next }
			in_block && !(plat in sum) { next }
			{
				gsub(/\{\{VERSION\}\}/, version)
				if (in_block) gsub(/\{\{SHA256\}\}/, sum[plat])
				if ($0 ~ /\{\{/) { print "unrendered placeholder: " $0 > "/dev/stderr"; exit 3 }
				print
			}
		' "$TEMPLATE"
	} >"$out.tmp" || {
		rm -f "$out.tmp"
		die "rendering $TEMPLATE failed"
	}
	mv "$out.tmp" "$out"
	note "rendered $out for ${have[*]}${missing:+ (PARTIAL: without ${missing[*]})}"
	echo "$out"
}

build() {
	local out_dir=$1 partial=$2 version=$3 ref=$4 t p platform os arch bin target_dir src commit
	local start secs tree_version epoch
	shift 4
	local -a targets=() withs=() archives=() planned=()
	while (($# > 0)); do
		if [[ $1 == --with=* ]]; then withs+=("${1#--with=}"); else targets+=("$1"); fi
		shift
	done
	((${#targets[@]} > 0)) || targets=("$(host_target)")

	# Check everything before the long part.
	commit=$(git -C "$REPO" rev-parse --verify --quiet "$ref^{commit}") ||
		die "--ref $ref is not a commit of $REPO"
	for t in "${targets[@]}"; do
		platform=$(platform_of_target "$t") ||
			die "target $t has no krew platform here; known: ${KNOWN_TARGETS[*]}"
		toolchain_has_target "$t" || die "the Rust toolchain ($(rustc -V)) has no standard \
library for $t. 'rustup target add $t' would download it; without network access build \
$t where it is installed (e.g. a CI runner of that platform) and pass the archive with \
--with. Installed targets: $(rustup target list --installed 2>/dev/null | tr '\n' ' ')"
		planned+=("${platform/ //}")
	done
	for t in ${withs[@]+"${withs[@]}"}; do
		p=$(inspect_archive "$t")
		planned+=("${p%% *}")
	done
	p=$(printf '%s\n' "${planned[@]}" | sort | uniq -d | tr '\n' ' ')
	[[ -z $p ]] || die "more than one archive would be made or given for $p"
	if [[ $partial != yes ]]; then
		while read -r p; do
			printf '%s\n' "${planned[@]}" | grep -qx "$p" ||
				die "nothing would provide $p: pass its archive with --with, or --partial"
		done < <(template_platforms)
	fi

	# Build the committed tree of the ref, never the work tree with whatever it holds now.
	target_dir=$(cargo metadata --no-deps --format-version 1 --manifest-path "$REPO/Cargo.toml" |
		sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
	[[ -n $target_dir ]] || die "cannot find cargo's target directory"
	target_dir=$target_dir/krew-release
	src=$target_dir/src
	rm -rf "$src"
	mkdir -p "$src"
	git -C "$REPO" archive "$commit" | tar -x -C "$src"
	if [[ $ref == HEAD ]] && ! git -C "$REPO" diff --quiet HEAD -- 2>/dev/null; then
		note "the work tree has uncommitted changes: they are not in this build of $commit"
	fi
	tree_version=$(crate_version "$src/Cargo.toml")
	if [[ -z $version ]]; then
		version=$tree_version
	elif [[ $version != "$tree_version" ]]; then
		die "--version $version, but Cargo.toml at $ref says $tree_version"
	fi

	RUSTC_VERSION=$(rustc -V)
	export CARGO_TARGET_DIR=$target_dir
	export CERTROTATE_GIT_COMMIT=${commit:0:12}
	# The archive's time stamps are the commit's. (Not exported: the cc crate rebuilds C code
	# whenever SOURCE_DATE_EPOCH changes, which would rebuild half the dependencies per commit.)
	epoch=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct "$commit")}
	# Where the sources and the cargo home were stays out of the binary.
	export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$src=. --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
	for t in "${targets[@]}"; do
		read -r os arch <<<"$(platform_of_target "$t")"
		note "building $t ($os/$arch) of $CERTROTATE_GIT_COMMIT (v$version) with $(rustc -V)"
		start=$(date +%s)
		cargo build --release --locked --target "$t" --bin "$BIN" --manifest-path "$src/Cargo.toml"
		secs=$(($(date +%s) - start))
		bin=$target_dir/$t/release/$BIN
		note "built $bin in ${secs}s ($(wc -c <"$bin" | tr -d ' ') bytes)"
		p=$(SOURCE_DATE_EPOCH=$epoch pack "$bin" "$os" "$arch" "$out_dir" "$src/LICENSE")
		archives+=("$p")
		NOTES+=("$os/$arch: $(basename "$p") built from commit $CERTROTATE_GIT_COMMIT with ${RUSTC_VERSION}.")
	done
	archives+=(${withs[@]+"${withs[@]}"})
	render "$out_dir/$INDEX_FILE" "$partial" "$version" "${archives[@]}"
}

targets() {
	local t mark
	for t in "${KNOWN_TARGETS[@]}"; do
		if toolchain_has_target "$t"; then mark=installed; else mark='not installed'; fi
		printf '%-28s %-14s %s\n' "$t" "$(platform_of_target "$t" | tr ' ' /)" "$mark"
	done
}

# -------------------------------------------------------------------- main --

(($# > 0)) || usage
cmd=$1
shift
out_dir=$REPO/dist out='' partial=no version='' binary='' os='' arch='' ref=HEAD
args=()
while (($# > 0)); do
	case $1 in
	--out-dir) out_dir=${2:?--out-dir needs a value}; shift 2 ;;
	--out) out=${2:?--out needs a value}; shift 2 ;;
	--partial) partial=yes; shift ;;
	--version) version=${2:?--version needs a value}; version=${version#v}; shift 2 ;;
	--binary) binary=${2:?--binary needs a value}; shift 2 ;;
	--os) os=${2:?--os needs a value}; shift 2 ;;
	--arch) arch=${2:?--arch needs a value}; shift 2 ;;
	--ref) ref=${2:?--ref needs a value}; shift 2 ;;
	--note) NOTES+=("${2:?--note needs a text}"); shift 2 ;;
	--with) args+=("--with=${2:?--with needs an archive}"); shift 2 ;;
	-h | --help) usage ;;
	-*) die "unknown option $1 (see release.sh --help)" ;;
	*) args+=("$1"); shift ;;
	esac
done
if [[ -z $version && $cmd != build ]]; then
	version=$(crate_version)
	[[ -n $version ]] || die "cannot read the version from $REPO/Cargo.toml"
fi

case $cmd in
build) build "$out_dir" "$partial" "$version" "$ref" ${args[@]+"${args[@]}"} ;;
pack)
	[[ -n $binary && -n $os && -n $arch ]] || die "pack needs --binary, --os and --arch"
	((${#args[@]} == 0)) || die "pack takes no other arguments"
	pack "$binary" "$os" "$arch" "$out_dir"
	;;
render) render "${out:-$out_dir/$INDEX_FILE}" "$partial" "$version" ${args[@]+"${args[@]}"} ;;
targets) targets ;;
-h | --help | help) usage ;;
*) die "unknown command '$cmd' (build, pack, render, targets)" ;;
esac
