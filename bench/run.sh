#!/usr/bin/env bash
# What the proxy costs and what a restart costs, side by side with nginx.
#
#   bench/run.sh [--short] [--out FILE] [--workers N] [--keep] [--baton FILE] [--only SECTION]
#
# 1. Steady state: requests/s and p50/p99/max latency at concurrency 1, 16, 64 for wrk straight
#    to one demo worker ("direct"), nginx proxy_pass (upstream keepalive) to N workers, and baton
#    with N workers. The three are measured in turn, 3 rounds; the round with the median
#    requests/s is reported (the machine is noisy).
# 2. A rolling restart under load (16 connections): failed requests, p99/max in the restart
#    window vs steady state, roll time per worker above the app's boot time, peak worker count,
#    manager RSS.
# 3. A blocking restart under the same load, for contrast.
# 4. A rolling restart whose app burns CPU while it boots (demo-app --boot-cpu), with
#    [restart] boot_cpu_weight = "low" (the default) and "normal": the restart window's max and
#    p99.9 against the steady state's p99 and p99.9.
# 5. Manager RSS with 10,000 idle client connections open, and after they closed.
# 6. HTTPS and HTTP/2 (issue 24), nginx (`listen ... ssl http2`) and baton ([tls]) with the same
#    ECDSA P-256 certificate, each in front of N demo workers of its own: TLS keep-alive req/s
#    at concurrency 1, 16, 64 (wrk over https); full handshakes/s (wrk, a new connection and a
#    full handshake per request); HTTP/2 req/s (h2load -c16 -m10); CPU per request for each;
#    memory per idle TLS connection (2,000 held open after their handshake, HTTP/1.1 and h2).
#    Printed as baton/nginx ratios from the same run. --only tls runs this section alone.
# 7. Static files (issue 26): one release directory with public/assets/a-1k.bin (1 KiB) and
#    a-1m.bin (1 MiB), served by nginx (`location /assets/ { root ...; }`, sendfile, tcp_nopush,
#    open_file_cache) and by baton ([app] directory = the release, [static] directory =
#    "public", prefixes = ["/assets"]): wrk keep-alive req/s at concurrency 1, 16, 64 for each
#    file, CPU per request of the proxy process(es) alone, baton/nginx ratios (the median of the
#    rounds' ratios, the two measured back to back); and the requests
#    baton's workers served meanwhile (must be 0: no worker is involved). --only static.
# 8. The access log (issue 26): three baton instances with N demo workers each, up at once and
#    measured in turn, one with [log] access = a file (format combined, request ids on: the
#    defaults) and two without (the second a control: two equal instances' ratio is the noise),
#    started afresh for each of LOG_BLOCKS blocks of rounds; wrk at concurrency 16, plain
#    proxying; proxy CPU per request of on / the mean of the two off, the median of the
#    rounds' ratios; the lines written against the requests the workers answered, and
#    baton_access_log_dropped_total from /metrics. --only log.
# Prints a table (figures with their targets, PASS/MISS) and writes JSON (bench/results.json or
# --out). Targets are reported, never enforced: the exit status is 0 whenever every figure was
# measured. --short (CI, tests/bench_smoke.rs): 1 round of 2 s per figure (1 s for HTTPS),
# concurrency 1 and 16, boot 200ms, 200 idle TLS connections; static files and the access log
# at concurrency 16 only, 1 round of 1 s. Installs wrk, nginx, jq, curl,
# h2load (nghttp2-client) and openssl with apt-get when missing (needs root then).
# --keep keeps the work directory (configs, logs, raw wrk output). --baton FILE measures that
# binary instead of building this tree (a before/after comparison of two commits). See
# bench/README.md.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
SHORT=0
OUT=""
N=4
KEEP=0
BATON_BIN=""
ONLY=""

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --short) SHORT=1 ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        --out=*) OUT=${1#--out=} ;;
        --workers) N=${2:?--workers needs a number}; shift ;;
        --keep) KEEP=1 ;;
        --baton) BATON_BIN=${2:?--baton needs a file}; shift ;;
        --only) ONLY=${2:?--only needs a section: tls, static or log}; shift ;;
        --only=*) ONLY=${1#--only=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench/run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case "$ONLY" in "" | tls | static | log) ;; *) echo "bench/run.sh: --only $ONLY: the sections that run alone are tls, static and log" >&2; exit 2 ;; esac
# Does section NAME (tls, static, log) run? Sections 1-5 run only in a full run.
runs() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }
OUT=${OUT:-$BENCH/results.json}
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

if [ "$SHORT" = 1 ]; then
    DUR=2; ROUNDS=1; CONCS=(1 16); BOOT=200ms; BOOT_MS=200; SETTLE_MS=100; BOOT_CPU=300ms
    IDLE_CONNS=2000
    TLS_DUR=1; TLS_ROUNDS=1; TLS_CONCS=(1 16); TLS_IDLE=200
    STATIC_DUR=1; STATIC_ROUNDS=1; STATIC_CONCS=(16)
    LOG_DUR=1; LOG_ROUNDS=1; LOG_BLOCKS=1
else
    DUR=5; ROUNDS=3; CONCS=(1 16 64); BOOT=1s; BOOT_MS=1000; SETTLE_MS=200; BOOT_CPU=1s
    IDLE_CONNS=10000
    TLS_DUR=5; TLS_ROUNDS=3; TLS_CONCS=(1 16 64); TLS_IDLE=2000
    STATIC_DUR=5; STATIC_ROUNDS=${BATON_BENCH_STATIC_ROUNDS:-5}; STATIC_CONCS=(1 16 64)
    LOG_DUR=4; LOG_ROUNDS=${BATON_BENCH_LOG_ROUNDS:-9}; LOG_BLOCKS=${BATON_BENCH_LOG_BLOCKS:-3}
    [ "$LOG_BLOCKS" -le "$LOG_ROUNDS" ] || LOG_BLOCKS=$LOG_ROUNDS
fi
# The access log's figure: plain proxying at this many connections, as issue 26 asks.
LOG_CONC=16
# HTTPS: full handshakes at this many connections at once; HTTP/2 as issue 24 asks for it.
HANDSHAKE_CONC=16
H2_CONC=16
H2_STREAMS=10
# 10,000 idle client connections need descriptors: raise the limits where we may (root).
ulimit -Hn 65536 2>/dev/null && ulimit -Sn 65536 2>/dev/null || true
RESTART_CONC=16
WRK_TIMEOUT=10s # a request slower than this counts as a wrk timeout (a failure)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------
nginx_bin() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
have_tools() {
    command -v wrk >/dev/null && [ -n "$(nginx_bin)" ] && command -v jq >/dev/null &&
        command -v curl >/dev/null && command -v h2load >/dev/null && command -v openssl >/dev/null
}
if ! have_tools; then
    missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    [ -n "$(nginx_bin)" ] || missing+=(nginx)
    command -v jq >/dev/null || missing+=(jq)
    command -v curl >/dev/null || missing+=(curl)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v openssl >/dev/null || missing+=(openssl)
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]} and not root: apt-get install ${missing[*]}, or run as root"
    log "installing ${missing[*]} (apt-get)"
    # Where no policy-rc.d forbids it, Debian starts the packaged nginx on port 80; harmless here.
    # Others may be running apt on this machine: wait for their lock rather than fail.
    export DEBIAN_FRONTEND=noninteractive
    APT=(apt-get -o DPkg::Lock::Timeout=600)
    if ! "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >"/tmp/baton-bench-apt.log" 2>&1; then
        "${APT[@]}" update >>"/tmp/baton-bench-apt.log" 2>&1 || true
        "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >>"/tmp/baton-bench-apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed (see /tmp/baton-bench-apt.log)"
    fi
    have_tools || die "still missing tools after apt-get install ${missing[*]}"
fi
! runs tls || command -v cc >/dev/null || die "no C compiler (cc): the HTTPS section builds bench/no_resume.c"
NGINX=$(nginx_bin)

if [ -n "$BATON_BIN" ]; then
    [ -x "$BATON_BIN" ] || die "--baton $BATON_BIN: not an executable file"
    BATON=$(cd "$(dirname "$BATON_BIN")" && pwd)/$(basename "$BATON_BIN")
    log "measuring $BATON"
else
    log "building: cargo build --release --locked"
    (cd "$ROOT" && cargo build --release --locked --quiet) || die "build failed"
    BATON="$ROOT/target/release/baton"
fi

# --- processes ---------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/baton-bench.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stop one process we started and forget it.
stop_pid() {
    local p=$1 q keep=()
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    PIDS=("${keep[@]}")
}

# A free port below the ephemeral range, so it cannot collide with a worker's port: sets PORT.
USED_PORTS=" "
free_port() {
    while :; do
        PORT=$((20000 + RANDOM % 12000))
        case "$USED_PORTS" in *" $PORT "*) continue ;; esac
        if [ -z "$(ss -Htln "sport = :$PORT" 2>/dev/null)" ]; then
            USED_PORTS+="$PORT "
            return
        fi
    done
}

wait_http() { # URL: wait up to 10 s for a 200 (https: any certificate)
    local _
    for _ in $(seq 1 200); do
        curl -kfsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    die "$1 did not answer"
}

# CPU time (clock ticks, user + system) used so far by the given processes, all threads.
cpu_ticks() {
    local p t=0 s
    for p in "$@"; do
        s=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null) || s=0
        t=$((t + s))
    done
    echo "$t"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# run_wrk CONNECTIONS SECONDS URL [WRK ARGS...] -> one JSON object on stdout. With WRK_PRELOAD
