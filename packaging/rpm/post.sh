# %post of the baton .rpm (see packaging/README.md, "What the package scripts do").
# Make `journalctl -x` know /usr/lib/systemd/catalog/baton.catalog.
if command -v journalctl >/dev/null 2>&1; then
    journalctl --update-catalog >/dev/null 2>&1 \
        || echo "baton: warning: journalctl --update-catalog failed" >&2
fi
# Where the operators' configs go (/etc/baton/<app>.toml). Not in the payload: cargo-generate-rpm
# cannot package an empty directory yet.
if [ ! -d /etc/baton ]; then
    mkdir -m 0755 /etc/baton || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
