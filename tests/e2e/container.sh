#!/usr/bin/env bash
# Manage a real, booted systemd (Debian bookworm, systemd 252) inside a
# systemd-nspawn container, for baton's end-to-end tests.
#
# Usage:
#   container.sh can-run                         exit 0 if this machine can run containers,
#                                                else print one reason line and exit 1
#   container.sh ensure-rootfs                   build (once) and cache the bookworm rootfs
#   container.sh boot NAME                       boot a disposable container; prints its init PID
#   container.sh net NAME HOST_CIDR CONT_CIDR    address both ends of the link of a container
#                                                booted with BATON_E2E_NETWORK=veth; prints the
#                                                host's end (an interface name)
#   container.sh ssh-enable NAME PUBKEY_FILE     let that key in as root over SSH and start
#                                                sshd; prints the container's ed25519 host key
#   container.sh exec NAME -- CMD [ARG...]       run CMD inside (stdio passed, exit status kept)
#   container.sh copy-in NAME HOSTPATH CPATH     copy a file (or a directory's contents) inside
#   container.sh stop NAME                       shut down and discard (idempotent)
#   container.sh status NAME                     exit 0 if NAME is running (prints init PID)
#
# Environment:
#   BATON_E2E_CACHE          cache root (default /var/cache/baton-e2e)
#   BATON_E2E_MIRROR         Debian mirror URL (default: detected from host apt sources)
#   BATON_E2E_EXTRA_PACKAGES extra packages for the rootfs, comma separated (e.g. python3)
#   BATON_E2E_BOOT_TIMEOUT   seconds to wait for the container to be up (default 60)
#   BATON_E2E_STOP_TIMEOUT   seconds to wait for an orderly shutdown (default 20)
#   BATON_E2E_CGROUP         cgroup layout inside the container: unified (default, pure
#                            cgroup v2) | legacy (v1) | auto (nspawn mirrors the host,
#                            i.e. hybrid on a hybrid host)
#   BATON_E2E_COPY           auto (default) | overlay | copy: how the disposable root is made
#   BATON_E2E_NETWORK        host (default: the host's network namespace) | veth (a network
#                            namespace of its own with one veth link to the host, which has
#                            no address and no route until `net` gives it one)
#
# Only the init PID goes to stdout (from `boot`/`status`); all diagnostics go to stderr.
# Layout under $BATON_E2E_CACHE:
#   rootfs-bookworm/            the pristine, complete rootfs (never modified after build)
#   run/NAME/{root,upper,work}  per-container overlay (or plain copy in root/)
#   run/NAME/{nspawn.pid,init.pid}
#   logs/NAME.console.log       container console, kept after stop for post-mortems
set -euo pipefail

SUITE=bookworm
# libpam-systemd + dbus-user-session: without them `systemd --user` cannot start
# (pam_systemd sets XDG_RUNTIME_DIR) and a user manager has no D-Bus session bus,
# which baton's --user mode needs for StartTransientUnit. openssh-server, python3 and
# python3-apt: hosts that Ansible manages over SSH (its apt module needs python3-apt).
# man-db: `man baton.toml` as an operator reads it. rpm: Debian's rpm, to install the .rpm
# and run its scriptlets against this systemd.
BASE_PACKAGES="systemd,dbus,systemd-sysv,curl,procps,libpam-systemd,dbus-user-session,gunicorn,openssh-server,python3,python3-apt,man-db,rpm"
# Bump when the in-rootfs setup below changes, so cached rootfs are rebuilt. The package
# list is part of the cache key too (see stamp_content): a new package rebuilds it.
SETUP_VERSION=5

