#!/usr/bin/env bash
# Smoke test of container.sh itself: boots a container and checks the systemd
# features baton's e2e tests rely on. Run as root: tests/e2e/container-smoke.sh
# Prints one line per check and a closing "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")"
C=./container.sh
NAME=smoke-$$
PORT=${SMOKE_PORT:-18181}
pass=0 fail=0

if ! reason=$($C can-run); then echo "skipped: $reason"; echo "0 passed, 0 failed, 1 skipped"; exit 0; fi

check() { # DESCRIPTION CMD...
  local what=$1; shift
  if out=$("$@" 2>&1); then
    pass=$((pass + 1)); echo "ok   $what"
  else
    fail=$((fail + 1)); echo "FAIL $what"; printf '%s\n' "$out" | tail -n 15 | sed 's/^/     /'
  fi
}
in_c() { $C exec "$NAME" -- "$@"; }

trap '$C stop "$NAME" || true' EXIT
$C ensure-rootfs
t0=$(date +%s%N)
$C boot "$NAME" >/dev/null
echo "booted in $(( ($(date +%s%N) - t0) / 1000000 )) ms"

tmp=$(mktemp -d)
trap '$C stop "$NAME" || true; rm -rf "$tmp"' EXIT
cat >"$tmp/smoke.socket" <<EOF
[Socket]
ListenStream=127.0.0.1:$PORT
Accept=yes
EOF
# Reads the request head fully before answering so the client sees a clean close.
cat >"$tmp/smoke@.service" <<'EOF'
[Service]
ExecStart=/bin/sh -c 'while read -r l; do [ "$${l%%\r}" = "" ] && break; done; printf "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"'
StandardInput=socket
StandardOutput=socket
EOF
cat >"$tmp/smoke-notify.service" <<'EOF'
[Service]
Type=notify
NotifyAccess=all
ExecStart=/bin/sh -c 'sleep 0.5; systemd-notify --ready --status="1/1 ready"; exec sleep infinity'
EOF

check "systemd 252 inside"           sh -c "$C exec $NAME -- systemctl --version | grep -q '^systemd 252'"
check "system state running"         sh -c "[ \"\$($C exec $NAME -- systemctl is-system-running)\" = running ]"
check "cgroup v2 inside"             sh -c "$C exec $NAME -- stat -fc %T /sys/fs/cgroup | grep -qx cgroup2fs"
check "exit status preserved"        sh -c "$C exec $NAME -- sh -c 'exit 7'; [ \$? = 7 ]"
check "stdin passed through"         sh -c "[ \"\$(echo hi | $C exec $NAME -- cat)\" = hi ]"
check "transient unit (systemd-run)" in_c systemd-run --unit=smoke-sleep sleep 100
check "transient unit active"        in_c systemctl is-active smoke-sleep.service
check "journal readable"             sh -c "$C exec $NAME -- journalctl -n 5 --no-pager | grep -q ."
check "systemd1 on the system bus"   in_c busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
                                       org.freedesktop.DBus.Peer Ping
check "copy-in unit files"           sh -c "$C copy-in $NAME $tmp/smoke.socket /etc/systemd/system/ &&
                                       $C copy-in $NAME $tmp/smoke@.service /etc/systemd/system/ &&
                                       $C copy-in $NAME $tmp/smoke-notify.service /etc/systemd/system/ &&
                                       $C exec $NAME -- systemctl daemon-reload"
check "socket unit listening"        in_c systemctl start smoke.socket
check "reachable from host (shared netns)" sh -c "curl -fsS -m 5 http://127.0.0.1:$PORT/ | grep -qx ok"
check "Type=notify service ready"    sh -c "$C exec $NAME -- systemctl start smoke-notify.service &&
                                       $C exec $NAME -- systemctl show -P StatusText smoke-notify.service | grep -qx '1/1 ready'"
check "user manager (linger + --user -M)" sh -c "$C exec $NAME -- loginctl enable-linger root &&
                                       for i in \$(seq 50); do $C exec $NAME -- systemctl --user -M root@ is-system-running >/dev/null 2>&1 && break; sleep 0.2; done &&
                                       $C exec $NAME -- systemd-run --user -M root@ --unit=smoke-user sleep 100 &&
                                       $C exec $NAME -- systemctl --user -M root@ is-active smoke-user.service"
check "stop is clean and idempotent" sh -c "$C stop $NAME && $C stop $NAME && ! $C status $NAME 2>/dev/null"

echo "$pass passed, $fail failed"
((fail == 0))
