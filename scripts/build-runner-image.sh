#!/usr/bin/env bash
# Build the GitHub runner image: a root filesystem made with mmdebstrap, the sha256-verified runner
# application in /opt/actions-runner, and a first-boot unit that runs one job and powers off.
#
# Outputs
#   * an LXD container image, imported as <prefix>-<base>-<timestamp>; the alias <prefix>-<base> is moved
#     to it only after the import succeeded (a failed build leaves the old alias untouched); older
#     timestamped images are pruned except the previous one;
#   * a VM disk image (qcow2 of an ext4 root filesystem) and its LXD metadata tarball;
#   * the root filesystem tarball itself (other backends, e.g. `docker import`, can use it);
#   * a last line `RESULT {json}` on stdout for callers (github_runner_manager.image).
# Incremental: two cache layers under --cache-dir, keyed by sha256 of their inputs: the bootstrapped base
# (base, packages, mirror suites, this script and its templates) and the final root filesystem (base key,
# runner version + sha256, options). Entries older than --cache-max-age days are rebuilt so security
# updates get in.
set -Eeuo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_DIR="$(dirname "$(dirname "$SCRIPT_PATH")")"

# ------------------------------------------------------------------ mmdebstrap hook (re-entry)
# mmdebstrap runs hooks through sh; the base customisation lives here so it is part of the script's hash.
if [[ "${1:-}" == "--internal-base-hook" ]]; then
    root="$2"
    tdir="${GHRM_TEMPLATES_DIR:?}"
    # The host's resolver and name must not leak into the image: LXD writes the hostname from a
    # template, systemd-resolved (when present) serves DNS learnt over DHCP.
    rm -f "$root/etc/hostname"
    rm -f "$root/etc/resolv.conf"
    if [[ -e "$root/lib/systemd/systemd-resolved" || -e "$root/usr/lib/systemd/systemd-resolved" ]]; then
        ln -s ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
        chroot "$root" systemctl enable systemd-resolved.service >/dev/null 2>&1
    else
        : >"$root/etc/resolv.conf"
    fi
    install -D -m 0644 "$tdir/20-ghrm-dhcp.network" "$root/etc/systemd/network/20-ghrm-dhcp.network"
    chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
    # Do not hold the boot for minutes when a link never comes up.
    install -d "$root/etc/systemd/system/systemd-networkd-wait-online.service.d"
    wait_online="$(chroot "$root" sh -c 'command -v /lib/systemd/systemd-networkd-wait-online || command -v /usr/lib/systemd/systemd-networkd-wait-online')"
    printf '[Service]\nExecStart=\nExecStart=%s --any --timeout=30\n' "$wait_online" \
        >"$root/etc/systemd/system/systemd-networkd-wait-online.service.d/10-ghrm.conf"
    chroot "$root" useradd --create-home --shell /bin/bash --comment "GitHub Actions runner" runner
    printf 'runner ALL=(ALL) NOPASSWD:ALL\n' >"$root/etc/sudoers.d/runner"
    chmod 0440 "$root/etc/sudoers.d/runner"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    : >"$root/etc/machine-id"
    # force-unsafe-io speeds up the build only; the image's own dpkg keeps its safe default.
    sed -i '/^force-unsafe-io$/d' "$root/etc/dpkg/dpkg.cfg.d/99mmdebstrap" 2>/dev/null || true
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    exit 0
fi

# ------------------------------------------------------------------ defaults
BASE="debian:bookworm"
ALIAS_PREFIX="github-runner"
CACHE_DIR="/var/cache/github-runner-image"
CACHE_MAX_AGE_DAYS=7
OUTPUT_DIR=""
LOG_FILE="/var/log/github-runner-image/build.log"
TEMPLATES_DIR="${GHRM_IMAGE_TEMPLATES_DIR:-$REPO_DIR/templates/image}"
RUNNER_TARBALL=""
RUNNER_URL=""
RUNNER_SHA256=""
RUNNER_VERSION=""
MIRROR=""
SECURITY_MIRROR=""
KEYRING=""
DOCKERHUB_MIRROR=""
EXTRA_PACKAGES=""
FAIL_AFTER="${BUILD_RUNNER_IMAGE_FAIL_AT:-}"
NO_VM=0
NO_LXD=0
NO_CACHE=0
IMPORT_VM=0
PRINT_KEY=0
VM_DISK_SIZE=""
KEEP_CACHE_ENTRIES=3
LOCK_TIMEOUT=3600
STEPS="preflight mirror runner bootstrap customize pack vm import alias prune"

