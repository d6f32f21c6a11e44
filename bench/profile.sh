#!/usr/bin/env bash
# Profile baton's proxy path under load: where does a proxied request's CPU time go?
#
#   bench/profile.sh [--seconds S] [--connections C] [--out DIR] [--nginx]
#
# Runs `baton run` with 4 demo workers (boot 0s), puts wrk on it (C connections, default 16)
# and samples the baton process with `perf record` (software cpu-clock event, DWARF call
# graphs: this VM has no hardware counters, and the release build has no frame pointers) for S
# seconds (default 8). Writes to DIR (default /tmp/baton-profile):
#   perf.data, report-dso.txt (kernel vs baton vs libc), report-self.txt (hottest functions),
#   report-children.txt (inclusive time per function), syscalls.txt (syscalls and context
#   switches per request), summary.txt (the headline numbers, also printed).
# --nginx profiles nginx's worker processes instead, in front of the same 4 workers.
# Where perf cannot sample (or with BATON_PROFILER=callgrind), falls back to valgrind
# --tool=callgrind on a short, light run.
# Installs wrk, jq, curl and linux-perf with apt-get when missing (root). See bench/README.md.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_=8
CONC=16
OUT=/tmp/baton-profile
TARGET=baton
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_=${2:?}; shift ;;
        --connections) CONC=${2:?}; shift ;;
        --out) OUT=${2:?}; shift ;;
        --nginx) TARGET=nginx ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "bench/profile.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=bench/common.sh
