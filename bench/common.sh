# shellcheck shell=bash
# Pieces the bench scripts share; sourced, not run.

# demo_config FILE NAME PORT SOCKET BATON [MORE_TOML]: write FILE, a `baton run` config that
# proxies 127.0.0.1:PORT to 4 demo workers (BATON's demo-app, boot 0s, concurrency 0, the
# process backend, readiness on `/`), with its control socket at SOCKET and MORE_TOML at the
# end. The canary phase (a deliberate pause while the judge compares generations) is left out.
demo_config() {
    local file=$1 name=$2 port=$3 socket=$4 baton=$5 more=${6:-}
    cat >"$file" <<EOF
name = "$name"
[listen]
address = "127.0.0.1:$port"
[app]
command = ["$baton", "demo-app", "--port", "{port}", "--boot-time", "0s"]
[workers]
count = 4
concurrency = 0
[readiness]
http_path = "/"
[canary]
workers = 0
[spawner]
backend = "process"
[control]
socket = "$socket"
$more
EOF
}
