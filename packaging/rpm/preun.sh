# %preun of the baton .rpm (see packaging/README.md, "What the package scripts do").
# $1: how many versions of baton will be left; 0 means the package is being erased (on an
# upgrade nothing is stopped: %posttrans restarts the running services, the sockets stay open).
if [ "$1" -eq 0 ]; then
    # Every instance of the baton units: those systemd has loaded, and those enabled by a symlink.
    units=$(
        {
            if [ -d /run/systemd/system ]; then
                systemctl list-units --all --no-legend --plain \
                    'baton-restart@*.path' 'baton-restart@*.service' 'baton@*.service' 'baton@*.socket' 2>/dev/null || true
            fi
            for link in /etc/systemd/system/*.wants/* /etc/systemd/system/*.requires/*; do
                [ -L "$link" ] && echo "${link##*/}"
            done
        } | awk '$1 ~ /^baton(-restart)?@.+\.(service|socket|path)$/ { print $1 }' | sort -u
    )
    if [ -n "$units" ]; then
        # shellcheck disable=SC2086 # unit names have no blanks or glob characters
        echo "baton: stopping and disabling" $units
        if [ -d /run/systemd/system ]; then
            # The restart-file watchers first, so that nothing reloads meanwhile; the services
            # drain their requests; then the sockets close.
            systemctl stop 'baton-restart@*.path' || true
            systemctl stop 'baton-restart@*.service' 'baton@*.service' 'baton@*.socket' || true
        fi
        if command -v systemctl >/dev/null 2>&1; then
            # shellcheck disable=SC2086
            systemctl --no-reload disable $units >/dev/null 2>&1 || true
        fi
    fi
fi
exit 0
