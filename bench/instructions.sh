#!/bin/bash
# What the access log costs the proxy, counted in instructions rather than timed: two
# `baton run`s with 4 demo workers each (plain proxying of `GET /`, the narrow path), one with
# `[log] access = a file` (combined, request ids), one without, each run under valgrind's
# callgrind while wrk sends it requests at 16 connections. The figure is baton's user-space
# instructions per request (all its threads, the log's writer included), from a counter
# zeroed after a warm-up and dumped after the load, divided by the requests its workers
# answered meanwhile. Unlike CPU time on a shared VM, the count does not move with the
# neighbours (a few per cent between runs, from how requests batch): bench/README.md, "The
# access log's cost". It does not count the kernel's side (system calls, the page cache) nor
# cache misses: the timed figure of `bench/run.sh --only log` is the target's.
#
# Usage: bench/instructions.sh [--baton FILE] [--seconds N]
# Needs valgrind and wrk (installed from Debian's packages when missing, as root), jq.
set -euo pipefail
cd "$(dirname "$0")/.."
BATON=target/release/baton
SECONDS_LOAD=10
while [ $# -gt 0 ]; do
    case $1 in
        --baton) BATON=$(realpath "$2"); shift 2 ;;
        --seconds) SECONDS_LOAD=$2; shift 2 ;;
        *) echo "usage: $0 [--baton FILE] [--seconds N]" >&2; exit 2 ;;
    esac
done
need=()
for t in valgrind:valgrind wrk:wrk jq:jq; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get -o DPkg::Lock::Timeout=600 install -y "${need[@]}" >/dev/null
fi
if [ "$BATON" = target/release/baton ]; then
    cargo build --release --locked >&2
    BATON=$(realpath "$BATON")
fi
# shellcheck source=bench/common.sh
. bench/common.sh
WORK=$(mktemp -d /tmp/baton-instructions.XXXXXX)
trap 'pkill -f "$WORK/" 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Instructions per request of one instance: NAME, then extra TOML.
count() {
    local name=$1 more=${2:-} port pid ready before after total
    port=$(free_port)
    demo_config "$WORK/$name.toml" "$name" "$port" "$WORK/$name.sock" "$BATON" "$more"
    RUST_LOG=warn valgrind --tool=callgrind --collect-atstart=yes \
        --callgrind-out-file="$WORK/$name.%p.out" \
        "$BATON" run --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
    pid=$!
    processed() { "$BATON" status --json --control "$WORK/$name.sock" | jq '[.workers[].processed] | add // 0'; }
    for _ in $(seq 1 240); do
        ready=$("$BATON" status --json --control "$WORK/$name.sock" 2>/dev/null |
            jq '[.workers[] | select(.state == "ready")] | length' 2>/dev/null) || true
        [ "${ready:-0}" = 4 ] && break
        sleep 0.5
    done
    [ "${ready:-0}" = 4 ] || { echo "$name: the workers did not become ready" >&2; cat "$WORK/$name.log" >&2; exit 1; }
    wrk -t2 -c16 -d2s "http://127.0.0.1:$port/" >/dev/null # warm-up
    before=$(processed)
    callgrind_control --zero "$pid" >/dev/null 2>&1
    wrk -t2 -c16 -d"${SECONDS_LOAD}s" "http://127.0.0.1:$port/" >/dev/null
    callgrind_control --dump=load "$pid" >/dev/null 2>&1
    after=$(processed)
    kill "$pid"
    wait "$pid" || true
    # The dump made on request (the one whose trigger is "load").
    # shellcheck disable=SC2016 # awk's own $2
    total=$(grep -l '^desc: Trigger: dump load' "$WORK/$name".*.out* | xargs awk '/^totals:/ { print $2 }')
    echo "$name $((after - before)) $total"
}

off=$(count off)
on=$(count on "[log]
access = \"$WORK/access.log\"
format = \"combined\"")
read -r _ off_req off_ins <<<"$off"
read -r _ on_req on_ins <<<"$on"
awk -v a="$off_ins" -v ar="$off_req" -v b="$on_ins" -v br="$on_req" 'BEGIN {
    off = a / ar; on = b / br
    printf "baton user-space instructions per request (callgrind, wrk -c16, 4 demo workers):\n"
    printf "  off %.0f (%d requests), on %.0f (%d requests): the log adds %.0f (%.1f %%)\n", off, ar, on, br, on - off, (on / off - 1) * 100
}'
