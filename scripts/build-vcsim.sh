#!/usr/bin/env bash
# Build vcsim (the vSphere simulator) from Debian's golang-go and golang-github-vmware-govmomi-dev.
#
#   scripts/build-vcsim.sh [OUTPUT]     # default OUTPUT: /var/cache/github-runner-tests/vcsim
#
# Idempotent: the binary is rebuilt only when scripts/vcsim/main.go or the govmomi package changed
# (a stamp beside OUTPUT records their checksum). Works offline: GOPATH mode, no module downloads.
# Exit codes: 0 built or up to date; 1 usage; 3 go or govmomi sources missing; 4 build failed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-/var/cache/github-runner-tests/vcsim}"
case "$OUT" in -h | --help) sed -n '2,8p' "$0"; exit 0 ;; -*) echo "build-vcsim: unknown option $OUT" >&2; exit 1 ;; esac
SRC="$ROOT/scripts/vcsim/main.go"
GOCODE=/usr/share/gocode
GOVMOMI="$GOCODE/src/github.com/vmware/govmomi"

command -v go >/dev/null || { echo "build-vcsim: go is missing (apt-get install golang-go)" >&2; exit 3; }
[[ -d "$GOVMOMI/simulator" ]] || { echo "build-vcsim: $GOVMOMI/simulator is missing (apt-get install golang-github-vmware-govmomi-dev)" >&2; exit 3; }

stamp_value="$( { sha256sum "$SRC"; dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev 2>/dev/null || true; go version; } | sha256sum | cut -c1-32)"
STAMP="$OUT.stamp"
if [[ -x "$OUT" && -f "$STAMP" && "$(cat "$STAMP")" == "$stamp_value" ]]; then
    echo "build-vcsim: $OUT is up to date"
    exit 0
fi

mkdir -p "$(dirname "$OUT")"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$BUILD/src/ghrm-vcsim"
cp "$SRC" "$BUILD/src/ghrm-vcsim/main.go"
echo "build-vcsim: building $OUT (about 20 s the first time)"
if ! (cd "$BUILD/src/ghrm-vcsim" &&
      GO111MODULE=off GOPATH="$BUILD:$GOCODE" GOCACHE="${GOCACHE:-$(dirname "$OUT")/go-build-cache}" \
      timeout 600 go build -o "$BUILD/vcsim" .); then
    echo "build-vcsim: go build failed" >&2
    exit 4
fi
mv -f "$BUILD/vcsim" "$OUT"
echo "$stamp_value" >"$STAMP"
echo "build-vcsim: built $OUT"