CACHE=${BATON_E2E_CACHE:-/var/cache/baton-e2e}
case $CACHE in /*) ;; *) CACHE=$PWD/$CACHE ;; esac
ROOTFS=$CACHE/rootfs-$SUITE
STAMP_NAME=.baton-e2e-rootfs.stamp
RUNBASE=$CACHE/run
LOGDIR=$CACHE/logs
# Commands run inside get a clean, predictable environment instead of the host's
# (host variables like SYSTEMD_* or XDG_* would otherwise leak into the container).
INNER_ENV=(env -i
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 "TERM=${TERM:-dumb}" SYSTEMD_PAGER=cat)

log() { printf 'container.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [[ $EUID -eq 0 ]] || die "must run as root"; }

valid_name() {
  # The name becomes the container's hostname/machine name, so keep it hostname-safe.
  [[ ${1:-} =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,40}$ ]] || die "invalid container name '${1:-}' (use [A-Za-z0-9-], max 41 chars)"
}

host_is_systemd() { [[ -d /run/systemd/system ]]; }

packages() {
  local p=$BASE_PACKAGES
  [[ -n ${BATON_E2E_EXTRA_PACKAGES:-} ]] && p+=",${BATON_E2E_EXTRA_PACKAGES// /}"
  echo "$p"
}

# The stamp content is the cache key: a rootfs built with other packages or an
# older setup is rebuilt rather than silently reused.
stamp_content() { printf 'suite=%s\npackages=%s\nsetup=%s\n' "$SUITE" "$(packages)" "$SETUP_VERSION"; }

rootfs_ok() { [[ -f $ROOTFS/$STAMP_NAME && "$(cat "$ROOTFS/$STAMP_NAME")" == "$(stamp_content)" ]]; }

# ---------------------------------------------------------------- process helpers

# Start time (clock ticks since boot) of a PID; used to detect PID reuse.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }          # comm may contain spaces/parens: cut after the last ')'
  # shellcheck disable=SC2086
  set -- $stat               # now $1 is field 3 (state); starttime is field 22 -> $20
  [[ $1 != Z && $1 != X ]] || return 1   # a zombie is as good as dead
  echo "${20}"
}

# alive PID STARTTIME: the very process we recorded is still running.
alive() {
  local st
  [[ -n ${1:-} ]] || return 1
  st=$(proc_start "$1") || return 1
  [[ -z ${2:-} || $st == "$2" ]]
}

# During shutdown systemd (and systemd-shutdown) SIGSTOP every process in the
# container's PID namespace before signalling it. nsenter (used by `exec`) lives
# outside that namespace, sees its child stop and stops itself too, waiting for a
# SIGCONT that never comes from inside: its child, once killed, is then never
# reaped, and the zombie keeps the container's PID 1 from ever exiting. So while
# a container goes down, wake up any stopped parent (outside the namespace) of a
# process inside it.
unfreeze_nsenters() { # PIDNS_INODE
  [[ -n ${1:-} ]] && command -v ps >/dev/null || return 0
  local p
  for p in $(ps -e -o pid=,ppid=,stat=,pidns= 2>/dev/null | awk -v ns="$1" '
      { ppid[$1] = $2; stat[$1] = $3; pidns[$1] = $4 }
      END { for (p in ppid) { q = ppid[p]
              if (pidns[p] == ns && (q in stat) && pidns[q] != ns && stat[q] ~ /^T/) print q } }'); do
    kill -CONT "$p" 2>/dev/null || true
  done
}

# Processes that `exec` put into the container (children of an nsenter outside it,
# so: in the namespace, parent not, and not the container's PID 1). They belong to
# no unit, so the container's shutdown would only reach them in its final killing
# spree, and systemd-shutdown notices the exit of a non-child only every ~10 s.
# Killing them first keeps `stop` fast.
kill_exec_procs() { # PIDNS_INODE INIT_PID
  [[ -n ${1:-} ]] && command -v ps >/dev/null || return 0
  local p
  for p in $(ps -e -o pid=,ppid=,pidns= 2>/dev/null | awk -v ns="$1" -v init="${2:-0}" '
      { ppid[$1] = $2; pidns[$1] = $3 }
      END { for (p in ppid) if (pidns[p] == ns && p != init && pidns[ppid[p]] != ns) print p }'); do
    kill -KILL "$p" 2>/dev/null || true
  done
}

wait_dead() { # PID START TIMEOUT_SECONDS [PIDNS_INODE]
  local deadline=$((SECONDS + $3)) i=0
  while alive "$1" "$2"; do
    ((SECONDS < deadline)) || return 1
    (( i++ % 5 == 0 )) && unfreeze_nsenters "${4:-}"
    sleep 0.1
  done
}

# ---------------------------------------------------------------- mount helpers

# Mount points at or below DIR, deepest first (so they can be unmounted in order).
mounts_below() {
  local dir
  dir=$(realpath -m "$1")
  # Field 5 of mountinfo is the mount point, with spaces etc. octal-escaped;
  # our paths never contain such characters.
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

umount_below() {
  local m
  while read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" || log "warning: could not unmount $m"
  done < <(mounts_below "$1")
}

# rm -rf that never follows a mount out of the tree (a left-over /proc or bind mount
# inside a half-built rootfs must not take the host with it).
safe_rm() {
  [[ -e $1 ]] || return 0
  umount_below "$1"
  rm -rf --one-file-system -- "$1"
}

# ---------------------------------------------------------------- tooling

ensure_tools() {
  local missing=()
  command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v ps >/dev/null || missing+=(procps)   # stop needs it, see unfreeze_nsenters
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A clean CI machine may never have fetched package lists.
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
}

# Pick the Debian archive mirror the host already uses (it is known to be reachable),
# ignoring security/third-party repositories. Handles both sources.list one-line
# entries and deb822 *.sources files.
detect_mirror() {
  if [[ -n ${BATON_E2E_MIRROR:-} ]]; then echo "$BATON_E2E_MIRROR"; return; fi
  local codenames='^(buster|bullseye|bookworm|trixie|forky|duke|sid|stable|oldstable|testing|unstable)$'
  local files=() f uri
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && files+=("$f")
  done
  for f in "${files[@]}"; do
    if [[ $f == *.sources ]]; then
      # deb822: blank-line separated stanzas of "Key: value".
      uri=$(awk -v re="$codenames" '
        function flush() {
          if (found) return   # "exit" below still runs END, which flushes again
          if (types ~ /(^| )deb( |$)/ && enabled != "no" && uris != "") {
            n = split(suites, s, " ")
            for (i = 1; i <= n; i++) if (s[i] ~ re) { split(uris, u, " "); print u[1]; found = 1; exit }
          }
          types = ""; suites = ""; uris = ""; enabled = ""
        }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]*#/ { next }
        tolower($1) == "types:"   { $1 = ""; types = $0 }
        tolower($1) == "suites:"  { $1 = ""; suites = $0 }
        tolower($1) == "uris:"    { $1 = ""; uris = $0 }
        tolower($1) == "enabled:" { enabled = tolower($2) }
        END { flush() }' "$f")
    else
      uri=$(awk -v re="$codenames" '
        $1 == "deb" {
          i = 2
          if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }   # skip [options]
          if ($(i + 1) ~ re) { print $i; exit }
        }' "$f")
    fi
    uri=${uri// /}
    if [[ $uri =~ ^(https?|ftp|file): && $uri != *debian-security* ]]; then
      echo "${uri%/}"
      return
    fi
  done
  echo http://deb.debian.org/debian
}

# ---------------------------------------------------------------- rootfs

# One-time adjustments for running as an nspawn guest used by tests.
setup_rootfs() {
  local r=$1 u
  # Units that are useless or slow in a throw-away container, or that would do
  # network/disk work behind the tests' back (apt timers!).
  for u in systemd-networkd-wait-online.service systemd-firstboot.service \
           apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
           e2scrub_all.timer e2scrub_reap.service fstrim.timer \
           systemd-timesyncd.service; do
    ln -sfn /dev/null "$r/etc/systemd/system/$u"
  done
  # No login prompts on the console: tests enter with nsenter, and a getty only adds
  # noise to the console log.
  ln -sfn /dev/null "$r/etc/systemd/system/console-getty.service"
  ln -sfn /dev/null "$r/etc/systemd/system/container-getty@.service"
  # Each boot writes a fresh /etc/machine-id into its disposable copy (see boot), so
  # containers never share one. Keep a valid (non-empty) id here anyway: an empty
  # file means "first boot" to systemd, which would run first-boot logic.
  tr -d - </proc/sys/kernel/random/uuid >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id"
  ln -s /etc/machine-id "$r/var/lib/dbus/machine-id"
  # debootstrap copies the host's hostname; without the file the container keeps the
  # name nspawn gives it (the container NAME), which is what tests expect.
  rm -f "$r/etc/hostname"
  # pam_env (user managers, run0-like sessions) warns on every session without it.
  echo 'LANG=C.UTF-8' >"$r/etc/default/locale"
  # The .debs are cached in $CACHE/debs; keep the rootfs (copied per boot) lean.
  rm -f "$r"/var/cache/apt/archives/*.deb
  # Journal kept in /run only: nothing to clean between runs, no host linking.
  mkdir -p "$r/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' >"$r/etc/systemd/journald.conf.d/baton-e2e.conf"
  # sshd, for tests that manage a container over the network (Ansible): not started at boot
  # (`ssh-enable` starts it), and no host key in the shared rootfs: each container makes its
  # own ed25519 key when its sshd first starts, so no two containers share one.
  rm -f "$r"/etc/ssh/ssh_host_*
  rm -f "$r/etc/systemd/system/multi-user.target.wants/ssh.service" "$r/etc/systemd/system/sshd.service"
  mkdir -p "$r/etc/systemd/system/ssh.service.d"
  cat >"$r/etc/systemd/system/ssh.service.d/baton-e2e.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -s /etc/ssh/ssh_host_ed25519_key || exec ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
UNIT
  printf '%s\n' 'HostKey /etc/ssh/ssh_host_ed25519_key' 'PermitRootLogin prohibit-password' \
    'PasswordAuthentication no' 'KbdInteractiveAuthentication no' 'UseDNS no' \
    >"$r/etc/ssh/sshd_config.d/baton-e2e.conf"
}

cmd_ensure_rootfs() {
  need_root
  ensure_tools
  mkdir -p "$CACHE"
  rootfs_ok && return 0

  # Serialize concurrent builders (parallel CI jobs on one machine).
  local lockfd
  exec {lockfd}>"$CACHE/.rootfs.lock"
  flock "$lockfd"
  if rootfs_ok; then exec {lockfd}>&-; return 0; fi

  # Leftovers of builds that were killed hard; we hold the lock, so nobody owns them.
  local old
  for old in "$ROOTFS".tmp.* "$ROOTFS".old.*; do
    [[ -e $old ]] && { log "removing stale $old"; safe_rm "$old"; }
  done

  if [[ -e $ROOTFS ]]; then
    local d
    for d in "$RUNBASE"/*/; do
      [[ -d $d ]] || continue
      if alive "$(cat "$d/nspawn.pid" 2>/dev/null)" "$(cat "$d/nspawn.start" 2>/dev/null)"; then
        die "cached rootfs is outdated but container $(basename "$d") still uses it; stop it first"
      fi
    done
  fi

  local mirror tmp t0=$SECONDS
  mirror=$(detect_mirror)
  # Build next to the final location (same file system) so the final rename is atomic:
  # ROOTFS either does not exist or is complete.
  tmp=$(mktemp -d "$ROOTFS.tmp.XXXXXX")
  DBS_PID=""
  # On any exit before the rename: stop debootstrap (and its dpkg/chroot children),
  # then remove the partial tree, including the /proc etc. it mounted inside.
  # shellcheck disable=SC2064
  trap "[[ -n \$DBS_PID ]] && kill -TERM -- -\$DBS_PID 2>/dev/null && { wait \$DBS_PID || true; }; safe_rm '$tmp'" EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$CACHE/debs"
  log "building $SUITE rootfs with debootstrap from $mirror (a few minutes)"
  # In the background, in its own process group, and waited for: bash runs a signal
  # trap only after a foreground command ends, so a SIGTERM would otherwise wait for
  # the whole build, and the group lets the trap stop all of it at once.
  setsid debootstrap --variant=minbase --include="$(packages)" --components=main \
      --cache-dir="$CACHE/debs" "$SUITE" "$tmp" "$mirror" </dev/null >"$CACHE/debootstrap.log" 2>&1 &
  DBS_PID=$!
  local rc=0
  wait "$DBS_PID" || rc=$?
  DBS_PID=""
  if ((rc != 0)); then
    tail -n 30 "$CACHE/debootstrap.log" >&2
    [[ -f $tmp/debootstrap/debootstrap.log ]] && tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (full log: $CACHE/debootstrap.log)"
  fi
  # debootstrap unmounts what it mounted, but be sure before the tree is renamed.
  umount_below "$tmp"
  setup_rootfs "$tmp"
  stamp_content >"$tmp/$STAMP_NAME"
  chmod 755 "$tmp"   # mktemp made it 0700; this becomes the container's /
  if [[ -e $ROOTFS ]]; then
    old="$ROOTFS.old.$$"
    mv "$ROOTFS" "$old"
  fi
  mv -T "$tmp" "$ROOTFS"
  trap - EXIT INT TERM
  [[ -n ${old:-} && -e $old ]] && safe_rm "$old"
  exec {lockfd}>&-
  log "rootfs ready at $ROOTFS in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- cgroups

