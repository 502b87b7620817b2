#!/usr/bin/env bash
# Start LXD without systemd, idempotently, the way the runner tests and the demo need it.
#
# What it promises when it exits 0:
#   * nftables is installed (before LXD starts, so LXD picks its nftables firewall driver and
#     network ACLs -- the runner denylist -- work);
#   * `lxd` is running (`lxd waitready` succeeded), started here in the background if it was not;
#   * LXD is initialised: bridge lxdbr0 with a fixed IPv4 subnet, NAT, no IPv6; a storage pool
#     `default` -- copy-on-write `btrfs` on a loop file where the kernel has btrfs (a container is a
#     snapshot of its image: created in a fraction of a second instead of copying the whole image),
#     else `dir`; the `default` profile has a root disk and an eth0 on lxdbr0 (only what is missing
#     is created; an existing set-up is left alone);
#   * `lxc info` reports `firewall: nftables`.
# It prints one line per thing it did or found.
#
# Exit codes: 0 ready; 1 usage; 2 not root; 3 packages could not be installed; 4 lxd did not become
# ready; 5 initialisation failed; 6 firewall driver is not nftables and LXD could not be restarted.
#
# Environment: LXD_BRIDGE_ADDRESS (default 10.151.12.1/24), LXD_STORAGE_DRIVER (auto, btrfs or dir;
# default auto: btrfs when the kernel supports it), LXD_POOL_SIZE (loop file of a btrfs pool, default
# 30GiB, sparse), LXD_LOG (default /var/log/lxd/lxd.log),
# LXD_READY_TIMEOUT seconds (default 60), LXD_PIDFILE (default /run/ghrm-lxd.pid; stop-lxd.sh reads it).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/start-lxd.sh [--help]

Starts LXD (as root, without systemd) if it is not running, initialises it with the bridge
lxdbr0 (LXD_BRIDGE_ADDRESS, default 10.151.12.1/24, NAT, no IPv6) and a storage pool "default"
when they are missing, and checks that LXD uses the nftables firewall driver. The pool is btrfs
on a loop file (LXD_POOL_SIZE, default 30GiB) where the kernel supports it, else dir
(LXD_STORAGE_DRIVER=dir forces dir). Safe to run again at any time.
EOF
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) echo "start-lxd: unknown argument: $1" >&2; usage >&2; exit 1 ;;
esac

BRIDGE_ADDRESS="${LXD_BRIDGE_ADDRESS:-10.151.12.1/24}"
STORAGE_DRIVER="${LXD_STORAGE_DRIVER:-auto}"
POOL_SIZE="${LXD_POOL_SIZE:-30GiB}"
case "$STORAGE_DRIVER" in
    auto | btrfs | dir) ;;
    *) echo "start-lxd: LXD_STORAGE_DRIVER must be auto, btrfs or dir, not '$STORAGE_DRIVER'" >&2; exit 1 ;;
esac
LOG="${LXD_LOG:-/var/log/lxd/lxd.log}"
READY_TIMEOUT="${LXD_READY_TIMEOUT:-60}"

say() { echo "start-lxd: $*"; }
die() { local code=$1; shift; echo "start-lxd: ERROR: $*" >&2; exit "$code"; }

[[ $(id -u) -eq 0 ]] || die 2 "must run as root (LXD's daemon and its bridge need it)"

