#!/usr/bin/env bash
# Build baton's .deb and .rpm. See packaging/README.md.
#
#   packaging/dist.sh [--version X] [--deb-only]
#
# Prints the paths of the packages it made (one per line, on stdout; progress goes to stderr).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: packaging/dist.sh [--version X] [--deb-only]

Builds target/release/baton, the man page and completions (target/assets/), then
target/debian/baton_<version>-1_<arch>.deb and target/generate-rpm/baton-<version>-1.<arch>.rpm,
and prints their paths.

  --version X   package version X instead of Cargo.toml's (e.g. to test upgrades);
                digits, letters, '.', '+', '~' (no '-': the package revision is 1)
  --deb-only    build only the .deb
EOF
}

version=""
deb_only=false
while [ $# -gt 0 ]; do
    case "$1" in
        --version) [ $# -ge 2 ] || { usage >&2; exit 2; }; version=$2; shift 2 ;;
        --version=*) version=${1#--version=}; shift ;;
        --deb-only) deb_only=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "dist.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ -n "$version" ] && ! [[ "$version" =~ ^[0-9][0-9A-Za-z.+~]*$ ]]; then
    echo "dist.sh: --version $version: use digits, letters, '.', '+' and '~', starting with a digit (no '-')" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
umask 022
say() { echo "dist.sh: $*" >&2; }
die() { echo "dist.sh: error: $*" >&2; exit 1; }

# Cargo subcommands, installed when missing. The versions are those this packaging was written
# and checked against (asset syntax, `dir = true` for directories in the .rpm).
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
ensure_tool() { # subcommand crate version
    if cargo "$1" --version >/dev/null 2>&1; then
        return
    fi
    say "installing $2 $3 (cargo install --locked)"
    # Not in the project's target directory: its lock would serialize with project builds.
    env -u CARGO_TARGET_DIR cargo install --locked "$2@$3" >&2
}
ensure_tool deb cargo-deb "$CARGO_DEB_VERSION"
$deb_only || ensure_tool generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

say "cargo build --release --locked"
cargo build --release --locked >&2

target_dir=${CARGO_TARGET_DIR:-target}
baton="$target_dir/release/baton"
[ -x "$baton" ] || die "$baton was not built"

# The man page and the shell completions come from the binary's own clap definitions.
assets=target/assets
if ! "$baton" generate-assets --help >/dev/null 2>&1; then
    die "$baton has no 'generate-assets' subcommand, which writes the man page and the shell
completions (DIR/baton.1, DIR/completions/{baton.bash,_baton,baton.fish}); it is defined in src/cli.rs"
fi
rm -rf "$assets"
mkdir -p "$assets"
say "$baton generate-assets --out $assets"
"$baton" generate-assets --out "$assets" >&2
for f in baton.1 baton-run.1 baton-restart.1 baton.toml.5 completions/baton.bash completions/_baton completions/baton.fish; do
    [ -s "$assets/$f" ] || die "baton generate-assets did not write $assets/$f"
done
# Every man page it wrote (baton.1, baton-<command>.1, baton.toml.5), gzipped.
mkdir -p "$assets/man"
for page in "$assets"/*.1 "$assets"/*.5; do
    gzip -9 -n -c "$page" > "$assets/man/${page##*/}.gz"
done
# cargo-deb strips the binary it packages; cargo-generate-rpm does not, so the .rpm gets this copy.
if command -v strip >/dev/null 2>&1; then
    strip --strip-all -o "$assets/baton" "$baton"
else
    say "warning: no strip(1); the .rpm gets an unstripped binary"
    cp "$baton" "$assets/baton"
fi

# .deb
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb is needed to add /etc/baton/ to the .deb (apt-get install dpkg)"
debian_dir="$target_dir/debian"
work=$(mktemp -d "${TMPDIR:-/tmp}/baton-dist.XXXXXX")
mkdir -p "$debian_dir" "$work/keep" "$work/deb"
# cargo-deb deletes every baton_*.deb in $debian_dir, other versions too: keep them (say, the
# old version of an upgrade test) aside meanwhile.
restore() {
    local f
    for f in "$work"/keep/*.deb; do
        if [ -f "$f" ] && [ ! -e "$debian_dir/${f##*/}" ]; then mv "$f" "$debian_dir/"; fi
    done
    rm -rf "$work"
}
trap restore EXIT
find "$debian_dir" -maxdepth 1 -name 'baton_*.deb' -exec mv -t "$work/keep" {} +
deb_args=(--no-build --locked --output "$work/deb/")
[ -z "$version" ] || deb_args+=(--deb-version "$version-1")
say "cargo deb ${deb_args[*]}"
built=$(cargo deb "${deb_args[@]}" | tail -n 1)
[ -f "$built" ] || die "cargo deb did not report the .deb it wrote (got: '$built')"
# cargo-deb leaves its stripped copy of the binary in its work directory, $target_dir/baton/.
rm -f "$target_dir"/baton/baton.stripped-*.tmp
rmdir "$target_dir/baton" 2>/dev/null || true

# cargo-deb cannot package an empty directory: add /etc/baton/ (owned by the package, where the
# operators' configs go) by unpacking and repacking the .deb with dpkg-deb.
dpkg-deb --raw-extract "$built" "$work/root"
install -d -m 0755 "$work/root/etc/baton"
touch -r "$work/root/usr" "$work/root" "$work/root/etc" "$work/root/etc/baton"
# md5sums, as packages built by debhelper have them (`dpkg --verify baton`).
(cd "$work/root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) > "$work/root/DEBIAN/md5sums"
chmod 0644 "$work/root/DEBIAN/md5sums"
deb="$debian_dir/${built##*/}"
rm -f "$work/keep/${built##*/}"
dpkg-deb --root-owner-group -Zxz --build "$work/root" "$deb" >/dev/null
echo "$deb"

# .rpm
if ! $deb_only; then
    rpm_args=(--payload-compress xz)
    [ -z "$version" ] || rpm_args+=(--set-metadata "version = \"$version\"")
    rpm_out="$work/rpm"
    mkdir -p "$rpm_out" "$target_dir/generate-rpm"
    say "cargo generate-rpm ${rpm_args[*]}"
    cargo generate-rpm "${rpm_args[@]}" --output "$rpm_out/" >&2
    made=("$rpm_out"/*.rpm)
    if [ ${#made[@]} -ne 1 ] || [ ! -f "${made[0]}" ]; then
        die "cargo generate-rpm wrote no .rpm"
    fi
    rpm="$target_dir/generate-rpm/${made[0]##*/}"
    mv -f "${made[0]}" "$rpm"
    echo "$rpm"
fi