# Without a systemd on the host, nobody gives the container a cgroup of its own: with
# --keep-unit nspawn puts the payload in "<own cgroup>/payload", and if that is the
# root cgroup two containers would share it and their systemds would fight over
# (and kill) each other's units. So each container gets a private cgroup, below the
# caller's own, in the hierarchies systemd manages (unified + name=systemd).
cgroup_dirs() { # NAME -> one directory per line
  local name=$1 fs cur
  fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || true)
  if [[ $fs == cgroup2fs ]]; then
    cur=$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)
    echo "/sys/fs/cgroup${cur%/}/baton-e2e-$name"
    return
  fi
  if [[ $(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then
    cur=$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)
    echo "/sys/fs/cgroup/unified${cur%/}/baton-e2e-$name"
  fi
  if [[ -f /sys/fs/cgroup/systemd/cgroup.procs ]]; then
    cur=$(awk -F: '$2 == "name=systemd" { print $3 }' /proc/self/cgroup)
    echo "/sys/fs/cgroup/systemd${cur%/}/baton-e2e-$name"
  fi
}

# Kill anything left in the given cgroups and remove them, deepest first.
cgroup_cleanup() { # DIR...
  local d p
  for d in "$@"; do
    [[ -n $d && -d $d ]] || continue
    if [[ -f $d/cgroup.kill ]]; then
      echo 1 >"$d/cgroup.kill" 2>/dev/null || true
    else
      while read -r p; do kill -KILL "$p" 2>/dev/null || true; done \
        < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
    fi
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d $d ]] || break
      sleep 0.2
    done
    [[ -d $d ]] && log "warning: could not remove cgroup $d"
  done
  return 0
}

