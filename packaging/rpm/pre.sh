# %pre of the baton .rpm (see packaging/README.md, "What the package scripts do").
# $1: how many versions of baton will be installed after this transaction; 2 or more is an upgrade.
# On upgrade, leave a mark for %posttrans, which restarts the running services once the new
# files are in place and the old package is gone.
if [ "$1" -gt 1 ] && [ -d /run/systemd/system ]; then
    : > /run/baton-rpm-upgrade || true
fi
exit 0