usage() {
    cat <<EOF
Usage: scripts/build-runner-image.sh [OPTIONS]

Builds the GitHub Actions runner image (LXD container image + VM disk image) with mmdebstrap.
Runs as root. Logs to --log and stdout; the last stdout line is "RESULT {json}".

Runner application (required, verified with sha256 inside this script):
  --runner-tarball FILE     a local actions-runner-linux-*.tar.gz
  --runner-url URL          ... or a URL to download it from (honours http(s)_proxy)
  --runner-sha256 HEX       its sha256 (required)
  --runner-version V        its version (default: taken from the file name)

Image:
  --base DIST:SUITE         debian:<suite> (default $BASE) or ubuntu:<release>
  --alias-prefix NAME       LXD aliases NAME-<dist>-<suite>[-<timestamp>] (default $ALIAS_PREFIX)
  --mirror URL              apt mirror (default: the host's apt sources, else the distribution's)
  --security-mirror URL     security mirror (default: the host's, else none for custom mirrors)
  --keyring FILE            archive keyring for mmdebstrap (default: the distribution's, if installed)
  --extra-packages A,B      more packages to install
  --dockerhub-mirror URL    write /etc/docker/daemon.json registry-mirrors in the image
  Proxies: http_proxy, https_proxy, no_proxy from the environment are used for the build and written
  to the image (/etc/environment, apt, the runner's .env); the host's apt proxy is used too.

Outputs and cache:
  --cache-dir DIR           cache of bootstrapped and finished root filesystems (default $CACHE_DIR)
  --cache-max-age DAYS      rebuild cache entries older than this (default $CACHE_MAX_AGE_DAYS)
  --no-cache                ignore (but refresh) the cache
  --output-dir DIR          where VM images go (default CACHE_DIR/images)
  --log FILE                build log (default $LOG_FILE)
  --no-vm                   do not build the VM disk image
  --vm-disk-size SIZE       VM root filesystem size, e.g. 4G (default: fitted to the content)
  --import-vm               also import the VM image into LXD (<alias>-vm); it cannot boot on hosts
                            without vhost-vsock, but it can be stored
  --no-lxd                  do not import into LXD (build the tarballs / VM image only)
  --print-cache-key         print the final cache key for these inputs and exit

Testing:
  --fail-after STEP         fail on purpose after STEP (or env BUILD_RUNNER_IMAGE_FAIL_AT=STEP);
                            steps: $STEPS

Exit codes: 0 built; 1 usage; 2 not root; 3 a host tool or LXD is missing; 4 base/mirror problem
(unsupported base, mirror unreachable, no keyring); 5 runner tarball problem (missing, download failed,
sha256 mismatch); 6 mmdebstrap failed; 7 customising or packing failed; 8 VM image failed its checks;
9 LXD import or alias update failed; 10 another build holds the lock; 70 injected failure.
EOF
}

die() {
    local code=$1
    shift
    echo "build-runner-image: ERROR: $*" >&2
    exit "$code"
}
say() { echo "build-runner-image: $*"; }

while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --base) BASE="${2:?}"; shift 2 ;;
        --alias-prefix) ALIAS_PREFIX="${2:?}"; shift 2 ;;
        --runner-tarball) RUNNER_TARBALL="${2:?}"; shift 2 ;;
        --runner-url) RUNNER_URL="${2:?}"; shift 2 ;;
        --runner-sha256) RUNNER_SHA256="${2:?}"; shift 2 ;;
        --runner-version) RUNNER_VERSION="${2:?}"; shift 2 ;;
        --mirror) MIRROR="${2:?}"; shift 2 ;;
        --security-mirror) SECURITY_MIRROR="${2:?}"; shift 2 ;;
        --keyring) KEYRING="${2:?}"; shift 2 ;;
        --extra-packages) EXTRA_PACKAGES="${2:?}"; shift 2 ;;
        --dockerhub-mirror) DOCKERHUB_MIRROR="${2:?}"; shift 2 ;;
        --cache-dir) CACHE_DIR="${2:?}"; shift 2 ;;
        --cache-max-age) CACHE_MAX_AGE_DAYS="${2:?}"; shift 2 ;;
        --no-cache) NO_CACHE=1; shift ;;
        --output-dir) OUTPUT_DIR="${2:?}"; shift 2 ;;
        --log) LOG_FILE="${2:?}"; shift 2 ;;
        --templates-dir) TEMPLATES_DIR="${2:?}"; shift 2 ;;
        --no-vm) NO_VM=1; shift ;;
        --vm-disk-size) VM_DISK_SIZE="${2:?}"; shift 2 ;;
        --import-vm) IMPORT_VM=1; shift ;;
        --no-lxd) NO_LXD=1; shift ;;
        --print-cache-key) PRINT_KEY=1; shift ;;
        --fail-after) FAIL_AFTER="${2:?}"; shift 2 ;;
        *) echo "build-runner-image: unknown argument: $1 (see --help)" >&2; exit 1 ;;
    esac
done

