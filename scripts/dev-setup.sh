#!/usr/bin/env bash
# Install everything the tests and the demo need on a fresh Debian 12 / Ubuntu 22.04+ machine, as root.
# Idempotent: a second run only checks. Does not rely on systemd (services are started by scripts/start-*.sh).
#
#   scripts/dev-setup.sh            # apt packages + .venv with the locked Python dependencies
#   scripts/dev-setup.sh --no-apt   # only the venv (for a machine that already has the packages)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
APT=1
[[ "${1:-}" == "--no-apt" ]] && APT=0

say() { printf '[dev-setup] %s\n' "$*"; }

PACKAGES=(
  redis-server          # job queue and cross-unit state (tests start their own redis-server)
  nftables              # must be present before LXD starts: LXD's ACLs (denylist) need its nftables driver
  lxd                   # the LXD backend (containers); recommends bring dnsmasq-base for the bridge
  docker.io             # the Docker backend
  mmdebstrap debootstrap  # the runner image builder
  qemu-utils e2fsprogs  # VM disk image (qcow2) creation and inspection
  golang-go golang-github-vmware-govmomi-dev  # vcsim, the vSphere simulator, built from source
  python3-venv python3-dev
  iproute2 curl ca-certificates git cron
)

if [[ $APT -eq 1 ]]; then
  if [[ $EUID -ne 0 ]]; then
    echo "scripts/dev-setup.sh installs system packages: run it as root (or pass --no-apt)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting services: our scripts start them without systemd.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    say "created /usr/sbin/policy-rc.d (no service starts on package install)"
  fi
  missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing: ${missing[*]}"
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
  else
    say "apt packages: all ${#PACKAGES[@]} present"
  fi
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating virtualenv $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel
fi
stamp="$VENV/.installed-$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" "$ROOT/requirements-dev.in" | sha256sum | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  say "installing Python dependencies (locked in requirements.lock)"
  "$VENV/bin/pip" install -q -c "$ROOT/requirements.lock" -r "$ROOT/requirements-dev.in"
  rm -f "$VENV"/.installed-* && touch "$stamp"
else
  say "Python dependencies: up to date"
fi
say "done: venv at $VENV"