# ---------------------------------------------------------------- packages
ensure_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Package scripts must not try to start services: there is no systemd here, and LXD must be
    # started below, after nftables is in place.
    local created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    local rc=0
    timeout 300 apt-get update -q >/dev/null || rc=$?
    if ((rc == 0)); then
        timeout 600 apt-get install -y -q "${missing[@]}" >/dev/null || rc=$?
    fi
    ((created_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || die 3 "apt-get could not install ${missing[*]} (exit $rc); check the apt sources and proxy"
}


# nftables first: LXD chooses its firewall driver once, when it starts.
ensure_packages nftables
if ! command -v lxd >/dev/null 2>&1; then
    # dnsmasq-base (a recommend) serves DHCP/DNS on the bridge; keep recommends.
    ensure_packages lxd dnsmasq-base
fi
command -v nft >/dev/null || die 3 "nft not found after installing nftables"

# ---------------------------------------------------------------- daemon
start_daemon() {
    mkdir -p "$(dirname "$LOG")"
    ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true
    # setsid: the daemon must outlive this script and the session that called it.
    setsid lxd --group root --logfile "$LOG" </dev/null >>"$LOG.stdout" 2>&1 &
    local pid=$!
    echo "$pid" >"${LXD_PIDFILE:-/run/ghrm-lxd.pid}"
    if ! lxd waitready --timeout "$READY_TIMEOUT" >/dev/null 2>&1; then
        tail -n 20 "$LOG" "$LOG.stdout" >&2 2>/dev/null || true
        die 4 "lxd did not become ready within ${READY_TIMEOUT}s (log: $LOG)"
    fi
    say "started lxd (pid $pid, log $LOG)"
}

if lxd waitready --timeout 1 >/dev/null 2>&1; then
    say "lxd already running"
else
    start_daemon
fi

# ---------------------------------------------------------------- firewall driver
firewall_driver() { lxc info 2>/dev/null | sed -n 's/^ *firewall: *//p' | head -n1; }

driver="$(firewall_driver)"
if [[ "$driver" != "nftables" ]]; then
    running="$(lxc list --all-projects --format csv -c s 2>/dev/null | grep -c RUNNING || true)"
    if [[ "${running:-0}" -gt 0 ]]; then
        die 6 "LXD uses the '${driver:-unknown}' firewall driver (nftables was installed after it started) and $running instance(s) run; stop them, then run: lxd shutdown && $0"
    fi
    say "LXD uses the '${driver:-unknown}' firewall driver; restarting it to pick nftables"
    timeout 120 lxd shutdown || true
    start_daemon
    driver="$(firewall_driver)"
    [[ "$driver" == "nftables" ]] || die 6 "LXD still reports firewall '${driver:-unknown}' after a restart; network ACLs (the denylist) would not work"
fi
say "firewall: $driver"

# ---------------------------------------------------------------- initialisation
preseed=""
if lxc network show lxdbr0 >/dev/null 2>&1; then
    current="$(lxc network get lxdbr0 ipv4.address 2>/dev/null || true)"
    say "network lxdbr0 exists (ipv4.address $current)"
    [[ "$current" == "$BRIDGE_ADDRESS" ]] || say "WARNING: lxdbr0 has $current, not $BRIDGE_ADDRESS; left unchanged"
else
    preseed+="networks:
- name: lxdbr0
  type: bridge
  config: {ipv4.address: $BRIDGE_ADDRESS, ipv4.nat: \"true\", ipv6.address: none}
"
fi
pool_driver=""
if lxc storage show default >/dev/null 2>&1; then
    say "storage pool default exists ($(lxc storage get default source 2>/dev/null | head -c 80))"
else
    pool_driver=dir
    if [[ "$STORAGE_DRIVER" != dir ]] && grep -qw btrfs /proc/filesystems 2>/dev/null; then
        ensure_packages btrfs-progs
        pool_driver=btrfs
    elif [[ "$STORAGE_DRIVER" == btrfs ]]; then
        die 5 "LXD_STORAGE_DRIVER=btrfs but this kernel has no btrfs (see /proc/filesystems)"
    fi
    # the pool is created on its own first: a btrfs pool that cannot be made (no loop devices)
    # falls back to dir instead of failing the whole set-up
    if [[ "$pool_driver" == btrfs ]]; then
        if lxc storage create default btrfs size="$POOL_SIZE" >/dev/null 2>"/tmp/ghrm-lxd-pool.err"; then
            say "created storage pool default: btrfs on a ${POOL_SIZE} loop file (copy-on-write)"
        else
            say "WARNING: a btrfs pool could not be created ($(head -c 300 /tmp/ghrm-lxd-pool.err)); using dir"
            lxc storage delete default >/dev/null 2>&1 || true
            [[ "$STORAGE_DRIVER" == btrfs ]] && die 5 "LXD_STORAGE_DRIVER=btrfs but the pool could not be created"
            pool_driver=dir
        fi
    fi
    if [[ "$pool_driver" == dir ]]; then
        preseed+="storage_pools:
- {name: default, driver: dir}
"
    fi
fi
profile="$(lxc profile show default 2>/dev/null || true)"
if grep -q 'path: /$' <<<"$profile" && grep -q 'network: lxdbr0\|parent: lxdbr0' <<<"$profile"; then
    say "profile default has a root disk and a nic on lxdbr0"
else
    preseed+="profiles:
- name: default
  devices:
    root: {path: /, pool: default, type: disk}
    eth0: {name: eth0, network: lxdbr0, type: nic}
"
fi
if [[ -n "$preseed" ]]; then
    if ! lxd init --preseed <<<"$preseed"; then
        die 5 "lxd init --preseed failed; preseed was:
$preseed"
    fi
    say "initialised LXD:"
    sed 's/^/    /' <<<"$preseed"
fi

# ---------------------------------------------------------------- docker coexistence
# dockerd sets the FORWARD policy to DROP; let the LXD bridge through in Docker's own hook chain.
if command -v iptables >/dev/null && iptables -n -L DOCKER-USER >/dev/null 2>&1; then
    iptables -C DOCKER-USER -i lxdbr0 -j ACCEPT 2>/dev/null ||
        { iptables -I DOCKER-USER -i lxdbr0 -j ACCEPT && say "iptables: DOCKER-USER accepts from lxdbr0"; }
    iptables -C DOCKER-USER -o lxdbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT 2>/dev/null ||
        { iptables -I DOCKER-USER -o lxdbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT &&
            say "iptables: DOCKER-USER accepts established traffic to lxdbr0"; }
fi

say "ready (bridge lxdbr0 $(lxc network get lxdbr0 ipv4.address), pool default ($(lxc storage show default 2>/dev/null | sed -n 's/^driver: *//p')), firewall $driver)"