# ------------------------------------------------------------------ argument checks (no side effects)
[[ -n "$RUNNER_TARBALL" || -n "$RUNNER_URL" ]] || die 1 "give --runner-tarball FILE or --runner-url URL (see --help)"
[[ -z "$RUNNER_TARBALL" || -z "$RUNNER_URL" ]] || die 1 "give only one of --runner-tarball and --runner-url"
[[ "$RUNNER_SHA256" =~ ^[0-9a-fA-F]{64}$ ]] || die 1 "--runner-sha256 must be 64 hex digits"
RUNNER_SHA256="${RUNNER_SHA256,,}"
if [[ -z "$RUNNER_VERSION" ]]; then
    src_name="$(basename "${RUNNER_TARBALL:-$RUNNER_URL}")"
    if [[ "$src_name" =~ ([0-9]+\.[0-9]+\.[0-9]+)\.tar\.gz$ ]]; then
        RUNNER_VERSION="${BASH_REMATCH[1]}"
    else
        die 1 "--runner-version is required (it cannot be read from '$src_name')"
    fi
fi
[[ "$RUNNER_VERSION" =~ ^[0-9A-Za-z.+~-]+$ ]] || die 1 "--runner-version '$RUNNER_VERSION' is not a version"
[[ "$ALIAS_PREFIX" =~ ^[a-z0-9][a-z0-9-]*$ ]] || die 1 "--alias-prefix must be lowercase letters, digits and '-'"
[[ "$CACHE_MAX_AGE_DAYS" =~ ^[0-9]+$ ]] || die 1 "--cache-max-age must be a whole number of days"
if [[ -n "$FAIL_AFTER" && " $STEPS " != *" $FAIL_AFTER "* ]]; then
    die 1 "--fail-after '$FAIL_AFTER' is not a step; steps: $STEPS"
fi
if [[ "$BASE" =~ ^(debian|ubuntu):([a-z]+)$ ]]; then
    DIST="${BASH_REMATCH[1]}"
    SUITE="${BASH_REMATCH[2]}"
else
    die 4 "--base '$BASE' is not supported; use debian:<suite> (e.g. debian:bookworm) or ubuntu:<release> (e.g. ubuntu:jammy)"
fi
BASE_SLUG="$DIST-$SUITE"
ALIAS="$ALIAS_PREFIX-$BASE_SLUG"
for f in github-runner-start.sh github-runner.service 20-ghrm-dhcp.network lxd-hostname.tpl lxd-hosts.tpl; do
    [[ -f "$TEMPLATES_DIR/$f" ]] || die 1 "template $TEMPLATES_DIR/$f is missing (--templates-dir)"
done

# Packages: what every runner needs (nftables: start scripts may install an in-instance denylist), plus the runner's .NET runtime dependencies, whose
# names differ per release.
PACKAGES=(systemd-sysv udev iproute2 nftables ca-certificates curl git python3 sudo libkrb5-3 zlib1g)
case "$DIST:$SUITE" in
    debian:bookworm) PACKAGES+=(systemd-resolved libicu72 libssl3 liblttng-ust1) ;;
    debian:trixie) PACKAGES+=(systemd-resolved libicu76 libssl3t64 liblttng-ust1t64) ;;
    ubuntu:jammy) PACKAGES+=(libicu70 libssl3 liblttng-ust1) ;;
    ubuntu:noble) PACKAGES+=(systemd-resolved libicu74 libssl3t64 liblttng-ust1t64) ;;
    *) echo "build-runner-image: WARNING: no runtime package names known for $BASE; add them with --extra-packages" >&2 ;;
esac
if [[ -n "$EXTRA_PACKAGES" ]]; then
    IFS=', ' read -r -a extra <<<"$EXTRA_PACKAGES"
    PACKAGES+=("${extra[@]}")
fi