# set, wrk runs with that LD_PRELOAD (bench/no_resume.c).
run_wrk() {
    local c=$1 d=$2 url=$3 t out
    shift 3
    t=$((c < 2 ? 1 : 2))
    out=$(env ${WRK_PRELOAD:+LD_PRELOAD="$WRK_PRELOAD"} \
        wrk -t"$t" -c"$c" -d"${d}s" --timeout "$WRK_TIMEOUT" -s "$BENCH/report.lua" "$@" "$url") ||
        die "wrk failed against $url"
    printf '%s\n' "$out" | sed -n 's/^WRKJSON //p' | grep . || die "no figures from wrk: $out"
}

start_demo_worker() { # PORT; sets WORKER_PID
    "$BATON" demo-app --port "$1" --boot-time 0s >>"$WORK/workers.log" 2>&1 &
    WORKER_PID=$!
    PIDS+=("$WORKER_PID")
}

# baton: write a config, run it, wait for N ready workers. NAME BOOT; sets BATON_PID,
# BATON_PORT, BATON_SOCK.
status_json() { curl -fsS --max-time 2 --unix-socket "$BATON_SOCK" http://baton/status; }
start_baton() { # NAME BOOT [RESTART_LINES] [APP_ARGS] [MORE_TOML] [APP_TOML]
    local name=$1 boot=$2 restart_lines=${3:-} app_args=${4:-} more=${5:-} app_toml=${6:-} ready _ extra="" a
    for a in $app_args; do extra+=", \"$a\""; done
    free_port
    BATON_PORT=$PORT
    BATON_SOCK="$WORK/$name.sock"
    cat >"$WORK/$name.toml" <<EOF
name = "$name"

[listen]
address = "127.0.0.1:$BATON_PORT"

[app]
command = ["$BATON", "demo-app", "--port", "{port}", "--boot-time", "$boot"$extra]
$app_toml

[workers]
count = $N
concurrency = 0

[readiness]
http_path = "/"
# Each new worker must live this long before its old one drains; the roll's overhead below is
# what it costs beyond the app's boot and this period.
settle = "${SETTLE_MS}ms"

[restart]
$restart_lines

# The roll figures measure a roll's own mechanics: the canary phase (a deliberate pause of
# canary.duration while the judge compares generations) is left out.
[canary]
workers = 0

[spawner]
backend = "process"

[control]
socket = "$BATON_SOCK"
$more
EOF
    RUST_LOG=${RUST_LOG:-warn} "$BATON" run --config "$WORK/$name.toml" >>"$WORK/$name.log" 2>&1 &
    BATON_PID=$!
    PIDS+=("$BATON_PID")
    for _ in $(seq 1 300); do
        ready=$(status_json 2>/dev/null | jq '[.workers[] | select(.state == "ready")] | length' 2>/dev/null) || true
        [ "$ready" = "$N" ] && return 0
        kill -0 "$BATON_PID" 2>/dev/null || { tail -n 20 "$WORK/$name.log" >&2; die "baton run exited"; }
        sleep 0.1
    done
    tail -n 20 "$WORK/$name.log" >&2
    die "baton did not get $N ready workers within 30 s"
}
# nginx in front of N demo workers of its own. nginx_workers sets NGINX_WORKERS (their pids) and
# UPSTREAMS (their server lines); start_nginx DIR SERVER_LINES writes DIR/nginx.conf as an
# operator would (one worker process per core, upstream keepalive, the forwarding headers baton
# sets too), runs it and sets NGINX_PID. SERVER_LINES: the server block's listen and TLS lines.
nginx_workers() {
    local _
    NGINX_WORKERS=()
    UPSTREAMS=""
    for _ in $(seq 1 "$N"); do
        free_port
        start_demo_worker "$PORT"
        NGINX_WORKERS+=("$WORKER_PID")
        UPSTREAMS+="        server 127.0.0.1:$PORT;"$'\n'
        wait_http "http://127.0.0.1:$PORT/"
    done
}
start_nginx() { # DIR SERVER_LINES
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
user root;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream app {
        least_conn;
$UPSTREAMS        keepalive 128;
    }
    server {
$2
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; } # PID VmRSS|VmHWM

# How much CPU others used meanwhile: the machine's busy time (/proc/stat: user, nice, system,
# irq, softirq) minus our own (this shell and every descendant, all reaped by the end).
machine_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
own_cpu() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$$/stat"; }
BUSY0=$(machine_busy) OWN0=$(own_cpu) T0=$EPOCHREALTIME

# Sections 1-5: everything but HTTPS (--only tls skips them).
if [ -z "$ONLY" ]; then
    # --- 1. steady state -----------------------------------------------------------------------
    log "starting: one direct worker; nginx with $N workers; baton with $N workers"
    free_port
    DIRECT_URL="http://127.0.0.1:$PORT/"
    start_demo_worker "$PORT"
    DIRECT_PID=$WORKER_PID
    wait_http "$DIRECT_URL"

    nginx_workers
    free_port
    NGINX_URL="http://127.0.0.1:$PORT/"
    start_nginx "$WORK/nginx" "        listen 127.0.0.1:$PORT;"
    wait_http "$NGINX_URL"

    start_baton steady 0s
    BATON_URL="http://127.0.0.1:$BATON_PORT/"
    STEADY_BATON_PID=$BATON_PID

    # The processes whose CPU time counts as "proxy" and as "app" for each target.
    proxy_pids() {
        case $1 in
            direct) ;;
            nginx) echo "$NGINX_PID" $(pgrep -P "$NGINX_PID") ;;
            baton) echo "$STEADY_BATON_PID" ;;
        esac
    }
    app_pids() {
        case $1 in
            direct) echo "$DIRECT_PID" ;;
            nginx) echo "${NGINX_WORKERS[@]}" ;;
            baton) pgrep -P "$STEADY_BATON_PID" ;;
        esac
    }
    url_of() { case $1 in direct) echo "$DIRECT_URL" ;; nginx) echo "$NGINX_URL" ;; baton) echo "$BATON_URL" ;; esac; }

    STEADY_RUNS="$WORK/steady-runs.jsonl"
    : >"$STEADY_RUNS"
    for t in direct nginx baton; do run_wrk 16 1 "$(url_of "$t")" >/dev/null; done # warm-up
    for c in "${CONCS[@]}"; do
        for round in $(seq 1 "$ROUNDS"); do
            for t in direct nginx baton; do
                # shellcheck disable=SC2046 # word splitting of the pid lists is intended
                p0=$(cpu_ticks $(proxy_pids "$t")) a0=$(cpu_ticks $(app_pids "$t"))
                fig=$(run_wrk "$c" "$DUR" "$(url_of "$t")")
                # shellcheck disable=SC2046
                p1=$(cpu_ticks $(proxy_pids "$t")) a1=$(cpu_ticks $(app_pids "$t"))
                jq -c --arg t "$t" --argjson c "$c" --argjson r "$round" \
                    --argjson pus "$(((p1 - p0) * TICK_US))" --argjson aus "$(((a1 - a0) * TICK_US))" '
                    {target: $t, concurrency: $c, round: $r} + .
                    + {proxy_cpu_us_per_request: ($pus / .requests * 10 | round / 10),
                       app_cpu_us_per_request: ($aus / .requests * 10 | round / 10)}' <<<"$fig" >>"$STEADY_RUNS"
                log "$(tail -n1 "$STEADY_RUNS" | jq -r '"\(.target) c=\(.concurrency) round \(.round): \(.rps | floor) req/s, p50 \(.p50_us)us p99 \(.p99_us)us max \(.max_us)us, proxy CPU \(.proxy_cpu_us_per_request)us/req"')"
            done
        done
    done
    STEADY_HWM_KIB=$(vm_kib "$STEADY_BATON_PID" VmHWM)
    stop_pid "$STEADY_BATON_PID"
    stop_pid "$NGINX_PID"
    for p in "$DIRECT_PID" "${NGINX_WORKERS[@]}"; do stop_pid "$p"; done

    # --- 2, 3. restarts under load ---------------------------------------------------------------
    log "restarts: baton with $N workers booting in $BOOT, $RESTART_CONC connections"
    start_baton restart "$BOOT"
    URL="http://127.0.0.1:$BATON_PORT/"
    run_wrk "$RESTART_CONC" 1 "$URL" >/dev/null # warm-up

    # Sample the manager every 50 ms: workers in `baton status --json`, its child processes, its
    # VmRSS (KiB). Kept light (one fork per sample besides sleep: the status client, ~2 ms of CPU),
    # since it shares the 2 cores with the load it watches.
    sampler() { # FILE
        local s rest n procs rss f kids k v _
        while :; do
            s=$("$BATON" status --json --control "$BATON_SOCK" 2>/dev/null) || s=""
            rest=${s//\"address\":/}
            n=$(((${#s} - ${#rest}) / 10)) # one "address": per worker
            procs=0
            for f in /proc/"$BATON_PID"/task/*/children; do
                kids=()
                read -ra kids <"$f" 2>/dev/null || true
                procs=$((procs + ${#kids[@]}))
            done
            rss=0
            while read -r k v _; do [ "$k" = VmRSS: ] && rss=$v; done <"/proc/$BATON_PID/status"
            echo "$n $procs $rss" >>"$1"
            sleep 0.05
        done
    }

    # under_load MODE (steady|rolling|blocking) -> one JSON object on stdout. wrk runs from just
    # before the restart until just after it ends (SIGINT makes wrk print its figures), with the
    # sampler running; "steady" runs the same way for DUR seconds without a restart, so that both
    # windows are measured under the same conditions.
    under_load() {
        local mode=$1 samples="$WORK/samples-$1" wout="$WORK/wrk-$1.out" wpid spid t0 t1 rc=0 fig
        : >"$samples"
        sampler "$samples" &
        spid=$!
        wrk -t2 -c"$RESTART_CONC" -d600s --timeout "$WRK_TIMEOUT" -s "$BENCH/report.lua" "$URL" >"$wout" &
        wpid=$!
        sleep 0.3 # connections up
        t0=$EPOCHREALTIME
        if [ "$mode" = steady ]; then
            sleep "$DUR"
        else
            "$BATON" restart "--$mode" --wait --control "$BATON_SOCK" >"$WORK/restart-$mode.log" 2>&1 || rc=$?
        fi
        t1=$EPOCHREALTIME
        sleep 0.1
        kill -INT "$wpid"
        wait "$wpid" || true
        kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        [ "$rc" = 0 ] || { cat "$WORK/restart-$mode.log" >&2; die "baton restart --$mode --wait failed ($rc)"; }
        fig=$(sed -n 's/^WRKJSON //p' "$wout" | grep .) || die "no figures from wrk: $(cat "$wout")"
        awk -v t0="$t0" -v t1="$t1" -v n="$N" -v boot="$BOOT_MS" -v settle="$SETTLE_MS" -v mode="$mode" '
            { if ($1 > w) w = $1; if ($2 > p) p = $2; if ($3 > r) r = $3 }
            END {
                ms = (t1 - t0) * 1000
                printf "{\"window_ms\":%.1f,\"peak_workers\":%d,\"peak_worker_processes\":%d,", ms, w, p
                printf "\"peak_rss_bytes\":%d", r * 1024
                # rolling: the new workers boot and settle one after another; blocking: all at
                # once (and no settle period: no old worker is left to keep serving).
                if (mode == "rolling") printf ",\"restart_ms\":%.1f,\"overhead_per_worker_ms\":%.1f", ms, (ms - n * (boot + settle)) / n
                if (mode == "blocking") printf ",\"restart_ms\":%.1f,\"overhead_ms\":%.1f", ms, ms - boot
                print "}"
            }' "$samples" |
            jq -c --argjson w "$fig" '$w + . + {failed_requests: ($w.errors_connect + $w.errors_read
                + $w.errors_write + $w.errors_status + $w.errors_timeout)}'
    }
    summary() { jq -r '"\(.failed_requests) failed of \(.requests), p50 \(.p50_us)us p99 \(.p99_us)us max \(.max_us)us, window \(.window_ms | floor)ms, peak \(.peak_workers) workers"'; }

    # Steady windows before and after the rolling restart bracket it in time: the reference p99 is
    # their mean, so that a noisy neighbour during one window skews the comparison less.
    RSTEADY=$(under_load steady)
    log "steady: $(summary <<<"$RSTEADY")"
    ROLLING=$(under_load rolling)
    log "rolling: $(summary <<<"$ROLLING")"
    RSTEADY2=$(under_load steady)
    log "steady after: $(summary <<<"$RSTEADY2")"
    BLOCKING=$(under_load blocking)
    log "blocking: $(summary <<<"$BLOCKING")"
    RESTART_HWM_KIB=$(vm_kib "$BATON_PID" VmHWM)
    stop_pid "$BATON_PID"

    # --- 4. a CPU-heavy boot, with and without boot_cpu_weight -----------------------------------
    CPU_RUNS="$WORK/cpu-runs.jsonl"
    : >"$CPU_RUNS"
    for weight in low normal; do
        log "restarts: $N workers that burn $BOOT_CPU of CPU while booting, boot_cpu_weight = $weight"
        start_baton "cpu-$weight" 0s "boot_cpu_weight = \"$weight\"" "--boot-cpu $BOOT_CPU"
        URL="http://127.0.0.1:$BATON_PORT/"
        run_wrk "$RESTART_CONC" 1 "$URL" >/dev/null # warm-up
        cs=$(under_load steady)
        cr=$(under_load rolling)
        log "cpu-heavy boot, $weight: steady $(summary <<<"$cs"); rolling $(summary <<<"$cr")"
        jq -nc --arg w "$weight" --argjson s "$cs" --argjson r "$cr" '{weight: $w, steady: $s, rolling: $r}' >>"$CPU_RUNS"
        stop_pid "$BATON_PID"
    done

    # --- 5. idle client connections: what they cost the manager, and that it gets it back -------
    log "idle connections: $IDLE_CONNS held open, then closed"
    start_baton idle 0s
    # "Before" is a proxy that has served: its threads' allocator arenas exist. The question is
    # what 10,000 idle connections leave behind, not what the first requests set up.
    run_wrk 16 2 "http://127.0.0.1:$BATON_PORT/" >/dev/null
    sleep 1
    rss_before=$(vm_kib "$BATON_PID" VmRSS)
    IDLE_JSON=$(python3 "$BENCH/idle_connections.py" "$BATON_PORT" "$IDLE_CONNS" "$BATON_PID") ||
        die "the idle-connection run failed"
    IDLE_JSON=$(jq -c --argjson b "$((rss_before * 1024))" '. + {rss_before_bytes: $b}' <<<"$IDLE_JSON")
    log "idle connections: $(jq -r '"before \(.rss_before_bytes / 1048576 | floor) MiB, with \(.connections) open \(.rss_held_bytes / 1048576 | floor) MiB, after \(.rss_after_bytes / 1048576 | floor) MiB"' <<<"$IDLE_JSON")"
    stop_pid "$BATON_PID"
fi

# Section 6 runs in a full run and with --only tls.
if runs tls; then
    # --- 6. HTTPS and HTTP/2: baton and nginx with the same certificate --------------------------
    # One ECDSA P-256 certificate for both. nginx: `listen ... ssl http2`, TLS 1.2 and 1.3, a shared
    # session cache (tickets on, its default), upstream keepalive to N demo workers of its own, as
    # in section 1. baton: [tls] address and certificates, N demo workers. Measured in turn, TLS_ROUNDS
    # rounds; for each figure the round with the median requests/s stands, as in section 1.
    #   keepalive  wrk over https, keep-alive, at each of TLS_CONCS connections: one handshake per
    #              connection, then requests (HTTP/1.1: wrk offers no ALPN).
    #   handshake  wrk over https with `Connection: close`, HANDSHAKE_CONC connections: the proxy
    #              answers and closes, wrk reconnects, so each request is a new TCP connection and a
    #              TLS handshake, and req/s is handshakes/s. wrk would resume its last session on
    #              each reconnect (it keeps it across SSL_clear), which both servers accept: no
    #              certificate, no signature. bench/no_resume.c, preloaded into wrk, drops it, so
    #              every handshake is a full one (a new visitor's). The request also counts.
    #   http2      h2load -t2 -c16 -m10 (ALPN h2): 16 connections, 10 streams at once on each.
    #   idle       memory per idle TLS connection: TLS_IDLE connections that completed their
    #              handshake, then held idle for 2 s (bench/idle_connections.py --tls): the growth
    #              of baton's RSS, and of the sum of nginx's worker processes' RSS, over the count.
    #              Once with ALPN http/1.1, once with h2 (the client's preface and SETTINGS sent).
    # CPU per request as in section 1: /proc/PID/stat of the proxy's processes around each run.

    # run_h2load CONNECTIONS STREAMS SECONDS URL -> one JSON object on stdout: requests (succeeded),
    # rps, mean_us and max_us (h2load gives no percentiles), failed (failed, errored, timed out or
    # status >= 400), and what was negotiated.
    run_h2load() {
        local c=$1 m=$2 d=$3 url=$4 out
        out=$(h2load -t2 -c"$c" -m"$m" -D"$d" "$url" 2>&1) || die "h2load failed against $url: $out"
        printf '%s\n' "$out" >>"$WORK/h2load.out"
        awk '
            function us(v) {
                if (v ~ /us$/) return substr(v, 1, length(v) - 2) + 0
                if (v ~ /ms$/) return substr(v, 1, length(v) - 2) * 1000
                if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000000
                return v + 0
            }
            /^finished in/ { d = us(substr($3, 1, length($3) - 1)) / 1e6 }
            /^requests:/ { ok = $8; bad = $10 + $12 + $14 }
            /^status codes:/ { bad += $7 + $9 }
            /^time for request:/ { mean = us($6); max = us($5) }
            /^TLS Protocol:/ { proto = $3 }
            /^Cipher:/ { cipher = $2 }
            /^Server Temp Key:/ { key = $4 }
            /^Application protocol:/ { alpn = $3 }
            END {
                if (d == 0 || ok == "") exit 1
                printf "{\"requests\":%d,\"duration_s\":%.3f,\"rps\":%.1f,\"mean_us\":%.1f,\"max_us\":%d,", ok, d, ok / d, mean, max
                printf "\"failed\":%d,\"tls\":\"%s %s %s\",\"alpn\":\"%s\"}\n", bad, proto, cipher, key, alpn
            }' <<<"$out" || die "no figures from h2load: $out"
    }

    log "HTTPS: nginx (listen ssl http2) and baton ([tls]), the same ECDSA P-256 certificate, $N workers each"
    TLS_DIR="$WORK/tls"
    mkdir -p "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>"$TLS_DIR/openssl.log" ||
        die "openssl could not make the certificate: $(cat "$TLS_DIR/openssl.log")"
    cc -O2 -shared -fPIC -o "$TLS_DIR/no_resume.so" "$BENCH/no_resume.c" -ldl ||
        die "cannot build bench/no_resume.c"

    nginx_workers
    TLS_NGINX_WORKERS=("${NGINX_WORKERS[@]}")
    # Both proxies, on new ports: sets TLS_NGINX_PID, TLS_NGINX_PORT, TLS_BATON_PID, TLS_BATON_PORT.
    tls_start() {
        free_port
        TLS_NGINX_PORT=$PORT
        start_nginx "$WORK/nginx-tls" "        listen 127.0.0.1:$PORT ssl http2;
            ssl_certificate $TLS_DIR/cert.pem;
            ssl_certificate_key $TLS_DIR/key.pem;
            ssl_protocols TLSv1.2 TLSv1.3;
            ssl_session_cache shared:SSL:10m;
            ssl_session_timeout 1d;
            # nginx ends a connection after 1000 requests by default (a GOAWAY on HTTP/2), and
            # h2load does not reconnect: the HTTP/2 run would stop at 16,000 requests. baton has no
            # such limit; an operator who benchmarks raises it too.
            keepalive_requests 1000000;"
        TLS_NGINX_PID=$NGINX_PID
        wait_http "https://127.0.0.1:$TLS_NGINX_PORT/"
        free_port
        TLS_BATON_PORT=$PORT
        start_baton tls 0s "" "" "
    [tls]
    address = \"127.0.0.1:$TLS_BATON_PORT\"
    certificates = [{ cert = \"$TLS_DIR/cert.pem\", key = \"$TLS_DIR/key.pem\" }]"
        TLS_BATON_PID=$BATON_PID
        wait_http "https://127.0.0.1:$TLS_BATON_PORT/"
    }
    tls_stop() { stop_pid "$TLS_BATON_PID"; stop_pid "$TLS_NGINX_PID"; }
    tls_start

    # By name: wrk and h2load send it as SNI, as browsers do (rustls logs a warning for each
    # handshake that sends an IP address as SNI, which wrk does for https://127.0.0.1/).
    tls_url() { case $1 in nginx) echo "https://localhost:$TLS_NGINX_PORT/" ;; baton) echo "https://localhost:$TLS_BATON_PORT/" ;; esac; }
    tls_proxy_pids() {
        case $1 in
            nginx) echo "$TLS_NGINX_PID" $(pgrep -P "$TLS_NGINX_PID") ;;
            baton) echo "$TLS_BATON_PID" ;;
        esac
    }
    tls_app_pids() {
        case $1 in
            nginx) echo "${TLS_NGINX_WORKERS[@]}" ;;
            baton) pgrep -P "$TLS_BATON_PID" ;;
        esac
    }
    # What each side negotiates with an OpenSSL client that offers what wrk offers (no ALPN).
    tls_negotiated() {
        openssl s_client -connect "127.0.0.1:${1##*:}" -servername localhost </dev/null 2>/dev/null |
            awk '/^New, / { p = $2; sub(/,$/, "", p); c = $NF } /^Server Temp Key:/ { k = $4; sub(/,$/, "", k) }
                 END { printf "%s %s %s", p, c, k }'
    }

    TLS_RUNS="$WORK/tls-runs.jsonl"
    : >"$TLS_RUNS"
    tls_run() { # KIND TARGET CONNECTIONS ROUND
        local kind=$1 t=$2 c=$3 round=$4 url p0 a0 p1 a1 fig
        url=$(tls_url "$t")
        # shellcheck disable=SC2046 # word splitting of the pid lists is intended
        p0=$(cpu_ticks $(tls_proxy_pids "$t")) a0=$(cpu_ticks $(tls_app_pids "$t"))
        case $kind in
            keepalive) fig=$(run_wrk "$c" "$TLS_DUR" "$url") ;;
            handshake) fig=$(WRK_PRELOAD="$TLS_DIR/no_resume.so" run_wrk "$c" "$TLS_DUR" "$url" -H "Connection: close") ;;
            http2) fig=$(run_h2load "$c" "$H2_STREAMS" "$TLS_DUR" "$url") ;;
        esac
        # shellcheck disable=SC2046
        p1=$(cpu_ticks $(tls_proxy_pids "$t")) a1=$(cpu_ticks $(tls_app_pids "$t"))
        jq -c --arg k "$kind" --arg t "$t" --argjson c "$c" --argjson r "$round" \
            --argjson pus "$(((p1 - p0) * TICK_US))" --argjson aus "$(((a1 - a0) * TICK_US))" '
            {kind: $k, target: $t, concurrency: $c, round: $r} + .
            + {failed: (.failed // (.errors_connect + .errors_read + .errors_write + .errors_status + .errors_timeout)),
               proxy_cpu_us_per_request: ($pus / .requests * 10 | round / 10),
               app_cpu_us_per_request: ($aus / .requests * 10 | round / 10)}' <<<"$fig" >>"$TLS_RUNS"
        log "$(tail -n1 "$TLS_RUNS" | jq -r '"\(.kind) \(.target) c=\(.concurrency) round \(.round): \(.rps | floor) req/s, failed \(.failed), proxy CPU \(.proxy_cpu_us_per_request)us/req"')"
    }

    for t in nginx baton; do run_wrk 16 1 "$(tls_url "$t")" >/dev/null; done # warm-up
    TLS_NEGOTIATED=$(jq -nc --arg n "$(tls_negotiated "$TLS_NGINX_PORT")" --arg b "$(tls_negotiated "$TLS_BATON_PORT")" '{nginx: $n, baton: $b}')
    for c in "${TLS_CONCS[@]}"; do
        for round in $(seq 1 "$TLS_ROUNDS"); do
            for t in nginx baton; do tls_run keepalive "$t" "$c" "$round"; done
        done
    done
    for round in $(seq 1 "$TLS_ROUNDS"); do
        for t in nginx baton; do tls_run handshake "$t" "$HANDSHAKE_CONC" "$round"; done
    done
    for round in $(seq 1 "$TLS_ROUNDS"); do
        for t in nginx baton; do tls_run http2 "$t" "$H2_CONC" "$round"; done
    done

    # Idle TLS connections: the RSS of the processes that hold them (nginx's workers; baton). Each
    # ALPN on proxies started afresh and warmed up by 1 s of load (their allocators' arenas exist),
    # so that memory the first batch freed is not reused by the second without showing.
    TLS_IDLE_RUNS="$WORK/tls-idle.jsonl"
    : >"$TLS_IDLE_RUNS"
    for alpn in h1 h2; do
        tls_stop
        tls_start
        for t in nginx baton; do run_wrk 16 1 "$(tls_url "$t")" >/dev/null; done
        for t in nginx baton; do
            if [ "$t" = nginx ]; then
                port=$TLS_NGINX_PORT pids=$(pgrep -P "$TLS_NGINX_PID" | paste -sd, -)
            else
                port=$TLS_BATON_PORT pids=$TLS_BATON_PID
            fi
            sleep 1 # the last run's connections are gone
            fig=$(python3 "$BENCH/idle_connections.py" "$port" "$TLS_IDLE" "$pids" --tls "$alpn") ||
                die "the idle TLS connections to $t failed"
            jq -c --arg t "$t" '{target: $t} + .' <<<"$fig" >>"$TLS_IDLE_RUNS"
            log "idle TLS ($alpn) $t: $(jq -r '"\(.connections) connections, \(.bytes_per_connection / 1024 * 10 | round / 10) KiB each"' <<<"$fig")"
        done
    done
    tls_stop
    for p in "${TLS_NGINX_WORKERS[@]}"; do stop_pid "$p"; done

    # The HTTPS part of the JSON: {tls: {...}, targets: [...]}, the targets appended to the others.
    jq -n \
        --slurpfile runs "$TLS_RUNS" \
        --slurpfile idle "$TLS_IDLE_RUNS" \
        --argjson negotiated "$TLS_NEGOTIATED" \
        --argjson dur "$TLS_DUR" --argjson rounds "$TLS_ROUNDS" \
        --argjson hconc "$HANDSHAKE_CONC" --argjson h2conc "$H2_CONC" --argjson h2streams "$H2_STREAMS" '
    def median_run($k; $t; $c): [$runs[] | select(.kind == $k and .target == $t and .concurrency == $c)]
      | sort_by(.rps) | .[(length - 1) / 2 | floor];
    def r2: . * 100 | round / 100;
    def t($name; $value; $op; $limit; $unit):
      {name: $name, value: $value, op: $op, limit: $limit, unit: $unit, nginx: null,
       pass: (if $op == ">=" then $value >= $limit else $value <= $limit end)};
    ([$runs[] | [.kind, .concurrency]] | unique) as $keys
    | [ ("keepalive", "handshake", "http2") as $k | $keys[] | select(.[0] == $k) | .[1] as $c
        | median_run($k; "nginx"; $c) as $n | median_run($k; "baton"; $c) as $b
        | {kind: $k, concurrency: $c, nginx: $n, baton: $b,
           rps_ratio: ($b.rps / $n.rps | r2),
           cpu_ratio: ($b.proxy_cpu_us_per_request / $n.proxy_cpu_us_per_request | r2)} ] as $figs
    | [ ("h1", "h2") as $a | ($a | if . == "h1" then "http/1.1" else "h2" end) as $alpn
        | first($idle[] | select(.alpn == $alpn and .target == "nginx")) as $n
        | first($idle[] | select(.alpn == $alpn and .target == "baton")) as $b
        | {alpn: $alpn, connections: $n.connections, nginx: $n, baton: $b,
           bytes_ratio: ($b.bytes_per_connection / ([$n.bytes_per_connection, 1] | max) | r2)} ] as $idlefigs
    | def fname($f): if $f.kind == "keepalive" then "TLS keep-alive (c=\($f.concurrency))"
                     elif $f.kind == "handshake" then "TLS full handshakes (c=\($f.concurrency))"
                     else "HTTP/2 (h2load -c\($f.concurrency) -m\($h2streams))" end;
    {
      tls: {certificate: "ECDSA P-256 (prime256v1), self-signed, the same file for both",
            negotiated: {wrk: $negotiated,
                         h2load: ([$runs[] | select(.kind == "http2") | {(.target): "\(.tls) \(.alpn)"}] | add)},
            duration_s: $dur, rounds: $rounds, handshake_connections: $hconc,
            http2: {connections: $h2conc, streams: $h2streams},
            figures: $figs, idle: $idlefigs, runs: $runs},
      targets: (
        [ $figs[] as $f | t("\(fname($f)): baton req/s >= nginx req/s"; $f.baton.rps; ">="; $f.nginx.rps; "req/s")
          + {ratio: $f.rps_ratio} ]
        + [ $figs[] | select(.kind != "keepalive" or .concurrency > 1) as $f
            | t("\(fname($f)): baton proxy CPU/req <= nginx'"'"'s"; $f.baton.proxy_cpu_us_per_request; "<=";
                $f.nginx.proxy_cpu_us_per_request; "us") + {ratio: $f.cpu_ratio} ]
        + [ $idlefigs[] as $i | t("idle TLS connection (\($i.alpn)): baton bytes <= nginx'"'"'s";
              $i.baton.bytes_per_connection / 1024; "<="; $i.nginx.bytes_per_connection / 1024; "KiB")
              + {ratio: $i.bytes_ratio} ]
      )
    }' >"$WORK/tls.json"
fi

# Section 7 runs in a full run and with --only static.
if runs static; then
    # --- 7. static files: baton's [static] against nginx's root ------------------------------
    # One release directory, RELEASE/public/assets/a-1k.bin (1 KiB) and a-1m.bin (1 MiB) of
    # random bytes, served by both:
    #   nginx  `location /assets/ { root RELEASE/public; }`, configured as its users do for
    #          static files: sendfile on, tcp_nopush on, open_file_cache max=1000 inactive=20s
    #          (open_file_cache_valid 30s, min_uses 2, errors on: the values nginx's docs and
    #          most tuning guides show), mime.types included, keepalive_requests 1000000 (baton
    #          has no per-connection limit; an operator who benchmarks raises it, as in section 6),
    #          no access log; no gzip (the files are random bytes, .bin).
    #   baton  [app] directory = RELEASE, [static] directory = "public", prefixes = ["/assets"],
    #          N demo workers behind it (which must serve none of these requests).
    # wrk keep-alive at each of STATIC_CONCS connections, for each file, the two measured back to
    # back, each first in every other round, STATIC_ROUNDS rounds (BATON_BENCH_STATIC_ROUNDS,
    # default 5); the figures are the medians of the rounds' baton/nginx ratios (this VM's pace
    # moves by 30 % within a minute: a ratio of two runs seconds apart is what holds), each
    # one's median round shown beside them. CPU per request: the
    # proxy's processes alone (nginx's master and workers; baton's process): no worker is
    # involved. The requests baton's workers finished during the section (`processed` in its
    # status) are recorded: any would mean a static request reached a worker.
    log "static files: nginx (root, sendfile, open_file_cache) and baton ([static]), 1 KiB and 1 MiB"
    RELEASE="$WORK/release"
    mkdir -p "$RELEASE/public/assets"
    head -c 1024 /dev/urandom >"$RELEASE/public/assets/a-1k.bin"
    head -c 1048576 /dev/urandom >"$RELEASE/public/assets/a-1m.bin"
    STATIC_FILES=(a-1k.bin a-1m.bin)

    free_port
    STATIC_NGINX_PORT=$PORT
    dir="$WORK/nginx-static"
    mkdir -p "$dir"
    mime=""
    [ ! -f /etc/nginx/mime.types ] || mime="include /etc/nginx/mime.types;"
    cat >"$dir/nginx.conf" <<NGINX
user root;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    $mime
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=1000 inactive=20s;
    open_file_cache_valid 30s;
    open_file_cache_min_uses 2;
    open_file_cache_errors on;
    keepalive_requests 1000000;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$STATIC_NGINX_PORT;
        location /assets/ {
            root $RELEASE/public;
        }
    }
}
NGINX
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    STATIC_NGINX_PID=$!
    PIDS+=("$STATIC_NGINX_PID")
    wait_http "http://127.0.0.1:$STATIC_NGINX_PORT/assets/a-1k.bin"

    start_baton static 0s "" "" "
[static]
directory = \"public\"
prefixes = [\"/assets\"]" "directory = \"$RELEASE\""
    STATIC_BATON_PID=$BATON_PID
    STATIC_BATON_PORT=$BATON_PORT
    wait_http "http://127.0.0.1:$STATIC_BATON_PORT/assets/a-1k.bin"
    for f in "${STATIC_FILES[@]}"; do
        for u in "http://127.0.0.1:$STATIC_NGINX_PORT" "http://127.0.0.1:$STATIC_BATON_PORT"; do
            cmp -s <(curl -fsS "$u/assets/$f") "$RELEASE/public/assets/$f" || die "$u/assets/$f: not the file's bytes"
        done
    done
    # Requests baton's workers have finished, all generations.
    worker_processed() { status_json | jq '[.workers[].processed] | add // 0'; }
    STATIC_PROCESSED0=$(worker_processed)

    static_url() { # TARGET FILE
        case $1 in
            nginx) echo "http://127.0.0.1:$STATIC_NGINX_PORT/assets/$2" ;;
            baton) echo "http://127.0.0.1:$STATIC_BATON_PORT/assets/$2" ;;
        esac
    }
    static_proxy_pids() {
        case $1 in
            nginx) echo "$STATIC_NGINX_PID" $(pgrep -P "$STATIC_NGINX_PID") ;;
            baton) echo "$STATIC_BATON_PID" ;;
        esac
    }
    STATIC_RUNS="$WORK/static-runs.jsonl"
    : >"$STATIC_RUNS"
    for f in "${STATIC_FILES[@]}"; do
        for t in nginx baton; do run_wrk 16 1 "$(static_url "$t" "$f")" >/dev/null; done # warm-up
    done
    for f in "${STATIC_FILES[@]}"; do
        bytes=$(stat -c %s "$RELEASE/public/assets/$f")
        for c in "${STATIC_CONCS[@]}"; do
            for round in $(seq 1 "$STATIC_ROUNDS"); do
                # Back to back, each first in every other round: the machine's pace drifts,
                # and a round's ratio compares two runs a few seconds apart.
                if ((round % 2)); then order="nginx baton"; else order="baton nginx"; fi
                for t in $order; do
                    # shellcheck disable=SC2046 # word splitting of the pid lists is intended
                    p0=$(cpu_ticks $(static_proxy_pids "$t"))
                    fig=$(run_wrk "$c" "$STATIC_DUR" "$(static_url "$t" "$f")")
                    # shellcheck disable=SC2046
                    p1=$(cpu_ticks $(static_proxy_pids "$t"))
                    jq -c --arg t "$t" --arg f "$f" --argjson b "$bytes" --argjson c "$c" --argjson r "$round" \
                        --argjson pus "$(((p1 - p0) * TICK_US))" '
                        {file: $f, bytes: $b, target: $t, concurrency: $c, round: $r} + .
                        + {failed: (.errors_connect + .errors_read + .errors_write + .errors_status + .errors_timeout),
                           mib_per_s: (.rps * $b / 1048576 * 10 | round / 10),
                           proxy_cpu_us_per_request: ($pus / .requests * 10 | round / 10)}' <<<"$fig" >>"$STATIC_RUNS"
                    log "$(tail -n1 "$STATIC_RUNS" | jq -r '"static \(.file) \(.target) c=\(.concurrency) round \(.round): \(.rps | floor) req/s (\(.mib_per_s) MiB/s), failed \(.failed), proxy CPU \(.proxy_cpu_us_per_request)us/req"')"
                done
            done
        done
    done
    STATIC_WORKER_REQUESTS=$(($(worker_processed) - STATIC_PROCESSED0))
    log "static: baton's workers finished $STATIC_WORKER_REQUESTS requests meanwhile (must be 0)"
    stop_pid "$STATIC_BATON_PID"
    stop_pid "$STATIC_NGINX_PID"

    jq -n --slurpfile runs "$STATIC_RUNS" --argjson worker_requests "$STATIC_WORKER_REQUESTS" \
        --argjson dur "$STATIC_DUR" --argjson rounds "$STATIC_ROUNDS" '
    def median_run($f; $t; $c): [$runs[] | select(.file == $f and .target == $t and .concurrency == $c)]
      | sort_by(.rps) | .[(length - 1) / 2 | floor];
    def run($f; $t; $c; $r): [$runs[] | select(.file == $f and .target == $t and .concurrency == $c and .round == $r)][0];
    def median: sort | .[(length - 1) / 2 | floor];
    # baton / nginx of each round (the two measured a few seconds apart) of this figure.
    def round_ratios($f; $c; k): [range(1; $rounds + 1) as $r | (run($f; "baton"; $c; $r) | k) / (run($f; "nginx"; $c; $r) | k)];
    def r2: . * 100 | round / 100;
    def t($name; $value; $op; $limit; $unit):
      {name: $name, value: $value, op: $op, limit: $limit, unit: $unit, nginx: null,
       pass: (if $op == ">=" then $value >= $limit elif $op == "<=" then $value <= $limit else $value == $limit end)};
    def size: if . >= 1048576 then "\(. / 1048576) MiB" else "\(. / 1024) KiB" end;
    ([$runs[] | [.file, .bytes, .concurrency]] | unique | sort_by(.[1], .[2])) as $keys
    | [ $keys[] | .[0] as $f | .[1] as $b | .[2] as $c
        | median_run($f; "nginx"; $c) as $n | median_run($f; "baton"; $c) as $x
        | round_ratios($f; $c; .rps) as $rr
        | round_ratios($f; $c; .proxy_cpu_us_per_request) as $cr
        | {file: $f, bytes: $b, concurrency: $c, nginx: $n, baton: $x,
           rps_ratio: ($rr | median | r2), cpu_ratio: ($cr | median | r2),
           round_rps_ratios: [$rr[] | r2], round_cpu_ratios: [$cr[] | r2]} ] as $figs
    | {
      static: {nginx: "location /assets/ { root ...; }, sendfile on, tcp_nopush on, open_file_cache max=1000 inactive=20s (valid 30s, min_uses 2, errors on), keepalive_requests 1000000, access_log off",
               baton: "[app] directory = the release, [static] directory = \"public\", prefixes = [\"/assets\"]",
               duration_s: $dur, rounds: $rounds, worker_requests: $worker_requests,
               figures: $figs, runs: $runs},
      targets: (
        [ $figs[] as $f | t("static \($f.bytes | size) (c=\($f.concurrency)): baton req/s >= nginx'"'"'s";
            $f.rps_ratio * 100; ">="; 100; "% (baton/nginx)") ]
        + [ $figs[] | select(.concurrency > 1) as $f
            | t("static \($f.bytes | size) (c=\($f.concurrency)): baton CPU/req <= nginx'"'"'s";
                $f.cpu_ratio * 100; "<="; 100; "% (baton/nginx)") ]
        + [ t("static: requests that reached baton'"'"'s workers = 0"; $worker_requests; "=="; 0; "") ]
      )
    }' >"$WORK/static.json"
fi

# Section 8 runs in a full run and with --only log.
if runs log; then
    # --- 8. the access log: what it costs the proxy -------------------------------------------
    # Three baton instances with N demo workers each, up at once: "on" with [log] access = a
    # file (format "combined" and request_id, whose default is on with a log: each request gets
    # an X-Request-Id, passed to the worker: what an operator gets by turning the log on), "off"
    # and "off2" without [log]. LOG_CONC connections to `/` (plain proxying), the three measured
    # in turn (wrk), LOG_ROUNDS rounds in LOG_BLOCKS blocks, each block with fresh instances.
    # The figure: the median of the rounds' ratios of on's proxy CPU per request to the mean of
    # the two off's (the target is about CPU); off2/off, taken the same way, shows what the
    # machine's noise alone makes of two equal instances. The log's writer thread is in baton's process, so its CPU counts.
    # Honesty: the lines written (counted after the last block, each "on" having written every
    # queued line as it stopped) against the requests its workers finished (`processed` in the
    # status, read before each stop), and baton_access_log_dropped_total from /metrics.
    log "access log: baton with [log] access = a file, and without, $N workers each, c=$LOG_CONC"
    ACCESS_FILE="$WORK/access.log"
    LOG_RUNS="$WORK/log-runs.jsonl"
    : >"$LOG_RUNS"
    log_port() { case $1 in on) echo "$LOG_ON_PORT" ;; off) echo "$LOG_OFF_PORT" ;; off2) echo "$LOG_OFF2_PORT" ;; esac; }
    log_pid() { case $1 in on) echo "$LOG_ON_PID" ;; off) echo "$LOG_OFF_PID" ;; off2) echo "$LOG_OFF2_PID" ;; esac; }
    # The order of a round: the machine's pace drifts over a minute (a VM's neighbours), and
    # each round's ratio compares measurements made a few seconds apart, each instance first as
    # often as the others.
    log_order() { case $(($1 % 3)) in 1) echo "off on off2" ;; 2) echo "on off2 off" ;; 0) echo "off2 off on" ;; esac; }
    # Fresh instances for every block of rounds, started in a turned order: two equal
    # instances differ by a few per cent for their whole life (where their threads and
    # workers landed), which no number of rounds of the same three averages out.
    log_start() {
        local v w
        for v in $(log_order "$1"); do
            case $v in
                off) start_baton log-off 0s; LOG_OFF_PID=$BATON_PID LOG_OFF_PORT=$BATON_PORT ;;
                off2) start_baton log-off2 0s; LOG_OFF2_PID=$BATON_PID LOG_OFF2_PORT=$BATON_PORT ;;
                on)
                    start_baton log-on 0s "" "" "
[log]
access = \"$ACCESS_FILE\"
format = \"combined\""
                    LOG_ON_PID=$BATON_PID LOG_ON_PORT=$BATON_PORT LOG_ON_SOCK=$BATON_SOCK ;;
            esac
            w=$(run_wrk "$LOG_CONC" 1 "http://127.0.0.1:$(log_port "$v")/" | jq .requests) # warm-up
            [ "$v" != on ] || LOG_WARMUP=$((LOG_WARMUP + w))
        done
    }
    # Stop a block's instances; what "on" answered and dropped is added up first, and its
    # stop writes every line it queued (the next "on" appends to the same file).
    LOG_ANSWERED=0 LOG_DROPPED=0
    log_stop() {
        local answered dropped
        BATON_SOCK=$LOG_ON_SOCK
        answered=$(status_json | jq '[.workers[].processed] | add // 0')
        dropped=$(curl -fsS --max-time 2 --unix-socket "$LOG_ON_SOCK" http://baton/metrics |
            awk '$1 ~ /^baton_access_log_dropped_total/ { print $2 }')
        [ -n "$dropped" ] || die "no baton_access_log_dropped_total in /metrics"
        LOG_ANSWERED=$((LOG_ANSWERED + answered)) LOG_DROPPED=$((LOG_DROPPED + dropped))
        stop_pid "$LOG_ON_PID"
        stop_pid "$LOG_OFF_PID"
        stop_pid "$LOG_OFF2_PID"
    }
    # One round of INSTANCE at full speed (wrk), into LOG_RUNS.
    log_full_speed() {
        local v=$1 round=$2 p0 p1 fig
        p0=$(cpu_ticks "$(log_pid "$v")")
        fig=$(run_wrk "$LOG_CONC" "$LOG_DUR" "http://127.0.0.1:$(log_port "$v")/")
        p1=$(cpu_ticks "$(log_pid "$v")")
        jq -c --arg v "$v" --argjson c "$LOG_CONC" --argjson r "$round" --argjson pus "$(((p1 - p0) * TICK_US))" '
            {log: $v, concurrency: $c, round: $r} + .
            + {failed: (.errors_connect + .errors_read + .errors_write + .errors_status + .errors_timeout),
               proxy_cpu_us_per_request: ($pus / .requests * 10 | round / 10)}' <<<"$fig" >>"$LOG_RUNS"
        log "$(tail -n1 "$LOG_RUNS" | jq -r '"access log \(.log) c=\(.concurrency) round \(.round): \(.rps | floor) req/s, failed \(.failed), proxy CPU \(.proxy_cpu_us_per_request)us/req"')"
    }
    LOG_WARMUP=0
    for block in $(seq 1 "$LOG_BLOCKS"); do
        first=$(((block - 1) * LOG_ROUNDS / LOG_BLOCKS + 1)) last=$((block * LOG_ROUNDS / LOG_BLOCKS))
        log_start "$block"
        for round in $(seq "$first" "$last"); do
            for v in $(log_order "$round"); do log_full_speed "$v" "$round"; done
        done
        log_stop
    done
    LOG_LINES=$(wc -l <"$ACCESS_FILE")
    LOG_BYTES=$(stat -c %s "$ACCESS_FILE")
    log "access log: $LOG_LINES lines written, $LOG_ANSWERED requests answered by the workers, $LOG_DROPPED dropped"

    jq -n --slurpfile runs "$LOG_RUNS" --argjson lines "$LOG_LINES" --argjson bytes "$LOG_BYTES" \
        --argjson answered "$LOG_ANSWERED" --argjson dropped "$LOG_DROPPED" --argjson warmup "$LOG_WARMUP" \
        --argjson c "$LOG_CONC" --argjson dur "$LOG_DUR" --argjson rounds "$LOG_ROUNDS" --argjson blocks "$LOG_BLOCKS" '
    def median_cpu($v): [$runs[] | select(.log == $v)] | sort_by(.proxy_cpu_us_per_request)
      | .[(length - 1) / 2 | floor];
    def median_rps($v): [$runs[] | select(.log == $v) | .rps] | sort | .[(length - 1) / 2 | floor];
    def r3: . * 1000 | round / 1000;
    def t($name; $value; $op; $limit; $unit):
      {name: $name, value: $value, op: $op, limit: $limit, unit: $unit, nginx: null,
       pass: (if $op == "<=" then $value <= $limit else $value == $limit end)};
    def cpu_of($set; $v; $r): [$set[] | select(.log == $v and .round == $r)][0].proxy_cpu_us_per_request;
    def cpu($v; $r): cpu_of($runs; $v; $r);
    def median: sort | .[(length - 1) / 2 | floor];
    # "on" against the mean of the two instances without the log (the figure), and the
    # second of those against the first (the control: what the noise alone makes).
    def ratios($set): [range(1; $rounds + 1) as $r
      | cpu_of($set; "on"; $r) / ((cpu_of($set; "off"; $r) + cpu_of($set; "off2"; $r)) / 2)];
    def noise($set): [range(1; $rounds + 1) as $r | cpu_of($set; "off2"; $r) / cpu_of($set; "off"; $r)];
    median_cpu("off") as $off | median_cpu("on") as $on
    | ratios($runs) as $ratios
    | ($ratios | median | r3) as $ratio
    | noise($runs) as $noise
    | ($noise | median | r3) as $noise_ratio
    | {
      access_log: {format: "combined", request_id: true, concurrency: $c, duration_s: $dur,
                   rounds: $rounds, off: $off, on: $on, cpu_ratio: $ratio,
                   round_ratios: [$ratios[] | r3],
                   control_ratio: $noise_ratio, control_round_ratios: [$noise[] | r3],
                   rps_off: median_rps("off"), rps_on: median_rps("on"),
                   rps_ratio: (median_rps("on") / median_rps("off") | r3),
                   wrk_requests: ([$runs[] | select(.log == "on") | .requests] | add + $warmup),
                   blocks: $blocks,
                   requests_answered: $answered, lines_written: $lines, bytes_written: $bytes,
                   dropped: $dropped, runs: $runs},
      targets: [
        t("access log on: proxy CPU/req <= 105 % of off (c=\($c))"; $ratio * 100; "<="; 105; "%"),
        t("access log: lines written = requests answered"; $lines; "=="; $answered; ""),
        t("access log: entries dropped = 0"; $dropped; "=="; 0; "")
      ]
    }' >"$WORK/log.json"
fi

BUSY1=$(machine_busy) OWN1=$(own_cpu) T1=$EPOCHREALTIME
OTHER_CPU=$(awk -v b="$((BUSY1 - BUSY0))" -v o="$((OWN1 - OWN0))" -v t0="$T0" -v t1="$T1" \
    -v n="$(nproc)" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { x = (b - o) / ((t1 - t0) * n * hz); if (x < 0) x = 0; printf "%.3f", x }')

# --- results -------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
META=$(jq -nc \
    --argjson short "$([ "$SHORT" = 1 ] && echo true || echo false)" \
    --arg only "$ONLY" \
    --argjson n "$N" --argjson dur "$DUR" --argjson rounds "$ROUNDS" --argjson boot_ms "$BOOT_MS" \
    --argjson rconc "$RESTART_CONC" \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg commit "$(if [ -n "$BATON_BIN" ]; then
        # Another binary than this tree's: the checkout's commit would name the wrong code.
        echo "binary $BATON_BIN, sha256 $(sha256sum "$BATON_BIN" | cut -c1-12)"
    else
        git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown
        [ -z "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] || echo "+changes"
    fi | paste -sd '' -)" \
    --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    --argjson cpus "$(nproc)" \
    --argjson other_cpu "$OTHER_CPU" \
    --arg kernel "$(uname -r)" \
    --arg wrk "$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')" \
    --arg nginx "$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')" \
    --arg h2load "$(h2load --version 2>&1 | awk 'NR == 1 { print $2 }')" \
    --arg openssl "$(openssl version | awk '{ print $2 }')" '
    {date: $date, commit: $commit, short: $short, only: (if $only == "" then null else $only end),
     workers: $n, duration_s: $dur, rounds: $rounds, boot_ms: $boot_ms,
     restart_connections: $rconc, cpus: $cpus, cpu: $cpu, kernel: $kernel, wrk: $wrk,
     nginx: $nginx, h2load: $h2load, openssl: $openssl, other_cpu_share: $other_cpu}')
if [ -n "$ONLY" ]; then
    jq -n --argjson meta "$META" '{meta: $meta, targets: []}' >"$WORK/plain.json"
else
    jq -n \
        --argjson meta "$META" \
        --slurpfile runs "$STEADY_RUNS" \
        --argjson rsteady "$RSTEADY" \
        --argjson rsteady2 "$RSTEADY2" \
        --argjson rolling "$ROLLING" \
        --argjson blocking "$BLOCKING" \
        --slurpfile cpu "$CPU_RUNS" \
        --argjson idle "$IDLE_JSON" \
        --argjson n "$N" \
        --argjson steady_hwm "$((STEADY_HWM_KIB * 1024))" \
        --argjson restart_hwm "$((RESTART_HWM_KIB * 1024))" '
# The round with the median requests/s stands for each (target, concurrency).
def median_run($t; $c): [$runs[] | select(.target == $t and .concurrency == $c)] | sort_by(.rps)
  | .[(length - 1) / 2 | floor];
def t($name; $value; $op; $limit; $unit; $ref):
  {name: $name, value: $value, op: $op, limit: $limit, unit: $unit, nginx: $ref,
   pass: (if $op == ">=" then $value >= $limit elif $op == "<=" then $value <= $limit
          elif $op == "<" then $value < $limit else $value == $limit end)};
def t($name; $value; $op; $limit; $unit): t($name; $value; $op; $limit; $unit; null);
($runs | map(.concurrency) | unique) as $concs
| [$concs[] as $c | ("direct", "nginx", "baton") as $t | median_run($t; $c)] as $steady
| def fig($t; $c): first($steady[] | select(.target == $t and .concurrency == $c));
  ([$steady_hwm, $restart_hwm, $rsteady.peak_rss_bytes, $rolling.peak_rss_bytes,
    $rsteady2.peak_rss_bytes, $blocking.peak_rss_bytes] | max) as $rss
| (($rsteady.p99_us + $rsteady2.p99_us) / 2) as $ref_p99
| {
  meta: $meta,
  steady: $steady,
  added_p50_us: [ $concs[] as $c
                  | {concurrency: $c,
                     nginx: (fig("nginx"; $c).p50_us - fig("direct"; $c).p50_us),
                     baton: (fig("baton"; $c).p50_us - fig("direct"; $c).p50_us)} ],
  restart: {steady: $rsteady, rolling: $rolling, steady_after: $rsteady2, blocking: $blocking,
            steady_p99_us: $ref_p99, rolling_p99_ratio: ($rolling.p99_us / $ref_p99 * 100 | round / 100)},
  cpu_heavy_boot: $cpu,
  idle_connections: $idle,
  manager_rss_bytes: {steady_peak: $steady_hwm, restart_peak: $restart_hwm, peak: $rss},
  targets: (
    [ $concs[] as $c | t("baton req/s >= nginx req/s (c=\($c))";
        fig("baton"; $c).rps; ">="; fig("nginx"; $c).rps; "req/s") ]
    + [ $concs[] | select(. > 1) as $c | t("baton proxy CPU/req <= nginx proxy CPU/req (c=\($c))";
        fig("baton"; $c).proxy_cpu_us_per_request; "<="; fig("nginx"; $c).proxy_cpu_us_per_request; "us") ]
    + [ t("baton p50 - direct p50 <= nginx p50 - direct p50 (c=1)";
        fig("baton"; 1).p50_us - fig("direct"; 1).p50_us; "<=";
        fig("nginx"; 1).p50_us - fig("direct"; 1).p50_us; "us") ]
    + [ $concs[] as $c | t("baton p50 - direct p50 < 100us (c=\($c))";
        fig("baton"; $c).p50_us - fig("direct"; $c).p50_us; "<"; 100; "us";
        fig("nginx"; $c).p50_us - fig("direct"; $c).p50_us) ]
    + [ t("rolling restart: failed requests = 0"; $rolling.failed_requests; "=="; 0; ""),
        t("rolling restart: p99 <= 1.5 x steady p99"; $rolling.p99_us; "<=";
          1.5 * $ref_p99; "us"),
        t("rolling restart: time per worker beyond boot and settle < 50ms";
          $rolling.overhead_per_worker_ms; "<"; 50; "ms"),
        t("rolling restart: peak workers <= N + max_surge"; $rolling.peak_workers; "<=";
          $n + 1; ""),
        t("manager RSS < 20MB with \($n) workers"; $rss / 1000000; "<"; 20; "MB") ]
    + [ first($cpu[] | select(.weight == "low")) as $low
        | t("cpu-heavy boot, low weight: failed requests = 0"; $low.rolling.failed_requests; "=="; 0; ""),
          t("cpu-heavy boot: window max <= 1.5 x steady p99"; $low.rolling.max_us; "<=";
            1.5 * $low.steady.p99_us; "us"),
          t("cpu-heavy boot: window p99.9 <= 1.5 x steady p99.9"; $low.rolling.p999_us; "<=";
            1.5 * $low.steady.p999_us; "us") ]
    + [ t("RSS after \($idle.connections) idle connections closed <= 1.1 x before";
          $idle.rss_after_bytes / 1048576; "<="; 1.1 * $idle.rss_before_bytes / 1048576; "MiB"),
        t("the last of \($idle.connections) idle connections is served"; (if $idle.last_answered then 1 else 0 end); "=="; 1; "") ]
  ),
  steady_runs: $runs
}' >"$WORK/plain.json"
fi
# The figures of the HTTPS, static-file and access-log sections go in beside the others (before
# steady_runs, the raw rounds), their targets after theirs. A section that did not run is {}.
for f in tls static log; do [ -f "$WORK/$f.json" ] || echo '{}' >"$WORK/$f.json"; done
jq -s '.[0] as $p | .[1:] as $s
    | ($p | del(.steady_runs, .targets)) + ([$s[] | del(.targets)] | add)
      + {targets: ($p.targets + ([$s[] | .targets // []] | add))}
      + (if $p.steady_runs then {steady_runs: $p.steady_runs} else {} end)' \
    "$WORK/plain.json" "$WORK/tls.json" "$WORK/static.json" "$WORK/log.json" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"

# --- table ---------------------------------------------------------------------------------
jq -r '
def us: if . >= 10000 then "\(. / 1000 | round)ms" elif . >= 1000 then "\(. / 100 | round / 10)ms" else "\(.)us" end;
def ms: "\(. | round)ms";
def num: . * 10 | round / 10 | tostring;
def pad($n): tostring | if length >= $n then . else . + (" " * ($n - length)) end;
def lpad($n): tostring | if length >= $n then . else (" " * ($n - length)) + . end;
def failed: .errors_connect + .errors_read + .errors_write + .errors_status + .errors_timeout;
"baton benchmark, \(.meta.date), commit \(.meta.commit), \(.meta.cpus) CPUs, \(.meta.workers) workers\(if .meta.short then " (--short)" else "" end)",
"Other processes used \(.meta.other_cpu_share * 100 | round)% of the CPU during the run\(if .meta.other_cpu_share > 0.05 then ": WARNING, these figures are disturbed; run again on a quiet machine" else "" end)",
"",
(if .steady then (
"Steady state: wrk -> target, keep-alive; median of \(.meta.rounds) round(s) of \(.meta.duration_s)s",
"  \("target" | pad(7)) \("conc" | lpad(4)) \("req/s" | lpad(8)) \("p50" | lpad(7)) \("p99" | lpad(7)) \("max" | lpad(7)) \("failed" | lpad(6)) \("proxy CPU/req" | lpad(13)) \("app CPU/req" | lpad(11))",
(.steady[] | "  \(.target | pad(7)) \(.concurrency | lpad(4)) \(.rps | floor | lpad(8)) \(.p50_us | us | lpad(7)) \(.p99_us | us | lpad(7)) \(.max_us | us | lpad(7)) \(failed | lpad(6)) \(if .target == "direct" then "-" else "\(.proxy_cpu_us_per_request | num)us" end | lpad(13)) \("\(.app_cpu_us_per_request | num)us" | lpad(11))"),
"",
"Restarts under load: \(.meta.restart_connections) connections, \(.meta.workers) workers, app boot \(.meta.boot_ms)ms",
"  \("window" | pad(8)) \("length" | lpad(7)) \("req/s" | lpad(7)) \("failed" | lpad(6)) \("p50" | lpad(7)) \("p99" | lpad(7)) \("p99.9" | lpad(7)) \("max" | lpad(7)) \("beyond boot" | lpad(14)) \("peak workers" | lpad(12))",
(.restart as $r | ("steady", "rolling", "steady_after", "blocking") as $k | $r[$k] |
  "  \($k | sub("steady_after"; "steady") | pad(8)) \(.window_ms | ms | lpad(7)) \(.rps | floor | lpad(7)) \(.failed_requests | lpad(6)) \(.p50_us | us | lpad(7)) \(.p99_us | us | lpad(7)) \(.p999_us | us | lpad(7)) \(.max_us | us | lpad(7)) \(if .overhead_per_worker_ms then "\(.overhead_per_worker_ms | ms)/worker" elif .overhead_ms then "\(.overhead_ms | ms) total" else "-" end | lpad(14)) \(.peak_workers | lpad(12))"),
"",
"  rolling p99 / mean steady p99: \(.restart.rolling_p99_ratio)",
"",
"A CPU-heavy boot (each new worker burns CPU before it listens), by boot_cpu_weight",
"  \("weight" | pad(8)) \("window" | pad(8)) \("length" | lpad(7)) \("req/s" | lpad(7)) \("failed" | lpad(6)) \("p50" | lpad(7)) \("p99" | lpad(7)) \("p99.9" | lpad(7)) \("max" | lpad(7))",
(.cpu_heavy_boot[] as $c | ("steady", "rolling") as $k | $c[$k] |
  "  \($c.weight | pad(8)) \($k | pad(8)) \(.window_ms | ms | lpad(7)) \(.rps | floor | lpad(7)) \(.failed_requests | lpad(6)) \(.p50_us | us | lpad(7)) \(.p99_us | us | lpad(7)) \(.p999_us | us | lpad(7)) \(.max_us | us | lpad(7))"),
"  max / p99 in the steady windows, no restart running (the floor of the window-max target here): \([.cpu_heavy_boot[].steady | .max_us / .p99_us * 10 | round / 10] | map(tostring) | join(", "))",
"",
"Idle client connections: \(.idle_connections.connections) open: manager RSS \(.idle_connections.rss_before_bytes / 1048576 | num) MiB before, \(.idle_connections.rss_held_bytes / 1048576 | num) MiB with them, \(.idle_connections.rss_after_bytes / 1048576 | num) MiB after they closed",
"",
"Manager RSS, peak: \(.manager_rss_bytes.peak / 1048576 | num) MiB",
"") else empty end),
(.tls | select(.) |
"HTTPS: nginx (listen ssl http2) and baton ([tls]), \(.certificate); median of \(.rounds) round(s) of \(.duration_s)s",
"  negotiated with wrk (OpenSSL defaults): nginx \(.negotiated.wrk.nginx), baton \(.negotiated.wrk.baton)",
"  negotiated with h2load: nginx \(.negotiated.h2load.nginx), baton \(.negotiated.h2load.baton)",
"  \("figure" | pad(38)) \("nginx" | lpad(8)) \("baton" | lpad(8)) \("ratio" | lpad(6)) \("failed" | lpad(7)) \("proxy CPU/req nginx" | lpad(19)) \("baton" | lpad(8)) \("ratio" | lpad(6))",
(.figures[] |
  "  \(if .kind == "keepalive" then "keep-alive req/s, c=\(.concurrency)" elif .kind == "handshake" then "full handshakes/s, c=\(.concurrency)" else "HTTP/2 req/s, h2load -c\(.concurrency) -m10" end | pad(38)) \(.nginx.rps | floor | lpad(8)) \(.baton.rps | floor | lpad(8)) \(.rps_ratio | lpad(6)) \("\(.nginx.failed)/\(.baton.failed)" | lpad(7)) \("\(.nginx.proxy_cpu_us_per_request | num)us" | lpad(19)) \("\(.baton.proxy_cpu_us_per_request | num)us" | lpad(8)) \(.cpu_ratio | lpad(6))"),
(.idle[] |
  "  \("idle TLS connection (\(.alpn)), bytes" | pad(38)) \(.nginx.bytes_per_connection | lpad(8)) \(.baton.bytes_per_connection | lpad(8)) \(.bytes_ratio | lpad(6))   (\(.connections) held; RSS growth / connections)"),
"  ratio: baton / nginx, from the same run. failed: nginx/baton",
""),
(.static | select(.) |
"Static files: nginx (root, sendfile, tcp_nopush, open_file_cache) and baton ([static]); wrk keep-alive; \(.rounds) round(s) of \(.duration_s)s, the two back to back, each first in every other round",
"  \("figure" | pad(26)) \("nginx" | lpad(8)) \("baton" | lpad(8)) \("ratio" | lpad(6)) \("MiB/s nginx" | lpad(11)) \("baton" | lpad(7)) \("failed" | lpad(7)) \("proxy CPU/req nginx" | lpad(19)) \("baton" | lpad(8)) \("ratio" | lpad(6))",
(.figures[] |
  "  \("\(if .bytes >= 1048576 then "1 MiB" else "1 KiB" end) req/s, c=\(.concurrency)" | pad(26)) \(.nginx.rps | floor | lpad(8)) \(.baton.rps | floor | lpad(8)) \(.rps_ratio | lpad(6)) \(.nginx.mib_per_s | floor | lpad(11)) \(.baton.mib_per_s | floor | lpad(7)) \("\(.nginx.failed)/\(.baton.failed)" | lpad(7)) \("\(.nginx.proxy_cpu_us_per_request | num)us" | lpad(19)) \("\(.baton.proxy_cpu_us_per_request | num)us" | lpad(8)) \(.cpu_ratio | lpad(6))"),
(.figures[] | "  \("\(if .bytes >= 1048576 then "1 MiB" else "1 KiB" end), c=\(.concurrency)" | pad(12)) baton/nginx of each round: req/s \(.round_rps_ratios | map(tostring) | join(" ")); CPU/req \(.round_cpu_ratios | map(tostring) | join(" "))"),
"  req/s, MiB/s, CPU/req: the median round of each. ratio: the median of the baton/nginx ratios of the rounds. failed: nginx/baton. Requests that reached the workers meanwhile: \(.worker_requests)",
""),
(.access_log | select(.) |
"Access log: baton proxying to its workers at c=\(.concurrency), [log] access = a file (\(.format), request ids) vs off; \(.rounds) round(s) of \(.duration_s)s each, back to back, in \(.blocks // 1) block(s) of fresh instances",
"  proxy CPU/req on / the mean of the two off: \(.cpu_ratio) (median of the ratios of the rounds)",
"    rounds: \(.round_ratios | map(tostring) | join(" "))",
"    control, off2/off the same way: \(.control_ratio) (rounds: \(.control_round_ratios | map(tostring) | join(" ")))",
"    proxy CPU/req (median round of each): off \(.off.proxy_cpu_us_per_request | num)us, on \(.on.proxy_cpu_us_per_request | num)us; req/s (median): off \(.rps_off | floor), on \(.rps_on | floor), on/off \(.rps_ratio)",
"  lines written \(.lines_written) (\(.bytes_written / .lines_written | floor) bytes each), requests answered by the workers \(.requests_answered) (wrk counted \(.wrk_requests), warm-ups included; wrk does not count the answers in flight when it stops), dropped \(.dropped)",
""),
"Targets (reported, not enforced)",
(.targets[] | "  \(if .pass then "PASS" else "MISS" end)  \(.name | pad(52)) \(.value | num) \(.op) \(.limit | num)\(if .unit == "" then "" else " " + .unit end)\(if .nginx then "  (nginx: \(.nginx | num))" else "" end)\(if .ratio then "  (baton/nginx: \(.ratio))" else "" end)")
' "$OUT"
echo
log "results: $OUT"
