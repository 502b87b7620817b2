#!/usr/bin/env bash
# The demo, set-up included: run as root on a fresh Debian 12 / Ubuntu 22.04+ machine.
# Starts a local GitHub emulator, a local Redis and the best backend this machine can run (LXD, else Docker,
# else local processes), queues jobs, shows what happens live, prints a summary and removes what it started.
#
#   scripts/demo.sh [--jobs N] [--backend auto|lxd|docker|local] [--json FILE]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/dev-setup.sh
for part in start-lxd start-dockerd; do
  if [[ -x scripts/$part.sh ]]; then
    bash "scripts/$part.sh" >/dev/null 2>&1 || echo "note: scripts/$part.sh failed; the demo picks another backend"
  fi
done
exec "$ROOT/.venv/bin/github-runner-manager" demo "$@"
