#!/bin/bash
# First-boot start of a GitHub Actions runner instance (installed as /usr/local/bin/github-runner-start).
#
# Where the instance's start-up data comes from, first match wins:
#   1. user-data that is a script ("#!..."), from the LXD key user.user-data (devlxd) or
#      /etc/github-runner/user-data: it is run as root, as cloud-init would run it, and owns the runner's
#      start (the manager renders it from templates/, carrying the JIT config);
#   2. a JIT config alone: /etc/github-runner/jitconfig, /run/github-runner/jitconfig, or the LXD key
#      user.jitconfig: /opt/actions-runner/run.sh --jitconfig runs as user "runner".
# When the runner (or the script) exits, the machine powers off, so the manager only has to remove the
# husk. With no start-up data at all, nothing runs and the machine stays up (image checks use that).
# The JIT config is a credential: it is never printed.
set -u

LOG=/var/log/github-runner.log
RUNNER_DIR=/opt/actions-runner
STATE_DIR=/var/lib/github-runner

log() { echo "github-runner-start: $*" | tee -a "$LOG"; }

devlxd_get() {
    [ -S /dev/lxd/sock ] || return 1
    curl -sf --max-time 10 --unix-socket /dev/lxd/sock "http://lxd/1.0/config/$1"
}

poweroff_unless_kept() {
    if [ -e /etc/github-runner/no-poweroff ] || [ "$(devlxd_get user.ghrm-no-poweroff 2>/dev/null)" = "true" ]; then
        log "no-poweroff set; staying up"
        return 0
    fi
    log "powering off"
    systemctl poweroff --no-block || poweroff
}

mkdir -p "$STATE_DIR"
touch "$STATE_DIR/started"

user_data=""
if [ -s /etc/github-runner/user-data ]; then
    user_data="$(cat /etc/github-runner/user-data)"
else
    user_data="$(devlxd_get user.user-data 2>/dev/null || true)"
fi
if [ "${user_data:0:2}" = "#!" ]; then
    (umask 077 && printf '%s\n' "$user_data" >"$STATE_DIR/user-data.sh")
    chmod 0700 "$STATE_DIR/user-data.sh"
    unset user_data
    log "running the user-data script"
    "$STATE_DIR/user-data.sh" >>"$LOG" 2>&1
    rc=$?
    rm -f "$STATE_DIR/user-data.sh"
    log "user-data script exited with $rc"
    poweroff_unless_kept
    exit "$rc"
elif [ -n "$user_data" ]; then
    log "user-data is not a script (cloud-init is not in this image); looking for a JIT config"
fi
unset user_data

jit=""
for file in /etc/github-runner/jitconfig /run/github-runner/jitconfig; do
    if [ -s "$file" ]; then
        jit="$(cat "$file")"
        rm -f "$file"
        break
    fi
done
[ -n "$jit" ] || jit="$(devlxd_get user.jitconfig 2>/dev/null || true)"
if [ -z "$jit" ]; then
    log "no user-data script and no JIT config: nothing to run"
    exit 0
fi

log "starting the runner from $RUNNER_DIR"
cd "$RUNNER_DIR" || exit 1
runuser -u runner -- env HOME=/home/runner "$RUNNER_DIR/run.sh" --jitconfig "$jit" >>"$LOG" 2>&1
rc=$?
unset jit
log "runner exited with $rc"
poweroff_unless_kept
exit "$rc"