# ---------------------------------------------------------------- containers

rundir() { echo "$RUNBASE/$1"; }

# Sets INIT_PID or fails if NAME is not running.
load_running() {
  local d
  d=$(rundir "$1")
  INIT_PID=$(cat "$d/init.pid" 2>/dev/null || true)
  alive "$INIT_PID" "$(cat "$d/init.start" 2>/dev/null || true)" || return 1
}

require_running() {
  load_running "$1" || die "container '$1' is not running (boot it first)"
}

in_container() { # PID CMD... ; -a enters every namespace (user ns is skipped when
  # it is the host's); -r/-w put us at the container's / .
  local pid=$1; shift
  nsenter -t "$pid" -a -r -w -- "${INNER_ENV[@]}" "$@"
}

find_init_pid() { # NSPAWN_PID: the child that is PID 1 of a new PID namespace
  local s ppid nspid
  for s in /proc/[0-9]*/status; do
    ppid=$(awk '$1 == "PPid:" { print $2 }' "$s" 2>/dev/null) || continue
    [[ $ppid == "$1" ]] || continue
    nspid=$(awk '$1 == "NSpid:" { print $NF }' "$s" 2>/dev/null) || continue
    if [[ $nspid == 1 ]]; then
      s=${s#/proc/}; echo "${s%/status}"; return 0
    fi
  done
  return 1
}

# Make ROOT a writable, throw-away view of the cached rootfs.
make_root() { # RUNDIR
  local d=$1 mode=${BATON_E2E_COPY:-auto}
  mkdir -p "$d/root"
  if [[ $mode != copy ]]; then
    mkdir -p "$d/upper" "$d/work"
    # An overlay costs nothing to create; nspawn's own --overlay cannot replace /,
    # hence the host-side mount.
    if mount -t overlay "baton-e2e-$(basename "$d")" \
        -o "lowerdir=$ROOTFS,upperdir=$d/upper,workdir=$d/work" "$d/root" 2>/dev/null; then
      echo overlay >"$d/mode"
      return 0
    fi
    [[ $mode == overlay ]] && die "overlay mount failed (BATON_E2E_COPY=overlay)"
    log "overlayfs unavailable here (e.g. cache on overlayfs); copying the rootfs instead"
    rmdir "$d/upper" "$d/work"
  fi
  cp -a --reflink=auto "$ROOTFS/." "$d/root/"
  echo copy >"$d/mode"
}

cmd_boot() {
  local name=$1
  valid_name "$name"; need_root
  cmd_ensure_rootfs
  local d; d=$(rundir "$name")
  mkdir -p "$RUNBASE" "$LOGDIR"

  if load_running "$name"; then die "container '$name' is already running (init pid $INIT_PID)"; fi
  # A previous run that crashed or was killed: clear it.
  [[ -e $d ]] && cmd_stop "$name"
  mkdir -p "$d"
  # If we fail or are interrupted before the container is up, leave nothing behind.
  BOOTING=$name
  trap 'cmd_stop "$BOOTING" || true' EXIT
  trap 'exit 130' INT TERM

  local t0=$SECONDS
  make_root "$d"
  # A fresh machine id per container: journald, D-Bus and logind key things on it.
  tr -d - </proc/sys/kernel/random/uuid >"$d/root/etc/machine-id"

  local console=$LOGDIR/$name.console.log
  : >"$console"

  local nspawn_args=(-D "$d/root" --register=no -q -b -M "$name"
    # Console output to our log file, never reading our stdin.
    --console=read-only
    # Keep the container's journal to itself (no /var/log/journal linking on the host).
    --link-journal=no)
  case ${BATON_E2E_NETWORK:-host} in
    host) ;;
    # A network namespace of its own, with a veth pair (host0 inside, ve-* outside) that
    # nobody configures until `net` does: no DHCP, no default route.
    veth) nspawn_args+=(--network-veth) ;;
    *) die "BATON_E2E_NETWORK must be host or veth" ;;
  esac
  # TERM=dumb reaches the container's PID 1 only: a plain, colourless console log.
  local env_args=(TERM=dumb)
  local cgmode=${BATON_E2E_CGROUP:-unified}
  # On a hybrid (v1 + v2) host nspawn would mirror the host's hybrid layout. A pure
  # cgroup-v2 guest matches what baton meets on current distributions, so force it.
  case $cgmode in
    unified) env_args+=(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) ;;
    legacy)  env_args+=(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0) ;;
    auto)    ;;
    *) die "BATON_E2E_CGROUP must be unified, legacy or auto" ;;
  esac
  local cgdirs=()
  if host_is_systemd; then
    # A systemd host gives nspawn a delegated scope of its own when it is allowed to ask
    # for one; --keep-unit would hijack the caller's unit (e.g. a login session scope).
    :
  else
    # No systemd on the host to create a scope: stay in the cgroup we prepare below.
    nspawn_args+=(--keep-unit)
    mapfile -t cgdirs < <(cgroup_dirs "$name")
    # Left behind by a container whose run dir is gone (e.g. a wiped cache).
    cgroup_cleanup "${cgdirs[@]}"
    local c
    for c in "${cgdirs[@]}"; do mkdir -p "$c"; done
    # stop may run from another cgroup than ours: remember where they are.
    printf '%s\n' "${cgdirs[@]}" >"$d/cgroups"
  fi

  log "booting '$name' ($(cat "$d/mode") root)"
  (
    # Move ourselves (and so nspawn, which we exec) into the private cgroups.
    for c in "${cgdirs[@]}"; do echo "$BASHPID" >"$c/cgroup.procs"; done
    # setsid: the container must outlive this script and not get the caller's
    # Ctrl-C / SIGHUP. Not a process group leader here, so setsid does not fork and
    # $! below is nspawn's own PID.
    exec env "${env_args[@]}" setsid systemd-nspawn "${nspawn_args[@]}"
  ) </dev/null >>"$console" 2>&1 &
  local nspawn_pid=$!
  local nspawn_start
  nspawn_start=$(proc_start "$nspawn_pid") || true
  echo "$nspawn_pid" >"$d/nspawn.pid"
  echo "$nspawn_start" >"$d/nspawn.start"

  local timeout=${BATON_E2E_BOOT_TIMEOUT:-60}
  local deadline=$((SECONDS + timeout)) init_pid="" state="" out

  fail_boot() {
    log "error: container '$name' $1"
    log "---- console ($console, last 60 lines) ----"
    tail -n 60 "$console" >&2 || true
    if [[ -n $init_pid ]] && alive "$init_pid"; then
      log "---- jobs / failed units ----"
      in_container "$init_pid" systemctl list-jobs --no-pager >&2 2>&1 || true
      in_container "$init_pid" systemctl --failed --no-pager >&2 2>&1 || true
    fi
    exit 1
  }

  while [[ -z $init_pid ]]; do
    alive "$nspawn_pid" "$nspawn_start" || fail_boot "exited during startup"
    ((SECONDS < deadline)) || fail_boot "has no init process after ${timeout}s"
    init_pid=$(find_init_pid "$nspawn_pid") || { init_pid=""; sleep 0.1; }
  done
  echo "$init_pid" >"$d/init.pid"
  proc_start "$init_pid" >"$d/init.start" || fail_boot "init died immediately"
  stat -L -c %i "/proc/$init_pid/ns/pid" >"$d/pidns" || fail_boot "init died immediately"

  # is-system-running --wait fails outright until PID 1 listens on its private bus,
  # so poll; once it answers, --wait blocks until startup has finished.
  while :; do
    alive "$nspawn_pid" "$nspawn_start" || fail_boot "exited during boot"
    local left=$((deadline - SECONDS))
    ((left > 0)) || fail_boot "did not reach running/degraded within ${timeout}s (last state: ${state:-no answer})"
    out=$(timeout "$left" nsenter -t "$init_pid" -a -r -w -- "${INNER_ENV[@]}" \
            systemctl is-system-running --wait 2>&1) || true
    state=$(tail -n 1 <<<"$out")
    case $state in
      running) break ;;
      degraded)
        log "warning: '$name' is degraded; failed units:"
        in_container "$init_pid" systemctl --failed --no-legend --no-pager >&2 || true
        break ;;
      maintenance|stopping|offline) fail_boot "entered state '$state'" ;;
      *) sleep 0.2 ;;   # initializing/starting, or bus not up yet
    esac
  done
  trap - EXIT INT TERM
  log "'$name' is $state after $((SECONDS - t0))s (nspawn pid $nspawn_pid, init pid $init_pid)"
  echo "$init_pid"
}

