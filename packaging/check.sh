#!/usr/bin/env bash
# Check the .deb and the .rpm that packaging/dist.sh built, without systemd. See packaging/README.md.
#
#   packaging/check.sh [--deb FILE] [--rpm FILE] [--deb-only]
#
# Without --deb/--rpm it checks the packages of Cargo.toml's version in target/debian/ and
# target/generate-rpm/. Prints one line per check; exits non-zero when any check failed.
# Needs dpkg-deb (and rpm unless --deb-only); uses journalctl, shellcheck, bash/zsh/fish and
# unshare when present (a check whose tool is missing is reported as SKIP, not as a failure).
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin   # chroot, and rpm's helpers, live there on some systems

# ---------------------------------------------------------------------------------------------
# The scriptlet tests run in a mount (and user) namespace of their own, in a chroot whose /etc
# and /run are scratch directories and whose systemctl and journalctl are stubs that log their
# arguments: packaging/check.sh re-executes itself there with --scriptlets-inner.
# ---------------------------------------------------------------------------------------------
if [ "${1:-}" = "--scriptlets-inner" ]; then
    scripts=$2   # holds deb/{postinst,prerm,postrm} and/or rpm/{pre,post,preun,postun,posttrans}
    failed=0
    fail() { echo "FAIL: scriptlets: $*"; failed=1; }
    root=$(mktemp -d "${TMPDIR:-/tmp}/baton-scriptlets.XXXXXX")
    # A root with the host's programs (read-only) and scratch /etc, /run and /dev/null. Its
    # /usr/bin holds links to the host's programs (in /.hostbin) and a stub /usr/bin/baton.
    bind_ro() { # from to
        mkdir -p "$2"
        # Read-only: the scripts rmdir /usr/share/doc/baton, which must not touch the host's.
        if ! mount --rbind "$1" "$2" || ! mount -o remount,bind,ro "$2"; then
            echo "SKIP: scriptlet behaviour: cannot bind-mount $1 read-only here"
            exit 0
        fi
    }
    copy_entry() { # path-on-host path-in-root
        if [ -L "$1" ]; then ln -s "$(readlink "$1")" "$2"
        elif [ -d "$1" ]; then bind_ro "$1" "$2"
        fi
    }
    for d in bin sbin lib lib32 lib64 libx32; do copy_entry "/$d" "$root/$d"; done
    mkdir "$root/usr"
    for e in /usr/*; do
        [ "$e" = /usr/bin ] || copy_entry "$e" "$root$e"
    done
    bind_ro /usr/bin "$root/.hostbin"
    mkdir "$root/usr/bin"
    hostbin=(/usr/bin/*)
    ln -s -t "$root/usr/bin" "${hostbin[@]/#\/usr\/bin\///.hostbin/}"
    rm -f "$root/usr/bin/baton"
    # baton check-config --config FILE: rejects a config that says "bad".
    cat > "$root/usr/bin/baton" <<'STUB'
#!/bin/sh
echo "baton $*" >> /log
if grep -q bad "$3"; then echo "$3:1:1: bad" >&2; exit 1; fi
echo "$3: OK"
STUB
    chmod 755 "$root/usr/bin/baton"
    mkdir -p "$root/etc/systemd/system" "$root/run" "$root/dev" "$root/tmp" "$root/stub" "$root/scripts"
    touch "$root/dev/null"
    mount --bind /dev/null "$root/dev/null"
    for f in /etc/alternatives /etc/ld.so.cache /etc/ld.so.conf /etc/ld.so.conf.d; do
        [ -e "$f" ] || continue
        if [ -d "$f" ]; then mkdir -p "$root$f"; else touch "$root$f"; fi
        mount --bind "$f" "$root$f"
    done
    cp -r "$scripts"/. "$root/scripts/"

    # systemctl: logs its arguments; list-units and is-active answer from /units
    # ("<unit> <active-state> <sub-state>" per line); everything else succeeds and does nothing.
    cat > "$root/stub/systemctl" <<'STUB'
#!/bin/sh
echo "systemctl $*" >> /log
cmd= all=false type= pats=
for a in "$@"; do
    case $a in
        --all) all=true ;;
        --type=*) type=${a#--type=} ;;
        -*) ;;
        *) if [ -z "$cmd" ]; then cmd=$a; else pats="$pats $a"; fi ;;
    esac
done
case $cmd in
    list-units)
        set -f
        while read -r unit active sub; do
            if [ -n "$type" ]; then case $unit in *."$type") ;; *) continue ;; esac; fi
            if ! $all && [ "$active" = inactive ]; then continue; fi
            hit=false
            for p in $pats; do case $unit in $p) hit=true ;; esac; done
            if [ -n "$pats" ] && ! $hit; then continue; fi
            echo "$unit loaded $active $sub stub"
        done < /units
        ;;
    is-active)
        for u in $pats; do grep -q "^$u active " /units && exit 0; done
        exit 3
        ;;
esac
exit 0
STUB
    printf '#!/bin/sh\necho "journalctl $*" >> /log\n' > "$root/stub/journalctl"
    chmod 755 "$root/stub/systemctl" "$root/stub/journalctl"

    # A host with baton apps: shop (running), cart (running, with a config the new version
    # rejects), blog (stopped), api (failed).
    reset_system() {
        rm -rf "$root/etc/systemd/system" "$root/etc/baton" "$root/run"
        mkdir -p "$root/run/systemd/system" "$root/etc/systemd/system" "$root/etc/baton"
        echo 'name = "shop"' > "$root/etc/baton/shop.toml"
        echo 'name = "cart" # bad' > "$root/etc/baton/cart.toml"
        cat > "$root/units" <<'UNITS'
baton@shop.service active running
baton@cart.service active running
baton@cart.socket active listening
baton@shop.socket active listening
baton@blog.service inactive dead
baton@blog.socket active listening
baton@api.service failed failed
baton@api.socket active listening
baton-restart@shop.path active waiting
baton-restart@shop.service inactive dead
nginx.service active running
UNITS
        local e=$root/etc/systemd/system
        mkdir -p "$e/multi-user.target.wants" "$e/sockets.target.wants" "$e/paths.target.wants"
        ln -s /usr/lib/systemd/system/baton@.service "$e/multi-user.target.wants/baton@shop.service"
        ln -s /usr/lib/systemd/system/baton@.socket "$e/sockets.target.wants/baton@shop.socket"
        ln -s /usr/lib/systemd/system/baton@.socket "$e/sockets.target.wants/baton@blog.socket"
        ln -s /usr/lib/systemd/system/baton-restart@.path "$e/paths.target.wants/baton-restart@shop.path"
        ln -s /usr/lib/systemd/system/nginx.service "$e/multi-user.target.wants/nginx.service"
    }
    no_systemd() { rm -rf "$root/run/systemd"; }
    step=""
    run() { # script args...: run one package script in the chroot, as dpkg/rpm would
        step="$*"
        : > "$root/log"
        if ! chroot "$root" /usr/bin/env -i PATH=/stub:/usr/sbin:/usr/bin:/sbin:/bin \
                /bin/sh "/scripts/$1" "${@:2}" > "$root/out" 2>&1; then
            fail "'$step' exited non-zero: $(cat "$root/out")"
        fi
    }
    logged() { grep -Eq -- "$1" "$root/log" || fail "'$step' did not run: $1 (it ran: $(tr '\n' ';' < "$root/log"))"; }
    not_logged() { ! grep -Eq -- "$1" "$root/log" || fail "'$step' ran: $(grep -E -- "$1" "$root/log" | tr '\n' ';')"; }
    link_exists() { [ -L "$root/etc/systemd/system/$1" ] || fail "'$step' removed /etc/systemd/system/$1"; }
    link_gone() { [ ! -L "$root/etc/systemd/system/$1" ] || fail "'$step' left /etc/systemd/system/$1"; }
    baton_links="multi-user.target.wants/baton@shop.service sockets.target.wants/baton@shop.socket
        sockets.target.wants/baton@blog.socket paths.target.wants/baton-restart@shop.path"
    # On upgrade: restart the running services, and only them.
    upgrade_restarts_only_services() {
        logged '^systemctl daemon-reload'
        logged '^systemctl try-restart baton@shop\.service$'
        logged '^baton check-config --config /etc/baton/shop\.toml$'
        logged '^baton check-config --config /etc/baton/cart\.toml$'
        not_logged 'restart .*baton@(blog|api|cart)\.service'
        grep -q 'not restarting baton@cart.service' "$root/out" || fail "'$step' did not say why cart was not restarted"
        not_logged '^systemctl (start|stop|restart|reload|reload-or-restart|disable|enable|kill)'
        not_logged '\.socket|\.path'
    }
    quiet_on_upgrade() { not_logged '^systemctl (start|stop|restart|try-restart|disable|enable|kill)'; }

    if [ -d "$root/scripts/deb" ]; then
        # first install
        reset_system
        run deb/postinst configure
        logged '^journalctl --update-catalog'; logged '^systemctl daemon-reload'
        not_logged 'restart|stop|disable'
        # upgrade from 0.1.0-1
        reset_system
        run deb/prerm upgrade 0.2.0-1; quiet_on_upgrade
        run deb/postrm upgrade 0.2.0-1; quiet_on_upgrade
        run deb/postinst configure 0.1.0-1; upgrade_restarts_only_services
        # remove, then purge
        reset_system
        run deb/prerm remove
        logged '^systemctl stop baton-restart@\*\.path'
        logged '^systemctl stop .*baton@\*\.service'; logged '^systemctl stop .*baton@\*\.socket'
        not_logged 'restart baton|disable'
        run deb/postrm remove
        logged '^systemctl daemon-reload'; logged '^journalctl --update-catalog'; not_logged 'disable'
        for l in $baton_links; do link_exists "$l"; done
        run deb/postrm purge
        logged '^systemctl --no-reload disable .*baton@shop\.service'
        logged '^systemctl --no-reload disable .*baton@shop\.socket'
        logged '^systemctl --no-reload disable .*baton@blog\.socket'
        logged '^systemctl --no-reload disable .*baton-restart@shop\.path'
        not_logged 'nginx'
        for l in $baton_links; do link_gone "$l"; done
        link_exists multi-user.target.wants/nginx.service
        # without a running systemd (a chroot, an image build)
        reset_system; no_systemd
        run deb/postinst configure 0.1.0-1; not_logged '^systemctl'
        run deb/prerm remove; not_logged '^systemctl'
        run deb/postrm remove; not_logged '^systemctl'
        run deb/postrm purge; not_logged '^systemctl (stop|daemon-reload)'
        for l in $baton_links; do link_gone "$l"; done
        [ "$failed" = 0 ] && echo "ok: .deb scripts: install, upgrade (try-restart of running baton@*.service only), remove, purge, no systemd"
    fi

    if [ -d "$root/scripts/rpm" ]; then
        marker=$root/run/baton-rpm-upgrade
        # first install
        reset_system; rm -rf "$root/etc/baton"
        run rpm/pre.sh 1; [ ! -e "$marker" ] || fail "%pre 1 marked an upgrade"
        run rpm/post.sh 1
        logged '^journalctl --update-catalog'; logged '^systemctl daemon-reload'
        [ -d "$root/etc/baton" ] || fail "%post did not make /etc/baton"
        run rpm/posttrans.sh; not_logged '^systemctl'
        # upgrade: the new package's %pre and %post, the old one's %preun and %postun, %posttrans
        reset_system
        run rpm/pre.sh 2; [ -e "$marker" ] || fail "%pre 2 did not mark the upgrade"
        run rpm/post.sh 2; quiet_on_upgrade
        run rpm/preun.sh 1; quiet_on_upgrade; not_logged '^systemctl'
        run rpm/postun.sh 1; quiet_on_upgrade
        [ -d "$root/etc/baton" ] || fail "%postun 1 removed /etc/baton"
        run rpm/posttrans.sh; upgrade_restarts_only_services
        [ ! -e "$marker" ] || fail "%posttrans left $marker"
        run rpm/posttrans.sh; not_logged '^systemctl'
        # erase (an operator's config in /etc/baton is kept)
        reset_system
        run rpm/preun.sh 0
        logged '^systemctl stop baton-restart@\*\.path'
        logged '^systemctl stop .*baton@\*\.service'; logged '^systemctl stop .*baton@\*\.socket'
        logged '^systemctl --no-reload disable .*baton@shop\.service'
        logged '^systemctl --no-reload disable .*baton@blog\.socket'
        logged '^systemctl --no-reload disable .*baton-restart@shop\.path'
        not_logged 'nginx'
        run rpm/postun.sh 0
        logged '^systemctl daemon-reload'; logged '^journalctl --update-catalog'
        for l in $baton_links; do link_gone "$l"; done
        link_exists multi-user.target.wants/nginx.service
        [ -f "$root/etc/baton/shop.toml" ] || fail "%postun 0 removed the operator's /etc/baton/shop.toml"
        # erase without configs: /etc/baton goes too
        reset_system; rm -f "$root"/etc/baton/*
        run rpm/preun.sh 0; run rpm/postun.sh 0
        [ ! -d "$root/etc/baton" ] || fail "%postun 0 left an empty /etc/baton"
        # without a running systemd
        reset_system; no_systemd
        run rpm/pre.sh 2; [ ! -e "$marker" ] || fail "%pre 2 marked an upgrade without systemd"
        run rpm/post.sh 2; not_logged '^systemctl'
        run rpm/posttrans.sh; not_logged '^systemctl'
        run rpm/preun.sh 0; not_logged '^systemctl (stop|daemon-reload)'
        run rpm/postun.sh 0; not_logged '^systemctl'
        for l in $baton_links; do link_gone "$l"; done
        [ "$failed" = 0 ] && echo "ok: .rpm scriptlets: install, upgrade (try-restart of running baton@*.service only), erase, no systemd"
    fi
    exit "$failed"
fi

# ---------------------------------------------------------------------------------------------
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
deb="" rpm="" deb_only=false
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) deb=$2; shift 2 ;;
        --rpm) rpm=$2; shift 2 ;;
        --deb-only) deb_only=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "check.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }
skip() { echo "SKIP: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }
# One file matching a glob, else a failure.
one() {
    local -a m
    mapfile -t m < <(compgen -G "$1" || true)
    if [ ${#m[@]} -ne 1 ]; then
        echo "check.sh: expected one file matching $1, found ${#m[@]}: ${m[*]:-none} (run packaging/dist.sh)" >&2
        return 1
    fi
    echo "${m[0]}"
}

target_dir=${CARGO_TARGET_DIR:-target}
version=$(awk -F'"' '/^\[/ { p = ($0 == "[package]") } p && /^version *=/ { print $2; exit }' Cargo.toml)
[ -n "$deb" ] || deb=$(one "$target_dir/debian/baton_${version}-1_*.deb") || exit 1
if ! $deb_only && [ -z "$rpm" ]; then
    rpm=$(one "$target_dir/generate-rpm/baton-${version}-1.*.rpm") || exit 1
fi
have dpkg-deb || { echo "check.sh: dpkg-deb is needed" >&2; exit 1; }
[ -z "$rpm" ] || have rpm || { echo "check.sh: rpm is needed (apt-get install rpm), or pass --deb-only" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/baton-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
as_root() { # run as (possibly fake) root, for rpm --root installs
    if [ "$(id -u)" = 0 ]; then "$@"; else unshare --user --map-root-user "$@"; fi
}

units=()
for u in units/*; do units+=("${u#units/}"); done
# path -> mode; the completions' paths differ between the distributions.
common_files=(
    "usr/bin/baton 755"
    "usr/lib/systemd/catalog/baton.catalog 644"
    "usr/share/doc/baton/examples/example.toml 644"
    "etc/logrotate.d/baton 644"
    "usr/share/doc/baton/README.md 644"
    "usr/share/man/man1/baton.1.gz 644"
    "usr/share/man/man1/baton-run.1.gz 644"
    "usr/share/man/man1/baton-restart.1.gz 644"
    "usr/share/man/man5/baton.toml.5.gz 644"
    "usr/share/bash-completion/completions/baton 644"
    "usr/share/fish/vendor_completions.d/baton.fish 644"
)
# The reference docs, as in the repository.
for d in docs/*.md; do common_files+=("usr/share/doc/baton/$d 644"); done
for u in "${units[@]}"; do common_files+=("usr/lib/systemd/system/$u 644"); done

# The listing "<mode> <owner> <path>" (path without leading ./ or /) against the expected files.
check_listing() { # name listing-file expected-entry...
    local name=$1 listing=$2; shift 2
    local entry path mode actual problems=0
    for entry in "$@"; do
        path=${entry% *} mode=${entry##* }
        actual=$(awk -v p="$path" '$3 == p { print $1 }' "$listing")
        if [ -z "$actual" ]; then fail "$name: $path is missing"; problems=1
        elif [ "$actual" != "$mode" ]; then fail "$name: $path has mode $actual, not $mode"; problems=1
        fi
    done
    local others
    others=$(awk '$2 != "root/root" { print $3 " is owned by " $2 }' "$listing")
    [ -z "$others" ] || { fail "$name: not owned by root: $others"; problems=1; }
    # Files nobody expects (directories and extra man pages baton-*.1.gz are fine).
    others=$(awk '$1 != "dir" { print $3 }' "$listing" | while read -r p; do
        case " $* " in *" $p "*) continue ;; esac
        case $p in usr/share/man/man1/baton-*.1.gz) continue ;; esac
        echo "$p"
    done)
    [ -z "$others" ] || { fail "$name: unexpected files: $(echo "$others" | tr '\n' ' ')"; problems=1; }
    [ $problems = 0 ] && ok "$name: files, modes and owners ($(wc -l < "$listing") entries)"
    return 0
}

# Checks of the installed tree (a .deb extracted, or an .rpm installed in a scratch root).
check_tree() { # name root zsh-completion-path
    local name=$1 r=$2 zsh=$3 u
    for u in "${units[@]}"; do
        cmp -s "units/$u" "$r/usr/lib/systemd/system/$u" || fail "$name: usr/lib/systemd/system/$u differs from units/$u"
    done
    cmp -s packaging/baton.catalog "$r/usr/lib/systemd/catalog/baton.catalog" || fail "$name: the catalog differs from packaging/baton.catalog"
    cmp -s packaging/example.toml "$r/usr/share/doc/baton/examples/example.toml" || fail "$name: example.toml differs from packaging/example.toml"
    local out
    if out=$("$r/usr/bin/baton" --version 2>&1); then ok "$name: usr/bin/baton runs ($out)"; else fail "$name: usr/bin/baton --version: $out"; fi
    if out=$("$r/usr/bin/baton" check-config --file-only --config "$r/usr/share/doc/baton/examples/example.toml" 2>&1) && [[ $out == *OK* ]]; then
        ok "$name: the packaged baton accepts the packaged example.toml"
    else
        fail "$name: baton check-config rejects the example: $out"
    fi
    if gzip -t "$r/usr/share/man/man1/baton.1.gz" 2>/dev/null && gzip -dc "$r/usr/share/man/man1/baton.1.gz" | grep -q '^\.TH'; then
        ok "$name: man page baton(1)"
    else
        fail "$name: usr/share/man/man1/baton.1.gz is not a gzipped man page"
    fi
    if have bash; then bash -n "$r/usr/share/bash-completion/completions/baton" || fail "$name: bash completion: syntax error"; fi
    if have zsh; then zsh -n "$r/$zsh" || fail "$name: zsh completion: syntax error"; fi
    if have fish; then fish --no-execute "$r/usr/share/fish/vendor_completions.d/baton.fish" || fail "$name: fish completion: syntax error"; fi
    grep -q 'baton' "$r/$zsh" || fail "$name: $zsh is not baton's zsh completion"
}

# ------------------------------------------------------------------------------- sources
# The catalog: systemd's format, and an entry for every MESSAGE_ID that src/journal.rs defines.
catalog=packaging/baton.catalog
mark=$failures
problems=$(awk '
    /^-- / { if (id != "" && !(subj && def && sup)) print "entry " id " lacks Subject:, Defined-By: or Support:";
             id = $2; subj = def = sup = 0; hdr = 1;
             if (length(id) != 32 || id !~ /^[0-9a-f]+$/) print "bad MESSAGE_ID: " id; next }
    hdr && /^Subject: ./ { subj = 1 } hdr && /^Defined-By: baton$/ { def = 1 } hdr && /^Support: ./ { sup = 1 }
    hdr && /^$/ { hdr = 0 }
    END { if (id != "" && !(subj && def && sup)) print "entry " id " lacks Subject:, Defined-By: or Support:" }' "$catalog")
[ -z "$problems" ] || fail "catalog: $problems"
ids_src=$(grep -Eo '"[0-9a-f]{32}"' src/journal.rs 2>/dev/null | tr -d '"' | sort -u || true)
ids_cat=$(awk '/^-- / { print $2 }' "$catalog" | sort -u)
if [ -z "$ids_src" ]; then
    skip "catalog: no MESSAGE_IDs found in src/journal.rs to compare with"
elif [ "$ids_src" != "$ids_cat" ]; then
    fail "catalog: its MESSAGE_IDs differ from src/journal.rs: $(diff <(echo "$ids_src") <(echo "$ids_cat") | grep '^[<>]' | tr '\n' ' ')"
fi
if have journalctl; then
    mkdir -p "$tmp/cat/usr/lib/systemd/catalog" "$tmp/cat/var/lib/systemd/catalog"
    cp "$catalog" "$tmp/cat/usr/lib/systemd/catalog/"
    if journalctl --root="$tmp/cat" --update-catalog 2>"$tmp/cat.err" && [ ! -s "$tmp/cat.err" ]; then
        listed=$(journalctl --root="$tmp/cat" --list-catalog 2>&1 | awk '{ print $1 }' | sort -u)
        [ "$listed" = "$ids_cat" ] || fail "catalog: journalctl --list-catalog shows: $listed"
    else
        fail "catalog: journalctl --update-catalog: $(cat "$tmp/cat.err")"
    fi
else
    skip "catalog: no journalctl to parse it"
fi
n=$(echo "$ids_cat" | wc -w)
[ "$failures" != "$mark" ] || ok "catalog: $n entries in systemd's format, the MESSAGE_IDs of src/journal.rs"

if have shellcheck; then
    if out=$(shellcheck -s sh packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm packaging/rpm/*.sh 2>&1) \
        && out2=$(shellcheck packaging/dist.sh packaging/check.sh 2>&1); then
        ok "shellcheck: package scripts, dist.sh, check.sh"
    else
        fail "shellcheck: ${out:-}${out2:-}"
    fi
else
    skip "shellcheck not installed"
fi

# ------------------------------------------------------------------------------- .deb
echo "== $deb"
dpkg-deb --info "$deb" > "$tmp/deb.info" || fail "deb: dpkg-deb --info failed"
dpkg-deb --field "$deb" Package Version Architecture Depends > "$tmp/deb.fields"
grep -qx 'Package: baton' "$tmp/deb.fields" || fail "deb: Package is not baton"
depends=$(dpkg-deb --field "$deb" Depends)
if [[ ", $depends," =~ ,\ systemd[\ ,] ]]; then ok "deb: Depends: $depends"; else fail "deb: Depends lacks systemd: $depends"; fi
mark=$failures
mkdir -p "$tmp/deb-control" "$tmp/scripts/deb"
dpkg-deb --control "$deb" "$tmp/deb-control"
for s in postinst prerm postrm; do
    if [ ! -x "$tmp/deb-control/$s" ]; then fail "deb: no executable $s"; continue; fi
    cmp -s "$tmp/deb-control/$s" "packaging/debian/$s" || fail "deb: $s differs from packaging/debian/$s (did cargo-deb add to it?)"
    cp "$tmp/deb-control/$s" "$tmp/scripts/deb/$s"
done
for s in preinst config templates triggers; do
    [ ! -e "$tmp/deb-control/$s" ] || fail "deb: unexpected control file $s"
done
# The logrotate file is the one conffile (an operator's edits survive upgrades).
[ "$(cat "$tmp/deb-control/conffiles" 2>/dev/null)" = "/etc/logrotate.d/baton" ] \
    || fail "deb: conffiles is not exactly /etc/logrotate.d/baton: $(cat "$tmp/deb-control/conffiles" 2>/dev/null)"
if grep -v '^[[:space:]]*#' "$tmp"/deb-control/{postinst,prerm,postrm} | grep -Eq 'deb-systemd-(helper|invoke)|DEBHELPER'; then
    fail "deb: debhelper snippets in the scripts"
fi
[ -s "$tmp/deb-control/md5sums" ] || fail "deb: no md5sums"
[ "$failures" != "$mark" ] || ok "deb: control: postinst, prerm, postrm are packaging/debian's, md5sums"
dpkg-deb --contents "$deb" | awk '{
        path = $6; sub(/^\.\//, "", path); isdir = (substr($1, 1, 1) == "d"); sub(/\/$/, "", path)
        if (path == "" || path == ".") next
        m = substr($1, 2); mode = 0
        for (i = 1; i <= 9; i++) { mode = mode * 2 + (substr(m, i, 1) != "-") }
        printf "%s %s %s\n", (isdir ? "dir" : sprintf("%o", mode)), $2, path }' > "$tmp/deb.list"
deb_files=("${common_files[@]}" "usr/share/doc/baton/copyright 644" "usr/share/doc/baton/changelog.Debian.gz 644"
    "usr/share/lintian/overrides/baton 644" "usr/share/zsh/vendor-completions/_baton 644")
check_listing deb "$tmp/deb.list" "${deb_files[@]}"
if grep -qx 'dir root/root etc/baton' "$tmp/deb.list"; then ok "deb: owns the directory /etc/baton/"; else fail "deb: does not ship /etc/baton/"; fi
mkdir -p "$tmp/debroot"
dpkg-deb --extract "$deb" "$tmp/debroot"
check_tree deb "$tmp/debroot" usr/share/zsh/vendor-completions/_baton

# ------------------------------------------------------------------------------- .rpm
if [ -n "$rpm" ]; then
    echo "== $rpm"
    q() { rpm -qp "$@" "$rpm" 2>/dev/null; }
    if out=$(rpm -K --nosignature "$rpm" 2>&1) && [[ $out == *"digests OK"* ]]; then ok "rpm: $out"; else fail "rpm: rpm -K: $out"; fi
    [ "$(q --qf '%{NAME}')" = baton ] || fail "rpm: name is not baton"
    if q --requires | grep -qx 'systemd'; then ok "rpm: Requires: systemd"; else fail "rpm: does not require systemd"; fi
    deb_upstream=$(dpkg-deb --field "$deb" Version); deb_upstream=${deb_upstream%-*}
    [ "$(q --qf '%{VERSION}')" = "$deb_upstream" ] || fail "rpm: version $(q --qf '%{VERSION}') is not the .deb's $deb_upstream"
    mark=$failures
    mkdir -p "$tmp/scripts/rpm"
    for pair in PREIN:pre POSTIN:post PREUN:preun POSTUN:postun POSTTRANS:posttrans; do
        tag=${pair%%:*} s=${pair#*:}
        q --qf "%{$tag}" > "$tmp/scripts/rpm/$s.sh"
        cmp -s "$tmp/scripts/rpm/$s.sh" "packaging/rpm/$s.sh" || fail "rpm: %$s differs from packaging/rpm/$s.sh"
        [ "$(q --qf "%{${tag}PROG}")" = /bin/sh ] || fail "rpm: %$s is not run by /bin/sh"
    done
    for tag in PRETRANS TRIGGERSCRIPTS; do
        [ "$(q --qf "%{$tag}")" = "(none)" ] || fail "rpm: unexpected $tag scriptlet"
    done
    [ "$failures" != "$mark" ] || ok "rpm: %pre %post %preun %postun %posttrans are packaging/rpm's, run by /bin/sh"
    q --qf '[%{FILEMODES:perms} %{FILEUSERNAME}/%{FILEGROUPNAME} %{FILENAMES}\n]' | awk '{
            path = $3; sub(/^\//, "", path); isdir = (substr($1, 1, 1) == "d")
            m = substr($1, 2); mode = 0
            for (i = 1; i <= 9; i++) { mode = mode * 2 + (substr(m, i, 1) != "-") }
            printf "%s %s %s\n", (isdir ? "dir" : sprintf("%o", mode)), $2, path }' > "$tmp/rpm.list"
    rpm_files=("${common_files[@]}" "usr/share/zsh/site-functions/_baton 644"
        "usr/share/licenses/baton/LICENSE-MIT 644" "usr/share/licenses/baton/LICENSE-APACHE 644")
    check_listing rpm "$tmp/rpm.list" "${rpm_files[@]}"
    docs=$(q --docfiles | tr '\n' ' ')
    for d in /usr/share/doc/baton/README.md /usr/share/doc/baton/examples/example.toml /usr/share/man/man1/baton.1.gz; do
        [[ " $docs" == *" $d "* ]] || fail "rpm: $d is not marked %doc (docs: $docs)"
    done
    # Install into a scratch root (no scriptlets: they are tested below), verify, erase.
    rr=$tmp/rpmroot
    mkdir -p "$rr"
    if [ "$(id -u)" != 0 ] && ! unshare --user --map-root-user true 2>/dev/null; then
        skip "rpm: scratch-root install: not root, and no user namespace (unshare) to fake it"
    else
    rpmq() { as_root rpm --root "$rr" --dbpath /var/lib/rpm "$@" 2> >(grep -v -e 'should not be used directly' -e 'assuming you know what you are doing' >&2); }
    if rpmq --initdb && rpmq -i --nodeps --noscripts "$rpm" && [ "$(rpmq -q baton)" = "$(q --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}')" ]; then
        if out=$(rpmq -V --nodeps baton 2>&1); then ok "rpm: installs into a scratch root (rpm -i --root --nodeps --noscripts), rpm -V clean"
        else fail "rpm: rpm -V in the scratch root: $out"; fi
        check_tree rpm "$rr" usr/share/zsh/site-functions/_baton
        if rpmq -e --nodeps --noscripts baton && [ -z "$(find "$rr/usr" -type f 2>/dev/null)" ]; then
            ok "rpm: erases cleanly from the scratch root"
        else
            fail "rpm: rpm -e left files: $(find "$rr/usr" -type f | head -5 | tr '\n' ' ')"
        fi
    else
        fail "rpm: could not install into the scratch root $rr"
    fi
    fi
fi

# ------------------------------------------------------------------------------- the distributions' checkers
# lintian and rpmlint, as a distribution maintainer runs them. Every finding is fixed or
# overridden with its reason (packaging/debian/baton.lintian-overrides, packaging/rpmlint.toml).
if have lintian; then
    # --fail-on warning: an error or a warning fails; info and pedantic tags are printed.
    if out=$(lintian --fail-on error,warning --info --display-info "$deb" 2>&1 | grep -v 'running with root privileges'; exit "${PIPESTATUS[0]}"); then
        ok "deb: lintian: no errors or warnings${out:+ ($(grep -c '^[IP]:' <<<"$out") info/pedantic tags)}"
        [ -z "$out" ] || printf '    %s\n' "${out//$'\n'/$'\n'    }"
    else
        fail "deb: lintian:"; printf '    %s\n' "${out//$'\n'/$'\n'    }"
    fi
else
    skip "deb: lintian: not installed (apt-get install lintian)"
fi
if [ -n "$rpm" ]; then
    if have rpmlint; then
        out=$(rpmlint -c packaging/rpmlint.toml "$rpm" 2>&1) || true
        summary=$(grep -E '[0-9]+ errors, [0-9]+ warnings' <<<"$out" || echo "no summary")
        if [[ $summary == *" 0 errors, 0 warnings"* ]]; then
            ok "rpm: rpmlint: $summary"
        else
            fail "rpm: rpmlint: $summary"; grep -E ': [EW]: ' <<<"$out" | sed 's/^/    /'
        fi
    else
        skip "rpm: rpmlint: not installed (apt-get install rpmlint)"
    fi
fi

# ------------------------------------------------------------------------------- scriptlets
ns=()
if have unshare && have chroot; then
    if unshare --user --map-root-user --mount true 2>/dev/null; then ns=(unshare --user --map-root-user --mount)
    elif [ "$(id -u)" = 0 ] && unshare --mount true 2>/dev/null; then ns=(unshare --mount)
    fi
fi
if [ ${#ns[@]} -gt 0 ]; then
    # The chroot is made under $tmp, removed on exit, once the namespace and its mounts are gone.
    if ! TMPDIR=$tmp "${ns[@]}" bash "$0" --scriptlets-inner "$tmp/scripts"; then
        fail "scriptlets: see the lines above"
    fi
else
    skip "scriptlet behaviour: cannot make a mount namespace here (unshare)"
fi

echo
if [ "$failures" = 0 ]; then
    echo "packaging/check.sh: all checks passed"
else
    echo "packaging/check.sh: $failures check(s) FAILED"
    exit 1
fi