sha_of_stdin() { sha256sum | cut -d' ' -f1; }
templates_hash() { (cd "$TEMPLATES_DIR" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha_of_stdin; }
SCRIPT_HASH="$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)"
TEMPLATES_HASH="$(templates_hash)"
BASE_KEY="$(printf 'base=%s\npackages=%s\nscript=%s\ntemplates=%s\n' "$BASE" "${PACKAGES[*]}" \
    "$SCRIPT_HASH" "$TEMPLATES_HASH" | sha_of_stdin)"
FINAL_KEY="$(printf 'basekey=%s\nrunner=%s %s\ndockerhub=%s\nhttp_proxy=%s\nhttps_proxy=%s\nno_proxy=%s\n' \
    "$BASE_KEY" "$RUNNER_VERSION" "$RUNNER_SHA256" "$DOCKERHUB_MIRROR" "${http_proxy:-}" \
    "${https_proxy:-}" "${no_proxy:-}" | sha_of_stdin)"
if ((PRINT_KEY)); then
    echo "$FINAL_KEY"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die 2 "must run as root (mmdebstrap, file ownership in the image, LXD)"

# ------------------------------------------------------------------ logging, lock, steps
mkdir -p "$(dirname "$LOG_FILE")" "$CACHE_DIR"/{base,rootfs,vm,downloads}
OUTPUT_DIR="${OUTPUT_DIR:-$CACHE_DIR/images}"
mkdir -p "$OUTPUT_DIR"
exec > >(stdbuf -oL tee -a "$LOG_FILE") 2>&1

START_EPOCH="$(date +%s.%N)"
WORK=""
NEW_FP=""
NEW_VM_FP=""
PUBLISHED=0
CURRENT_STEP=""
STEP_START=""

cleanup() {
    local rc=$?
    if ((rc != 0)); then
        if [[ -n "$NEW_FP" ]] && ((PUBLISHED == 0)); then
            say "removing the image imported by this failed build ($NEW_FP); $ALIAS is unchanged"
            lxc image delete "$NEW_FP" >/dev/null 2>&1 || true
        fi
        if [[ -n "$NEW_VM_FP" ]] && ((PUBLISHED == 0)); then
            lxc image delete "$NEW_VM_FP" >/dev/null 2>&1 || true
        fi
        say "FAILED in step ${CURRENT_STEP:-?} (exit $rc); log: $LOG_FILE"
    fi
    [[ -n "$WORK" && -d "$WORK" ]] && rm -rf --one-file-system "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

step() {
    CURRENT_STEP="$1"
    STEP_START="$(date +%s.%N)"
    echo "STEP $1 begin"
}
inject_if() { # STEP: the injected failure also fires where a cached step is skipped
    if [[ "$FAIL_AFTER" == "$1" ]]; then
        echo "build-runner-image: INJECTED FAILURE after step $1" >&2
        exit 70
    fi
}
step_skipped() {
    echo "STEP $1 skipped${2:+ ($2)}"
    CURRENT_STEP="$1"
    inject_if "$1"
}
step_done() {
    local secs
    secs="$(awk -v a="$STEP_START" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
    echo "STEP $CURRENT_STEP done ${secs}s${1:+ ($1)}"
    inject_if "$CURRENT_STEP"
}

exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    say "another build holds $CACHE_DIR/.lock; waiting up to ${LOCK_TIMEOUT}s"
    flock -w "$LOCK_TIMEOUT" 9 || die 10 "another build still holds $CACHE_DIR/.lock"
fi
# Leftovers of a killed build (we hold the lock, so no other build is using them).
while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
done < <(findmnt -rn -o TARGET | grep -F "$CACHE_DIR/work." | sort -r || true)
find "$CACHE_DIR" -maxdepth 1 -name 'work.*' -type d -exec rm -rf --one-file-system {} +
WORK="$(mktemp -d "$CACHE_DIR/work.XXXXXX")"
chmod 0755 "$WORK" # apt's download sandbox user must reach it

say "base $BASE, runner $RUNNER_VERSION, alias $ALIAS, cache $CACHE_DIR, log $LOG_FILE"
say "cache keys: base ${BASE_KEY:0:16}, final ${FINAL_KEY:0:16}"

# ------------------------------------------------------------------ preflight
step preflight
need=(tar sha256sum curl flock python3)
((NO_LXD)) || need+=(lxc)
((NO_VM)) || need+=(qemu-img mke2fs debugfs)
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || die 3 "'$tool' is not installed (apt-get install mmdebstrap qemu-utils e2fsprogs curl)"
done
if ((!NO_LXD)) && ! lxc query /1.0 >/dev/null 2>&1; then
    die 3 "LXD is not running or not reachable: run scripts/start-lxd.sh (or use --no-lxd)"
fi
step_done

cache_fresh() { # FILE -> 0 when it exists and is younger than the max age
    [[ -s "$1" ]] || return 1
    ((NO_CACHE == 0)) || return 1
    local age=$(($(date +%s) - $(stat -c %Y "$1")))
    ((age < CACHE_MAX_AGE_DAYS * 86400))
}
prune_cache_dir() { # DIR KEEP: keep KEEP and the other entries with the newest packages
    find "$1" -maxdepth 1 -type f ! -path "$2" -printf '%T@ %p\n' | sort -rn |
        tail -n +"$KEEP_CACHE_ENTRIES" | cut -d' ' -f2- | xargs -r rm -f
}

BASE_TAR="$CACHE_DIR/base/$BASE_KEY.tar"
FINAL_TAR="$CACHE_DIR/rootfs/$FINAL_KEY.tar"
CACHED_FINAL=0
CACHED_BASE=0
cache_fresh "$FINAL_TAR" && CACHED_FINAL=1
cache_fresh "$BASE_TAR" && CACHED_BASE=1

# ------------------------------------------------------------------ mirror
host_sources() { # print "URI SUITES" pairs from the host's apt sources (one-line and deb822)
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i + 1) }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" } /(^|\n)Types:[^\n]*deb($|[ \n])/ {
                 uris = ""; suites = ""; off = 0
                 for (i = 1; i <= NF; i++) {
                     if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                     if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                     if ($i ~ /^Enabled:[ \t]*no/) off = 1
                 }
                 if (!off) { n = split(uris, u, " "); for (j = 1; j <= n; j++) print u[j], suites }
             }' "$f"
    done
}
APTOPTS=()
APT_PROXY=""
while IFS= read -r line; do
    APTOPTS+=("--aptopt=$line")
    if [[ "$line" =~ ^Acquire::http::Proxy\ \"(.+)\"\; ]]; then APT_PROXY="${BASH_REMATCH[1]}"; fi
done < <(apt-config dump 2>/dev/null | grep -E '^Acquire::(https?|ftp)::Proxy|^Acquire::Check-(Valid-Until|Date) ' || true)
MIRROR_SOURCE="--mirror"

if ((CACHED_FINAL == 0 && CACHED_BASE == 0)); then
    step mirror
    if [[ -z "$MIRROR" ]]; then
        MIRROR_SOURCE="host apt sources"
        MIRROR="$(host_sources | awk -v d="$DIST" '$1 ~ ("/" d "/?$") { print $1; exit }')"
        if [[ -z "$SECURITY_MIRROR" && "$DIST" == debian ]]; then
            SECURITY_MIRROR="$(host_sources | awk '$1 ~ /\/debian-security\/?$/ { print $1; exit }')"
        fi
        if [[ -z "$MIRROR" ]]; then
            MIRROR_SOURCE="distribution default"
            case "$DIST" in
                debian) MIRROR="http://deb.debian.org/debian"; SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}" ;;
                ubuntu) MIRROR="http://archive.ubuntu.com/ubuntu" ;;
            esac
        fi
    fi
    MIRROR="${MIRROR%/}"
    [[ "$DIST" == ubuntu && -z "$SECURITY_MIRROR" ]] && SECURITY_MIRROR="$MIRROR"
    curl_proxy=()
    [[ -n "$APT_PROXY" ]] && curl_proxy=(--proxy "$APT_PROXY")
    if ! curl -sfL --max-time 20 "${curl_proxy[@]}" -o "$WORK/Release" "$MIRROR/dists/$SUITE/Release"; then
        hint="check the mirror, http_proxy/https_proxy, or pass --mirror URL"
        [[ "$DIST" == ubuntu ]] && hint="no Ubuntu mirror is reachable from this machine; pass --mirror URL of a reachable Ubuntu mirror, or build --base debian:bookworm"
        die 4 "the $DIST mirror $MIRROR (from the $MIRROR_SOURCE) does not serve $SUITE: $MIRROR/dists/$SUITE/Release is unreachable; $hint"
    fi
    grep -qi "^Origin: ${DIST}" "$WORK/Release" || say "WARNING: $MIRROR/dists/$SUITE/Release does not name origin $DIST"
    if [[ -z "$KEYRING" ]]; then
        case "$DIST" in
            debian) KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg ;;
            ubuntu) KEYRING=/usr/share/keyrings/ubuntu-archive-keyring.gpg ;;
        esac
    fi
    [[ -s "$KEYRING" ]] || die 4 "the $DIST archive keyring $KEYRING is missing: install the '$DIST-keyring' package or pass --keyring FILE (the image is never built from unverified packages)"
    if [[ -n "$SECURITY_MIRROR" ]] && ! curl -sfL --max-time 20 "${curl_proxy[@]}" -o /dev/null "${SECURITY_MIRROR%/}/dists/$SUITE-security/Release"; then
        say "WARNING: security suite $SUITE-security not reachable at $SECURITY_MIRROR; building without it"
        SECURITY_MIRROR=""
    fi
    step_done "$MIRROR from the $MIRROR_SOURCE${SECURITY_MIRROR:+, security $SECURITY_MIRROR}"
