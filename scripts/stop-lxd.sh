#!/usr/bin/env bash
# Stop an LXD daemon started by scripts/start-lxd.sh (no systemd). Idempotent: not running is success.
#
# `lxd shutdown` stops the instances cleanly and then the daemon. When that does not finish in time,
# the daemon whose pid start-lxd.sh recorded is killed. LXD's state (images, containers, network
# config) stays on disk; the next start-lxd.sh brings it back.
#
# Exit codes: 0 stopped (or was not running); 1 usage; 2 not root; 4 the daemon would not stop.
set -euo pipefail

TIMEOUT=60
usage() {
    cat <<'EOF'
Usage: scripts/stop-lxd.sh [--timeout SECONDS] [--help]

Stops the LXD daemon (and its running instances) started by scripts/start-lxd.sh.
EOF
}
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
        *) echo "stop-lxd: unknown argument: $1" >&2; usage >&2; exit 1 ;;
    esac
done

say() { echo "stop-lxd: $*"; }
[[ $(id -u) -eq 0 ]] || { echo "stop-lxd: ERROR: must run as root" >&2; exit 2; }

PIDFILE="${LXD_PIDFILE:-/run/ghrm-lxd.pid}"
if ! lxd waitready --timeout 1 >/dev/null 2>&1; then
    say "lxd is not running"
    exit 0
fi

if timeout "$((TIMEOUT + 10))" lxd shutdown --timeout "$TIMEOUT" >/dev/null 2>&1; then
    say "lxd shut down"
    rm -f "$PIDFILE"
    exit 0
fi

if [[ -s "$PIDFILE" ]]; then
    pid="$(cat "$PIDFILE")"
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == "lxd" ]]; then
        say "lxd shutdown did not finish in ${TIMEOUT}s; killing pid $pid"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            [[ -d "/proc/$pid" ]] || break
            sleep 0.1
        done
        [[ -d "/proc/$pid" ]] && kill -9 "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        say "lxd stopped"
        exit 0
    fi
fi
echo "stop-lxd: ERROR: lxd did not shut down within ${TIMEOUT}s and its pid is unknown" >&2
exit 4
