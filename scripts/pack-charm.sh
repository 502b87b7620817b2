#!/usr/bin/env bash
# Build github-runner.charm.
# Uses `charmcraft pack` where the host can run it (Ubuntu with LXD/Multipass); elsewhere (e.g. Debian, where
# charmcraft refuses Ubuntu builds) it assembles the same layout itself:
#   dispatch, hooks/ (none needed with dispatch), src/, templates/, scripts/, metadata.yaml, config.yaml,
#   actions.yaml, manifest.yaml, and venv/ holding the locked runtime dependencies and github_runner_manager.
#
#   scripts/pack-charm.sh [--output FILE] [--force-script]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/github-runner.charm"
FORCE_SCRIPT=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --output) OUT="$(realpath -m "$2")"; shift 2 ;;
    --force-script) FORCE_SCRIPT=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"

if [[ $FORCE_SCRIPT -eq 0 ]] && command -v charmcraft >/dev/null 2>&1 && grep -qi ubuntu /etc/os-release; then
  echo "[pack] charmcraft pack"
  (cd "$ROOT" && charmcraft pack)
  mv "$ROOT"/github-runner_*.charm "$OUT"
  echo "[pack] wrote $OUT"
  exit 0
fi

echo "[pack] charmcraft cannot build on this host: assembling the charm layout with pip (--force-script to always)"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
cp "$ROOT"/{metadata.yaml,config.yaml,actions.yaml,charmcraft.yaml} "$BUILD"/
cp -r "$ROOT/src" "$ROOT/templates" "$BUILD"/
mkdir -p "$BUILD/scripts" && cp "$ROOT"/scripts/*.sh "$BUILD/scripts/"
find "$BUILD" -name __pycache__ -prune -exec rm -rf {} +
echo "[pack] installing locked runtime dependencies into venv/"
"$PY" -m pip install -q --disable-pip-version-check --no-compile --target "$BUILD/venv" \
  -c "$ROOT/requirements.lock" "$ROOT[lxd,charm]"
cat > "$BUILD/dispatch" <<'DISPATCH'
#!/bin/sh
JUJU_DISPATCH_PATH="${JUJU_DISPATCH_PATH:-$0}" PYTHONPATH=lib:venv:src /usr/bin/env python3 ./src/charm.py
DISPATCH
chmod +x "$BUILD/dispatch" "$BUILD/src/charm.py"
cat > "$BUILD/manifest.yaml" <<MANIFEST
analysis:
  attributes:
  - {name: language, result: python}
  - {name: framework, result: operator}
charmcraft-started-at: '$(date -u +%Y-%m-%dT%H:%M:%SZ)'
charmcraft-version: pack-charm.sh
bases:
- {name: ubuntu, channel: '22.04', architectures: [$(dpkg --print-architecture 2>/dev/null || echo amd64)]}
- {name: ubuntu, channel: '24.04', architectures: [$(dpkg --print-architecture 2>/dev/null || echo amd64)]}
MANIFEST
rm -f "$OUT"
(cd "$BUILD" && "$PY" - "$OUT" <<'ZIP'
import os, sys, zipfile
out = sys.argv[1]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
    for base, dirs, files in os.walk("."):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            info = zipfile.ZipInfo.from_file(path, arcname=os.path.relpath(path, "."))
            with open(path, "rb") as fh:
                zf.writestr(info, fh.read(), zipfile.ZIP_DEFLATED)
ZIP
)
echo "[pack] wrote $OUT ($(du -h "$OUT" | cut -f1))"
