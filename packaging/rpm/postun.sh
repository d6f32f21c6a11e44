# %postun of the baton .rpm (see packaging/README.md, "What the package scripts do").
# $1: how many versions of baton are left; 0 means the package was erased.
if [ "$1" -eq 0 ]; then
    # The catalog file is gone: drop its entries from the catalog database.
    if command -v journalctl >/dev/null 2>&1; then
        journalctl --update-catalog >/dev/null 2>&1 || true
    fi
    # /etc/baton/ (made by %post) and the doc directories, unless something is left in them:
    # the operators' configs are kept.
    rmdir /etc/baton /usr/share/doc/baton/examples /usr/share/doc/baton 2>/dev/null || true
    # Whatever enablement symlink %preun could not remove (e.g. no systemctl in a chroot).
    for link in /etc/systemd/system/*.wants/baton@* /etc/systemd/system/*.wants/baton-restart@* \
                /etc/systemd/system/*.requires/baton@* /etc/systemd/system/*.requires/baton-restart@*; do
        if [ -L "$link" ]; then rm -f "$link"; fi
    done
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