else
    step_skipped mirror "cached"
fi

# ------------------------------------------------------------------ runner tarball
step runner
if [[ -n "$RUNNER_URL" ]]; then
    RUNNER_TARBALL="$CACHE_DIR/downloads/$RUNNER_SHA256.tar.gz"
    if [[ ! -s "$RUNNER_TARBALL" ]]; then
        say "downloading the runner from $RUNNER_URL"
        curl -sfL --max-time 600 --retry 3 -o "$RUNNER_TARBALL.part" "$RUNNER_URL" ||
            { rm -f "$RUNNER_TARBALL.part"; die 5 "could not download $RUNNER_URL"; }
        mv "$RUNNER_TARBALL.part" "$RUNNER_TARBALL"
    fi
    prune_cache_dir "$CACHE_DIR/downloads" "$RUNNER_TARBALL"
fi
[[ -s "$RUNNER_TARBALL" ]] || die 5 "runner tarball $RUNNER_TARBALL is missing or empty"
actual="$(sha256sum "$RUNNER_TARBALL" | cut -d' ' -f1)"
if [[ "$actual" != "$RUNNER_SHA256" ]]; then
    [[ -n "$RUNNER_URL" ]] && rm -f "$RUNNER_TARBALL"
    die 5 "runner tarball sha256 mismatch: expected $RUNNER_SHA256, got $actual"
fi
tar -tzf "$RUNNER_TARBALL" >"$WORK/runner-files" 2>/dev/null || die 5 "runner tarball is not a gzip tar archive"
grep -qE '^(\./)?run\.sh$' "$WORK/runner-files" || die 5 "runner tarball has no run.sh at its top level"
step_done "version $RUNNER_VERSION, sha256 verified"

