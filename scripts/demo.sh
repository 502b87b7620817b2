#!/usr/bin/env bash
# The demo, set-up included: run as root on a fresh Debian 12 / Ubuntu 22.04+ machine.
# Starts a local GitHub emulator, a local Redis and the best backend this machine can run (LXD, else Docker,
# else local processes), queues jobs, shows what happens live, prints a summary and removes what it started.
#
#   scripts/demo.sh [--jobs N] [--backend auto|lxd|docker|local] [--json FILE] [--timeout SECONDS]
#   scripts/demo.sh --help
#
# Set-up: scripts/dev-setup.sh (Debian packages and the virtualenv), then the daemons the chosen backend
# needs (scripts/start-lxd.sh; scripts/start-dockerd.sh when LXD cannot start or Docker is asked for).
# The daemons are left running (they are the machine's); everything the demo itself starts is removed.
# Exit status: the demo's (0 only when every job completed and no runner is left).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEMO=("$ROOT/.venv/bin/github-runner-manager" demo)

backend=auto
for ((i = 1; i <= $#; i++)); do
    arg="${!i}"
    case "$arg" in
        -h | --help)
            if [[ -x "${DEMO[0]}" ]]; then exec "${DEMO[@]}" --help; fi
            ;;
        --backend=*) backend="${arg#--backend=}" ;;
        --backend)
            next=$((i + 1))
            backend="${!next:-auto}"
            ;;
    esac
done

bash scripts/dev-setup.sh

start_part() { # start-lxd | start-dockerd -> 0 when the daemon is ready
    [[ -x "scripts/$1.sh" ]] || return 1
    local log
    log="$(mktemp)"
    if bash "scripts/$1.sh" >"$log" 2>&1; then
        rm -f "$log"
        return 0
    fi
    echo "note: scripts/$1.sh failed: $(tail -n 1 "$log")"
    rm -f "$log"
    return 1
}

case "$backend" in
    auto) start_part start-lxd || start_part start-dockerd || echo "note: the demo runs its runners as local processes" ;;
    lxd) start_part start-lxd || true ;;    # the demo says what is missing
    docker) start_part start-dockerd || true ;;
    *) ;;                                    # local (or a typo, which the demo reports)
esac
exec "${DEMO[@]}" "$@"
