#!/usr/bin/env bash
# The Ansible that tests/fleet_e2e.rs runs: exactly the versions pinned in
# contrib/ansible/requirements.txt, from PyPI, in a virtualenv cached under
# $BATON_E2E_CACHE (default /var/cache/baton-e2e). The cache key is the requirements file and
# the Python that runs it, so a new pin (or a new Python) builds a new virtualenv.
#
# Usage:
#   ansible.sh venv     build the virtualenv (once); print its bin directory on stdout
#
# Environment:
#   BATON_E2E_CACHE     cache root (default /var/cache/baton-e2e)
#   BATON_E2E_PYTHON    the Python to build it with (default: Debian's /usr/bin/python3 when
#                       there is one, else python3 on the PATH)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REQUIREMENTS=$ROOT/contrib/ansible/requirements.txt
CACHE=${BATON_E2E_CACHE:-/var/cache/baton-e2e}
case $CACHE in /*) ;; *) CACHE=$PWD/$CACHE ;; esac

log() { printf 'ansible.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

python() {
  if [[ -n ${BATON_E2E_PYTHON:-} ]]; then echo "$BATON_E2E_PYTHON"
  elif [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3
  else command -v python3 || die "no python3"
  fi
}

# Debian splits venv (and its ensurepip) out of python3.
ensure_venv_module() {
  local py=$1
  "$py" -c 'import ensurepip, venv' 2>/dev/null && return 0
  if [[ $py != /usr/bin/* ]] || ! command -v apt-get >/dev/null; then
    die "$py cannot make a virtualenv (no venv or ensurepip module)"
  fi
  log "installing python3-venv"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q python3-venv >&2 || { apt-get update -q >&2; apt-get install -y -q python3-venv >&2; }
}

cmd_venv() {
  [[ -f $REQUIREMENTS ]] || die "no $REQUIREMENTS"
  local py key dir
  py=$(python)
  key=$({ cat "$REQUIREMENTS"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
  dir=$CACHE/ansible-$key
  if [[ -f $dir/.complete ]]; then echo "$dir/bin"; return 0; fi
  mkdir -p "$CACHE"
  local lockfd
  exec {lockfd}>"$CACHE/.ansible.lock"
  flock "$lockfd"
  if [[ ! -f $dir/.complete ]]; then
    ensure_venv_module "$py"
    # A virtualenv cannot be moved (its scripts name their interpreter by path), so it is
    # built in place, and marked complete last: a half-built one is removed and rebuilt.
    local old
    for old in "$CACHE"/ansible-*; do
      [[ -e $old ]] || continue
      log "removing $old"
      rm -rf --one-file-system -- "$old"
    done
    local t0=$SECONDS
    log "building $dir: pip install -r contrib/ansible/requirements.txt (once; a minute or two)"
    "$py" -m venv "$dir"
    if ! "$dir/bin/pip" install --no-input -q --disable-pip-version-check -r "$REQUIREMENTS" >&2; then
      rm -rf --one-file-system -- "$dir"
      die "pip install -r $REQUIREMENTS failed"
    fi
    "$dir/bin/ansible-playbook" --version >&2 || { rm -rf --one-file-system -- "$dir"; die "ansible-playbook does not run"; }
    touch "$dir/.complete"
    log "Ansible ready in $((SECONDS - t0))s"
  fi
  exec {lockfd}>&-
  echo "$dir/bin"
}

case ${1:-} in
  venv) cmd_venv ;;
  *) sed -n '/^# Usage:/,/^# Environment:/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