# ------------------------------------------------------------------ bootstrap (cache layer 1)
if ((CACHED_FINAL)); then
    step_skipped bootstrap "cached root filesystem $FINAL_TAR"
elif ((CACHED_BASE)); then
    step_skipped bootstrap "cached base $BASE_TAR"
else
    step bootstrap
    command -v mmdebstrap >/dev/null || die 3 "'mmdebstrap' is not installed (apt-get install mmdebstrap)"
    components=main
    suites=("deb $MIRROR $SUITE main")
    suites+=("deb $MIRROR $SUITE-updates main")
    [[ -n "$SECURITY_MIRROR" ]] && suites+=("deb ${SECURITY_MIRROR%/} $SUITE-security main")
    say "mmdebstrap $SUITE (${PACKAGES[*]})"
    if ! GHRM_TEMPLATES_DIR="$TEMPLATES_DIR" TMPDIR="$WORK" timeout 1800 mmdebstrap \
        --variant=minbase --mode=root --format=tar --components="$components" \
        --keyring="$KEYRING" "${APTOPTS[@]}" \
        --dpkgopt=force-unsafe-io --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --include="$(IFS=,; echo "${PACKAGES[*]}")" \
        --customize-hook="\"$SCRIPT_PATH\" --internal-base-hook \"\$1\"" \
        "$SUITE" "$WORK/base.tar" "${suites[@]}"; then
        die 6 "mmdebstrap failed (see the lines above; mirror $MIRROR)"
    fi
    mv "$WORK/base.tar" "$BASE_TAR"
    prune_cache_dir "$CACHE_DIR/base" "$BASE_TAR"
    step_done "$(du -h "$BASE_TAR" | cut -f1)"
fi

# ------------------------------------------------------------------ customise (cache layer 2)
ROOT="$WORK/rootfs"
extract_rootfs() {
    mkdir -p "$ROOT"
    tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$1" -C "$ROOT"
}
write_proxy_settings() {
    local var
    for var in http_proxy https_proxy no_proxy; do
        [[ -n "${!var:-}" ]] || continue
        printf '%s=%s\n%s=%s\n' "$var" "${!var}" "${var^^}" "${!var}" | tee -a "$ROOT/etc/environment" \
            >>"$ROOT/opt/actions-runner/.env"
    done
    if [[ -n "${http_proxy:-}" ]]; then
        printf 'Acquire::http::Proxy "%s";\n' "$http_proxy" >"$ROOT/etc/apt/apt.conf.d/90ghrm-proxy"
    fi
    if [[ -n "${https_proxy:-}" ]]; then
        printf 'Acquire::https::Proxy "%s";\n' "$https_proxy" >>"$ROOT/etc/apt/apt.conf.d/90ghrm-proxy"
    fi
}
if ((CACHED_FINAL == 0)); then
    step customize
    extract_rootfs "$BASE_TAR"
    uid="$(awk -F: '$1 == "runner" { print $3 }' "$ROOT/etc/passwd")"
    gid="$(awk -F: '$1 == "runner" { print $4 }' "$ROOT/etc/passwd")"
    [[ -n "$uid" ]] || die 7 "the base root filesystem has no runner user"
    install -d -m 0755 "$ROOT/opt/actions-runner"
    tar -xzf "$RUNNER_TARBALL" -C "$ROOT/opt/actions-runner" --no-same-owner
    : >>"$ROOT/opt/actions-runner/.env"
    install -m 0755 "$TEMPLATES_DIR/github-runner-start.sh" "$ROOT/usr/local/bin/github-runner-start"
    install -m 0644 "$TEMPLATES_DIR/github-runner.service" "$ROOT/etc/systemd/system/github-runner.service"
    install -d "$ROOT/etc/systemd/system/multi-user.target.wants"
    ln -sf /etc/systemd/system/github-runner.service "$ROOT/etc/systemd/system/multi-user.target.wants/github-runner.service"
    install -d -m 0755 "$ROOT/etc/github-runner"
    write_proxy_settings
    if [[ -n "$DOCKERHUB_MIRROR" ]]; then
        install -d "$ROOT/etc/docker"
        python3 -c 'import json, sys; print(json.dumps({"registry-mirrors": [sys.argv[1]]}, indent=2))' \
            "$DOCKERHUB_MIRROR" >"$ROOT/etc/docker/daemon.json"
    fi
    chown -R "$uid:$gid" "$ROOT/opt/actions-runner"
    cat >"$ROOT/etc/github-runner/image-info" <<EOF
BASE=$BASE
RUNNER_VERSION=$RUNNER_VERSION
RUNNER_SHA256=$RUNNER_SHA256
CACHE_KEY=$FINAL_KEY
BUILT_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
    step_done "runner $RUNNER_VERSION in /opt/actions-runner"

    step pack
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOT" -cf "$WORK/rootfs.tar" .
    # Cache entries age from when their packages were fetched: the final root filesystem expires
    # together with the base it was made from (using an entry never makes it younger).
    touch -r "$BASE_TAR" "$WORK/rootfs.tar"
    mv "$WORK/rootfs.tar" "$FINAL_TAR"
    prune_cache_dir "$CACHE_DIR/rootfs" "$FINAL_TAR"
    step_done "$(du -h "$FINAL_TAR" | cut -f1)"
