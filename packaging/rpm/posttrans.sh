# %posttrans of the baton .rpm (see packaging/README.md, "What the package scripts do").
# After an upgrade (marked by %pre): restart the running baton@<app>.service instances on the
# new binary. Only the services: their baton@<app>.socket units keep the listening socket open
# (restarting a socket would close the port), and baton re-adopts its worker units when it
# starts, so this costs no request. Stopped and failed instances are left alone.

# Whether the new /usr/bin/baton accepts the config the unit reads (/etc/baton/<instance>.toml,
# as ExecStartPre= checks it). If it does not, the unit is not restarted: the previous version
# keeps serving instead of the app going down. A config elsewhere (a drop-in) is not checked.
config_accepted() {
    instance=$(systemd-escape --unescape --instance "$1" 2>/dev/null) || instance=
    [ -n "$instance" ] || { instance=${1#baton@}; instance=${instance%.service}; }
    config=/etc/baton/$instance.toml
    [ -f "$config" ] || return 0
    if ! out=$(/usr/bin/baton check-config --config "$config" 2>&1); then
        echo "baton: warning: not restarting $1: the new version rejects $config:" >&2
        echo "$out" >&2
        echo "baton: its previous version keeps running; fix the config, then: systemctl restart $1" >&2
        return 1
    fi
}

if [ -e /run/baton-rpm-upgrade ]; then
    rm -f /run/baton-rpm-upgrade
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        units=$(systemctl list-units --type=service --no-legend --plain 'baton@*.service' 2>/dev/null \
            | awk '$1 ~ /^baton@.+\.service$/ { print $1 }') || units=
        for unit in $units; do
            systemctl is-active --quiet "$unit" || continue
            config_accepted "$unit" || continue
            echo "baton: restarting $unit on the new version (its socket stays open)"
            systemctl try-restart "$unit" \
                || echo "baton: warning: could not restart $unit; see: systemctl status $unit" >&2
        done
    fi
fi
exit 0