. "$ROOT/bench/common.sh"
log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench/profile.sh: %s\n' "$*" >&2; exit 1; }
apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*; install it (apt-get install $*) or run as root"
    log "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1; apt-get install -y --no-install-recommends "$@" >/dev/null; }
}
for t in wrk jq curl; do command -v "$t" >/dev/null || apt_install "$t"; done
if [ "$TARGET" = nginx ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    apt_install nginx
fi
command -v perf >/dev/null || apt_install linux-perf || true

# Does perf sample here? Hardware events (perf stat -e instructions) are often missing in VMs;
# the software cpu-clock event is enough for a profile.
USE_PERF=0
if command -v perf >/dev/null &&
    perf record -q -e cpu-clock -o /tmp/baton-perf-probe.data -- true >/dev/null 2>&1; then
    USE_PERF=1
fi
rm -f /tmp/baton-perf-probe.data
[ "${BATON_PROFILER:-}" != callgrind ] || USE_PERF=0 # force the fallback
if [ "$USE_PERF" = 0 ]; then
    log "perf cannot sample here; falling back to valgrind --tool=callgrind"
    command -v valgrind >/dev/null || apt_install valgrind
fi

log "building: cargo build --release --locked"
(cd "$ROOT" && cargo build --release --locked --quiet)
BATON="$ROOT/target/release/baton"

mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.csv
PORT=$((20000 + RANDOM % 12000))
SOCK="$OUT/control.sock"
demo_config "$OUT/baton.toml" profile "$PORT" "$SOCK" "$BATON"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
URL="http://127.0.0.1:$PORT/"
if [ "$TARGET" = nginx ]; then
    # The same 4 demo workers behind nginx, configured as bench/run.sh does.
    UPSTREAMS=""
    for i in 1 2 3 4; do
        "$BATON" demo-app --port $((PORT + i)) --boot-time 0s >/dev/null 2>&1 &
        PIDS+=($!)
        UPSTREAMS+="server 127.0.0.1:$((PORT + i)); "
    done
    mkdir -p "$OUT/nginx"
    cat >"$OUT/nginx/nginx.conf" <<EOF
user root; worker_processes auto; daemon off; pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $OUT/nginx/body; proxy_temp_path $OUT/nginx/proxy;
    fastcgi_temp_path $OUT/nginx/fastcgi; uwsgi_temp_path $OUT/nginx/uwsgi;
    scgi_temp_path $OUT/nginx/scgi;
    upstream app { least_conn; $UPSTREAMS keepalive 128; }
    server {
        listen 127.0.0.1:$PORT;
        location / {
            proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    "$NGINX" -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" &
    MPID=$!
    PIDS+=("$MPID")
    for _ in $(seq 1 100); do curl -fsS -o /dev/null "$URL" 2>/dev/null && break; sleep 0.1; done
    TPIDS="$(pgrep -P "$MPID" | paste -sd, -)" # the nginx worker processes
elif [ "$USE_PERF" = 1 ]; then
    RUST_LOG=warn "$BATON" run --config "$OUT/baton.toml" >"$OUT/baton.log" 2>&1 &
    TPIDS=$!
    PIDS+=("$TPIDS")
else
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
        "$BATON" run --config "$OUT/baton.toml" >"$OUT/baton.log" 2>&1 &
    TPIDS=$!
    PIDS+=("$TPIDS")
fi
for _ in $(seq 1 300); do curl -fsS -o /dev/null "$URL" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "$URL" || die "$URL does not answer"
sleep 0.5 # baton: let all 4 workers become ready
wrk -t2 -c"$CONC" -d1s "$URL" >/dev/null # warm-up
ticks() {
    local p t=0
    for p in ${TPIDS//,/ }; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
    echo "$t"
}

if [ "$USE_PERF" = 0 ]; then
    wrk -t1 -c"$CONC" -d"${SECONDS_}s" "$URL" | tee "$OUT/wrk.txt"
    cleanup
    callgrind_annotate --inclusive=yes "$OUT/callgrind.out" >"$OUT/report-children.txt" 2>/dev/null
    callgrind_annotate "$OUT/callgrind.out" >"$OUT/report-self.txt" 2>/dev/null
    sed -n 1,60p "$OUT/report-self.txt"
    exit 0
fi

# wrk runs through both windows: first perf stat (CPU time, syscalls and context switches per
# request, without sampling overhead), then perf record.
wrk -t2 -c"$CONC" -d"$((SECONDS_ * 2 + 6))s" -s "$ROOT/bench/report.lua" "$URL" >"$OUT/wrk.txt" &
WPID=$!
sleep 1
t0=$(ticks)
perf stat -x, -e 'raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex' \
    -p "$TPIDS" -o "$OUT/perf-stat.csv" -- sleep "$SECONDS_" 2>/dev/null || true
t1=$(ticks)
log "perf record -e cpu-clock --call-graph dwarf -p $TPIDS, ${SECONDS_}s"
perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$TPIDS" -o "$OUT/perf.data" \
    -- sleep "$SECONDS_" 2>/dev/null
kill -INT "$WPID"
wait "$WPID" || true
cleanup

RPS=$(sed -n 's/^WRKJSON //p' "$OUT/wrk.txt" | jq '.requests / .duration_s')
CPU_US=$(((t1 - t0) * 1000000 / $(getconf CLK_TCK)))
# Requests in the perf stat window, from wrk's average rate (that window is inside wrk's run).
REQS=$(awk -v r="$RPS" -v s="$SECONDS_" 'BEGIN { printf "%d", r * s }')
{
    echo "$TARGET under wrk -c$CONC: $(printf '%.0f' "$RPS") req/s (average over both windows)"
    echo "$TARGET CPU: $(awk -v c="$CPU_US" -v s="$SECONDS_" 'BEGIN { printf "%.2f", c / s / 1e6 }') cores," \
        "$(awk -v c="$CPU_US" -v n="$REQS" 'BEGIN { printf "%.1f", c / n }') us per request"
    if [ -s "$OUT/perf-stat.csv" ]; then
        echo "per request:"
        awk -F, -v n="$REQS" '$1 ~ /^[0-9]+$/ { printf "  %-32s %.2f\n", $3, $1 / n }' "$OUT/perf-stat.csv"
    fi
} >"$OUT/summary.txt"

log "perf report (this takes a while)"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' >"$OUT/report-dso.txt" || true
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' >"$OUT/report-self.txt" || true
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' >"$OUT/report-children.txt" || true
{
    echo
    echo "time by object (self):"
    head -5 "$OUT/report-dso.txt"
    echo
    echo "hottest functions (self):"
    head -15 "$OUT/report-self.txt"
    echo
    echo "inclusive, the proxy path's main stops:"
    grep -E '(ngx_http_upstream|ngx_http_proxy|ngx_process_events|ngx_epoll|__writev|__libc_recv|readv)' "$OUT/report-children.txt" | head -12 || true
    grep -E 'baton::|send_request|poll_flush|poll_write_vectored|poll_read_from_io|Dispatcher<D,Bs,I,T>::poll_catch|park_internal|Checkout|malloc$|_int_free|format_inner|HeaderMap<T>::remove|Uri::from_shared' \
        "$OUT/report-children.txt" | head -30 || true
} >>"$OUT/summary.txt"
cat "$OUT/summary.txt"
log "all reports in $OUT"