else
    step_skipped customize "cached"
    step_skipped pack "cached"
fi

# ------------------------------------------------------------------ timestamp and metadata
alias_target() { # ALIAS -> fingerprint, or nothing
    lxc query "/1.0/images/aliases/$1" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target"])' 2>/dev/null || true
}
EPOCH_NOW="$(date +%s)"
while :; do
    TS="$(date -u -d "@$EPOCH_NOW" +%Y%m%d%H%M%S)"
    TS_ALIAS="$ALIAS-$TS"
    if ((NO_LXD)) || [[ -z "$(alias_target "$TS_ALIAS")" ]]; then break; fi
    EPOCH_NOW=$((EPOCH_NOW + 1))
done

write_metadata() { # DIR TYPE
    mkdir -p "$1/templates"
    cp "$TEMPLATES_DIR/lxd-hostname.tpl" "$1/templates/hostname.tpl"
    cp "$TEMPLATES_DIR/lxd-hosts.tpl" "$1/templates/hosts.tpl"
    cat >"$1/metadata.yaml" <<EOF
architecture: $(uname -m)
creation_date: $EPOCH_NOW
properties:
  description: "GitHub Actions runner $RUNNER_VERSION on $DIST $SUITE ($2, $TS)"
  os: $DIST
  release: $SUITE
  variant: github-runner
  type: $2
  runner_version: "$RUNNER_VERSION"
  cache_key: "$FINAL_KEY"
  build: "$TS"
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
  /etc/hosts:
    when: [create, copy]
    template: hosts.tpl
EOF
    tar -C "$1" -cf "$1.tar" metadata.yaml templates
}

# ------------------------------------------------------------------ VM image
VM_IMAGE=""
VM_META=""
if ((!NO_VM)); then
    step vm
    VM_CACHE="$CACHE_DIR/vm/$FINAL_KEY.qcow2"
    if ((CACHED_FINAL == 0)) || ! cache_fresh "$VM_CACHE"; then
        [[ -d "$ROOT/etc" ]] || extract_rootfs "$FINAL_TAR"
        # VM-only changes: mount the root filesystem by label.
        printf 'LABEL=ghrm-rootfs / ext4 defaults,discard 0 1\n' >"$ROOT/etc/fstab"
        if [[ -n "$VM_DISK_SIZE" ]]; then
            size="$VM_DISK_SIZE"
        else
            used_mb="$(du -sm --apparent-size "$ROOT" | cut -f1)"
            size="$(((used_mb * 13 / 10 + 512) / 256 * 256 + 256))M"
        fi
        truncate -s "$size" "$WORK/rootfs.raw"
        mke2fs -q -F -t ext4 -L ghrm-rootfs -d "$ROOT" "$WORK/rootfs.raw" ||
            die 8 "mke2fs could not make the VM root filesystem ($size)"
        debugfs -R 'ls -p /opt/actions-runner' "$WORK/rootfs.raw" 2>/dev/null | grep -q '/run.sh/' ||
            die 8 "the VM root filesystem has no /opt/actions-runner/run.sh"
        debugfs -R 'stat /usr/local/bin/github-runner-start' "$WORK/rootfs.raw" >/dev/null 2>&1 ||
            die 8 "the VM root filesystem has no first-boot start script"
        qemu-img convert -f raw -O qcow2 "$WORK/rootfs.raw" "$WORK/vm.qcow2"
        rm -f "$WORK/rootfs.raw"
        touch -r "$FINAL_TAR" "$WORK/vm.qcow2"
        mv "$WORK/vm.qcow2" "$VM_CACHE"
        prune_cache_dir "$CACHE_DIR/vm" "$VM_CACHE"
        rm -f "$ROOT/etc/fstab"
    fi
    format="$(qemu-img info --output=json "$VM_CACHE" | python3 -c 'import json, sys; print(json.load(sys.stdin)["format"])')"
    [[ "$format" == qcow2 ]] || die 8 "$VM_CACHE is $format, not qcow2"
    VM_IMAGE="$OUTPUT_DIR/$TS_ALIAS.qcow2"
    ln -f "$VM_CACHE" "$VM_IMAGE" 2>/dev/null || cp --reflink=auto "$VM_CACHE" "$VM_IMAGE"
    write_metadata "$WORK/vm-meta" virtual-machine
    VM_META="$OUTPUT_DIR/$TS_ALIAS.vm-metadata.tar"
    cp "$WORK/vm-meta.tar" "$VM_META"
    # Keep this build's and the previous build's VM images.
    find "$OUTPUT_DIR" -maxdepth 1 -name "$ALIAS-[0-9]*.qcow2" -printf '%T@ %p\n' | sort -rn | tail -n +3 |
        cut -d' ' -f2- | while read -r old; do rm -f "$old" "${old%.qcow2}.vm-metadata.tar"; done
    step_done "$VM_IMAGE ($(qemu-img info --output=json "$VM_IMAGE" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["format"], d["virtual-size"] // 2**20, "MiB virtual")'))"