cmd_exec() {
  local name=$1; shift
  valid_name "$name"; need_root
  [[ ${1:-} == -- ]] && shift
  (($# > 0)) || die "usage: container.sh exec NAME -- CMD [ARG...]"
  require_running "$name"
  # exec: nsenter forks into the PID namespace, waits, and returns the command's
  # status (or re-raises its fatal signal), so the caller sees the real outcome.
  exec nsenter -t "$INIT_PID" -a -r -w -- "${INNER_ENV[@]}" "$@"
}

cmd_copy_in() {
  local name=$1 src=$2 dst=$3
  valid_name "$name"; need_root
  [[ -e $src ]] || die "no such file: $src"
  [[ $dst == /* ]] || die "container path must be absolute: $dst"
  require_running "$name"
  # Copy through the container's own mount namespace rather than via the host path
  # of its root (or /proc/PID/root): that way /tmp, /run and other mounts that
  # exist only inside are handled, and absolute symlinks resolve inside.
  if [[ -d $src ]]; then
    # Directory: its contents go into DST (created if needed), modes preserved.
    # shellcheck disable=SC2016  # expanded by the shell inside the container
    tar -C "$src" -cf - . | in_container "$INIT_PID" sh -c 'mkdir -p "$1" && tar -C "$1" --no-same-owner -xf -' sh "$dst"
  else
    local mode
    mode=$(stat -c %a "$src")
    # File: like cp, DST may be an existing directory (or end in /). Written to a
    # temporary name then renamed, so a running program never sees a partial file.
    # shellcheck disable=SC2016,SC2094  # expanded inside; $src is only read
    in_container "$INIT_PID" sh -c '
      dst=$1; mode=$2; base=$3
      case $dst in */) dst=$dst$base ;; *) [ -d "$dst" ] && dst=$dst/$base ;; esac
      mkdir -p "$(dirname "$dst")"
      tmp=$dst.baton-copy.$$
      cat >"$tmp" && chmod "$mode" "$tmp" && mv -f "$tmp" "$dst" || { rm -f "$tmp"; exit 1; }
    ' sh "$dst" "$mode" "$(basename "$src")" <"$src"
  fi
}

# Address the container's end (host0) and the host's end of its veth pair, IPv6 off on both
# so that the link carries only what a test sends. The container gets no default route: it
# reaches the host's address on the link and nothing else, so nothing leaves the machine.
cmd_net() { # NAME HOST_CIDR CONTAINER_CIDR
  local name=$1 host_cidr=$2 cont_cidr=$3
  valid_name "$name"; need_root
  require_running "$name"
  local cidr='^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+$'
  [[ $host_cidr =~ $cidr && $cont_cidr =~ $cidr ]] || die "usage: container.sh net NAME A.B.C.D/N A.B.C.E/N"
  # Inside, the link shows as "N: host0@ifM: ...", M being the index of the host's end.
  local peer host_if
  peer=$(nsenter -t "$INIT_PID" -n -- ip -o link show dev host0 2>/dev/null \
           | sed -n 's/^[0-9]*: host0@if\([0-9]*\):.*/\1/p')
  [[ -n $peer ]] || die "container '$name' has no host0 link (boot it with BATON_E2E_NETWORK=veth)"
  host_if=$(ip -o link show | awk -F': ' -v i="$peer" '$1 == i { sub(/@.*/, "", $2); print $2 }')
  [[ -n $host_if ]] || die "no host interface with index $peer (the other end of $name's host0)"
  # /proc/sys/net belongs to the network namespace of the process that opens it, so the
  # host's /proc reaches the container's settings from inside its namespace.
  echo 1 >"/proc/sys/net/ipv6/conf/$host_if/disable_ipv6"
  nsenter -t "$INIT_PID" -n -- sh -c 'echo 1 >/proc/sys/net/ipv6/conf/host0/disable_ipv6'
  ip addr replace "$host_cidr" dev "$host_if"
  ip link set dev "$host_if" up
  nsenter -t "$INIT_PID" -n -- ip addr replace "$cont_cidr" dev host0
  nsenter -t "$INIT_PID" -n -- ip link set dev host0 up
  echo "$host_if"
}

# Root may log in with the key in PUBKEY_FILE (keys only, no passwords); sshd starts and
# makes the container's own host key, printed for the caller's known_hosts.
cmd_ssh_enable() { # NAME PUBKEY_FILE
  local name=$1 key=$2
  valid_name "$name"; need_root
  [[ -s $key ]] || die "no public key in $key"
  require_running "$name"
  in_container "$INIT_PID" sh -c 'umask 077 && mkdir -p /root/.ssh && cat >/root/.ssh/authorized_keys' <"$key"
  if ! in_container "$INIT_PID" systemctl start ssh.service >&2; then
    in_container "$INIT_PID" systemctl status --no-pager ssh.service >&2 || true
    die "sshd did not start in '$name'"
  fi
  in_container "$INIT_PID" cat /etc/ssh/ssh_host_ed25519_key.pub
}

cmd_stop() {
  local name=$1
  valid_name "$name"; need_root
  local d; d=$(rundir "$name")
  local nspawn_pid nspawn_start init_pid init_start pidns
  nspawn_pid=$(cat "$d/nspawn.pid" 2>/dev/null || true)
  nspawn_start=$(cat "$d/nspawn.start" 2>/dev/null || true)
  init_pid=$(cat "$d/init.pid" 2>/dev/null || true)
  init_start=$(cat "$d/init.start" 2>/dev/null || true)
  pidns=$(cat "$d/pidns" 2>/dev/null || true)
  local timeout=${BATON_E2E_STOP_TIMEOUT:-20}

  if alive "$nspawn_pid" "$nspawn_start"; then
    alive "$init_pid" "$init_start" && kill_exec_procs "$pidns" "$init_pid"
    # SIGTERM makes nspawn ask the container's systemd to halt (SIGRTMIN+3): an
    # orderly shutdown, so units stop the way they would on a real machine.
    kill -TERM "$nspawn_pid" 2>/dev/null || true
    if ! wait_dead "$nspawn_pid" "$nspawn_start" "$timeout" "$pidns"; then
      log "warning: '$name' did not shut down within ${timeout}s; killing it"
      # Killing PID 1 of the namespace takes every process in it down too.
      alive "$init_pid" "$init_start" && kill -KILL "$init_pid" 2>/dev/null || true
      kill -KILL "$nspawn_pid" 2>/dev/null || true
      wait_dead "$nspawn_pid" "$nspawn_start" 10 "$pidns" || log "warning: nspawn pid $nspawn_pid will not die"
    fi
  fi
  if alive "$init_pid" "$init_start"; then
    kill -KILL "$init_pid" 2>/dev/null || true
    wait_dead "$init_pid" "$init_start" 10 "$pidns" || log "warning: init pid $init_pid will not die"
  fi
  if [[ -f $d/cgroups ]]; then
    local cgdirs=()
    mapfile -t cgdirs <"$d/cgroups"
    cgroup_cleanup "${cgdirs[@]}"
  fi
  if [[ -e $d ]]; then
    safe_rm "$d"
    [[ -e $d ]] && die "could not remove $d"
  fi
  return 0
}

cmd_status() {
  valid_name "$1"
  load_running "$1" || { log "'$1' is not running"; return 1; }
  echo "$INIT_PID"
}

cmd_can_run() {
  no() { echo "cannot run e2e containers: $*"; exit 1; }
  [[ $(uname -s) == Linux ]] || no "not Linux"
  [[ $EUID -eq 0 ]] || no "must run as root"
  if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || no "systemd-nspawn/debootstrap missing and no apt-get to install them"
  fi
  command -v nsenter >/dev/null || no "nsenter (util-linux) missing"
  # Creating namespaces and mounting is what nspawn does; refused inside an
  # unprivileged container or under a restrictive seccomp profile.
  unshare --mount --pid --uts --ipc --fork true 2>/dev/null || no "cannot create namespaces (unprivileged container?)"
  local fs; fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || true)
  case $fs in
    cgroup2fs) ;;
    tmpfs) [[ -f /sys/fs/cgroup/systemd/cgroup.procs || -f /sys/fs/cgroup/unified/cgroup.procs ]] \
             || no "/sys/fs/cgroup has neither a name=systemd nor a unified hierarchy" ;;
    *) no "/sys/fs/cgroup is not mounted (found '${fs:-nothing}')" ;;
  esac
  if ! host_is_systemd; then
    # We must be able to give each container a cgroup of its own.
    local c probe
    while read -r c; do
      [[ -n $c ]] || continue
      probe="${c%/*}/baton-e2e-probe-$$"
      mkdir "$probe" 2>/dev/null && rmdir "$probe" || no "cannot create cgroups under ${c%/*}"
    done < <(cgroup_dirs probe)
  fi
  exit 0
}

usage() {
  sed -n '/^# Usage:/,/^# Only the init/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd=${1:-}; shift || true
  case $cmd in
    can-run)       cmd_can_run ;;
    ensure-rootfs) (($# == 0)) || usage; cmd_ensure_rootfs ;;
    boot)          (($# == 1)) || usage; cmd_boot "$1" ;;
    net)           (($# == 3)) || usage; cmd_net "$@" ;;
    ssh-enable)    (($# == 2)) || usage; cmd_ssh_enable "$@" ;;
    exec)          (($# >= 1)) || usage; cmd_exec "$@" ;;
    copy-in)       (($# == 3)) || usage; cmd_copy_in "$@" ;;
    stop)          (($# == 1)) || usage; cmd_stop "$1" ;;
    status)        (($# == 1)) || usage; cmd_status "$1" ;;
    -h|--help|help) usage ;;
    *) usage ;;
  esac
}

main "$@"
