#!/usr/bin/env bash
# Start a Docker daemon without systemd, idempotently, and keep LXD's bridge working next to it.
#
# What it promises when it exits 0:
#   * docker.io is installed (apt-get, without starting services);
#   * a dockerd answers `docker -H HOST info` on HOST, started here in the background (own session,
#     pidfile, log file) if none answered;
#   * when dockerd manages iptables: Docker's DOCKER-USER chain lets lxdbr0 traffic through (dockerd
#     sets the FORWARD policy to DROP, which would also drop LXD containers' forwarded traffic).
# With --stop it stops the daemon named by --pidfile instead (not running is success).
# It prints one line per thing it did or found; the last line is `DOCKER_HOST=<host>`.
#
# Exit codes: 0 ready (or stopped); 1 usage; 2 not root; 3 docker.io could not be installed;
# 4 dockerd did not become ready (its log's tail is printed); 5 a daemon would not stop.
set -euo pipefail

DATA_ROOT=/var/lib/docker
EXEC_ROOT=/var/run/docker
PIDFILE=/var/run/docker.pid
HOST=unix:///var/run/docker.sock
LOG=/var/log/dockerd.log
TIMEOUT=60
STOP=0
LXD_BRIDGE="${LXD_BRIDGE:-lxdbr0}"
EXTRA=()

usage() {
    cat <<EOF
Usage: scripts/start-dockerd.sh [OPTIONS] [-- DOCKERD-ARGS...]

Starts dockerd (as root, without systemd) unless one already answers on --host, then lets the
LXD bridge ($LXD_BRIDGE) through Docker's DOCKER-USER chain. Safe to run again at any time.

  --data-root DIR    images and containers (default $DATA_ROOT)
  --exec-root DIR    runtime state (default $EXEC_ROOT)
  --pidfile FILE     dockerd's pid file (default $PIDFILE)
  --host HOST        API socket, e.g. unix:///tmp/d/docker.sock (default $HOST)
  --log FILE         dockerd's log (default $LOG)
  --timeout SECONDS  how long to wait for \`docker info\` (default $TIMEOUT)
  --stop             stop the daemon of --pidfile instead (SIGTERM, then SIGKILL after --timeout)
  -- ARGS            passed to dockerd, e.g. -- --bridge=none --iptables=false
A second daemon next to the default one needs its own --data-root, --exec-root, --pidfile, --host
and a bridge of its own (-- --bridge=none, or --bip=...).
EOF
}

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --data-root) DATA_ROOT="${2:?}"; shift 2 ;;
        --exec-root) EXEC_ROOT="${2:?}"; shift 2 ;;
        --pidfile) PIDFILE="${2:?}"; shift 2 ;;
        --host) HOST="${2:?}"; shift 2 ;;
        --log) LOG="${2:?}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?}"; shift 2 ;;
        --stop) STOP=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "start-dockerd: unknown argument: $1 (see --help)" >&2; exit 1 ;;
    esac
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || { echo "start-dockerd: --timeout must be whole seconds" >&2; exit 1; }
[[ "$HOST" == unix://* || "$HOST" == tcp://* ]] || { echo "start-dockerd: --host must be unix://PATH or tcp://ADDR" >&2; exit 1; }

say() { echo "start-dockerd: $*"; }
die() { local code=$1; shift; echo "start-dockerd: ERROR: $*" >&2; exit "$code"; }
[[ $(id -u) -eq 0 ]] || die 2 "must run as root"

pid_alive() { # PIDFILE -> 0 when it names a running dockerd
    [[ -s "$1" ]] || return 1
    local pid
    pid="$(cat "$1")"
    [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == dockerd ]]
}

# ---------------------------------------------------------------- stop
if ((STOP)); then
    if ! pid_alive "$PIDFILE"; then
        say "no dockerd running for $PIDFILE"
        exit 0
    fi
    pid="$(cat "$PIDFILE")"
    kill -TERM "$pid"
    for _ in $(seq 1 $((TIMEOUT * 10))); do
        [[ -d "/proc/$pid" ]] || break
        sleep 0.1
    done
    if [[ -d "/proc/$pid" ]]; then
        say "dockerd (pid $pid) ignored SIGTERM for ${TIMEOUT}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
        [[ -d "/proc/$pid" ]] && die 5 "dockerd (pid $pid) would not stop"
    fi
    say "stopped dockerd (pid $pid)"
    exit 0
fi

# ---------------------------------------------------------------- package
if ! command -v dockerd >/dev/null 2>&1; then
    say "installing docker.io with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    rc=0
    timeout 300 apt-get update -q >/dev/null || rc=$?
    ((rc == 0)) && { timeout 600 apt-get install -y -q docker.io >/dev/null || rc=$?; }
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die 3 "apt-get could not install docker.io (exit $rc); check the apt sources and proxy"
fi

# ---------------------------------------------------------------- daemon
docker_ready() { timeout 10 docker -H "$HOST" info >/dev/null 2>&1; }

if docker_ready; then
    say "dockerd already answers on $HOST"
else
    if pid_alive "$PIDFILE"; then
        say "dockerd (pid $(cat "$PIDFILE")) is starting; waiting for it"
    else
        mkdir -p "$DATA_ROOT" "$EXEC_ROOT" "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
        if [[ "$HOST" == unix://* ]]; then
            mkdir -p "$(dirname "${HOST#unix://}")"
        fi
        rm -f "$PIDFILE" # stale: pid_alive said no dockerd owns it
        # setsid: the daemon outlives this script and the session that called it.
        setsid dockerd --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" --pidfile "$PIDFILE" \
            -H "$HOST" "${EXTRA[@]}" </dev/null >>"$LOG" 2>&1 &
        say "started dockerd (pid $!, data root $DATA_ROOT, log $LOG)"
    fi
    deadline=$((SECONDS + TIMEOUT))
    until docker_ready; do
        if ((SECONDS >= deadline)); then
            tail -n 25 "$LOG" >&2 || true
            die 4 "dockerd did not answer \`docker info\` on $HOST within ${TIMEOUT}s (log: $LOG)"
        fi
        sleep 0.2
    done
    say "dockerd ready on $HOST"
fi

# ---------------------------------------------------------------- LXD coexistence
# Only a daemon managing iptables creates DOCKER-USER; rules there survive dockerd restarts.
if command -v iptables >/dev/null && iptables -n -L DOCKER-USER >/dev/null 2>&1; then
    if ! iptables -C DOCKER-USER -i "$LXD_BRIDGE" -j ACCEPT 2>/dev/null; then
        iptables -I DOCKER-USER -i "$LXD_BRIDGE" -j ACCEPT
        say "iptables: DOCKER-USER accepts traffic from $LXD_BRIDGE"
    fi
    if ! iptables -C DOCKER-USER -o "$LXD_BRIDGE" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT 2>/dev/null; then
        iptables -I DOCKER-USER -o "$LXD_BRIDGE" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        say "iptables: DOCKER-USER accepts established traffic to $LXD_BRIDGE"
    fi
    say "FORWARD policy $(iptables -S FORWARD | sed -n 's/^-P FORWARD //p'); $LXD_BRIDGE let through in DOCKER-USER"
fi
echo "DOCKER_HOST=$HOST"