fi
[[ -d "$ROOT" ]] && rm -rf --one-file-system "$ROOT"

# ------------------------------------------------------------------ LXD import and alias
FP=""
PREV_FP=""
if ((!NO_LXD)); then
    step import
    write_metadata "$WORK/meta" container
    out="$(lxc image import "$WORK/meta.tar" "$FINAL_TAR" --alias "$TS_ALIAS" 2>&1)" ||
        die 9 "lxc image import failed: $out"
    NEW_FP="$(alias_target "$TS_ALIAS")"
    [[ -n "$NEW_FP" ]] || die 9 "the imported image has no alias $TS_ALIAS"
    if ((IMPORT_VM)) && [[ -n "$VM_IMAGE" ]]; then
        out="$(lxc image import "$VM_META" "$VM_IMAGE" --alias "$ALIAS-vm-$TS" 2>&1)" ||
            die 9 "lxc image import of the VM image failed: $out"
        NEW_VM_FP="$(alias_target "$ALIAS-vm-$TS")"
    fi
    step_done "$TS_ALIAS = ${NEW_FP:0:12}"

    move_alias() { # ALIAS FINGERPRINT -> prints the previous target
        local prev
        prev="$(alias_target "$1")"
        if [[ -n "$prev" ]]; then
            lxc query -X PUT "/1.0/images/aliases/$1" \
                -d "{\"target\": \"$2\", \"description\": \"github runner image, build $TS\"}" >/dev/null
        else
            lxc image alias create "$1" "$2" "github runner image, build $TS" >/dev/null 2>&1 ||
                lxc image alias create "$1" "$2" >/dev/null
        fi
        [[ "$(alias_target "$1")" == "$2" ]] || return 1
        echo "$prev"
    }
    step alias
    PREV_FP="$(move_alias "$ALIAS" "$NEW_FP")" || die 9 "could not point $ALIAS at $NEW_FP"
    PUBLISHED=1
    if [[ -n "$NEW_VM_FP" ]]; then
        move_alias "$ALIAS-vm" "$NEW_VM_FP" >/dev/null || say "WARNING: could not point $ALIAS-vm at $NEW_VM_FP"
    fi
    step_done "$ALIAS -> ${NEW_FP:0:12} (was ${PREV_FP:0:12})"

    step prune
    pruned=0
    while read -r name target; do
        [[ "$target" == "$NEW_FP" || "$target" == "$PREV_FP" ]] && continue
        [[ -n "$NEW_VM_FP" && "$target" == "$NEW_VM_FP" ]] && continue
        if lxc image delete "$target" >/dev/null 2>&1; then
            say "pruned $name (${target:0:12})"
            pruned=$((pruned + 1))
        fi
    done < <(lxc query "/1.0/images/aliases?recursion=1" | python3 -c '
import json, re, sys
alias = sys.argv[1]
pattern = re.compile(re.escape(alias) + r"(-vm)?-[0-9]{14}")
for entry in json.load(sys.stdin):
    if pattern.fullmatch(entry["name"]):
        print(entry["name"], entry["target"])
' "$ALIAS")
    step_done "$pruned old image(s) removed"
    FP="$NEW_FP"
fi

SECONDS_TOTAL="$(awk -v a="$START_EPOCH" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
summary="$ALIAS -> $TS_ALIAS"
((NO_LXD)) && summary="no LXD import"
((CACHED_FINAL)) && summary+=" (cached root filesystem)"
say "done in ${SECONDS_TOTAL}s: $summary"
python3 -c '
import json, sys
keys = ["alias", "timestamped_alias", "fingerprint", "previous_fingerprint", "cached", "seconds",
        "vm_image", "vm_metadata", "rootfs", "cache_key", "runner_version", "base", "log", "base_cached"]
values = sys.argv[1:]
out = dict(zip(keys, values))
out["cached"] = out["cached"] == "1"
out["base_cached"] = out["base_cached"] == "1"
out["seconds"] = float(out["seconds"])
for key in ("fingerprint", "previous_fingerprint", "vm_image", "vm_metadata", "alias", "timestamped_alias"):
    out[key] = out[key] or None
print("RESULT " + json.dumps(out, sort_keys=True))
' "$( ((NO_LXD)) || echo "$ALIAS")" "$( ((NO_LXD)) || echo "$TS_ALIAS")" "$FP" "$PREV_FP" "$CACHED_FINAL" \
    "$SECONDS_TOTAL" "$VM_IMAGE" "$VM_META" "$FINAL_TAR" "$FINAL_KEY" "$RUNNER_VERSION" "$BASE" "$LOG_FILE" \
    "$((CACHED_BASE || CACHED_FINAL))"
