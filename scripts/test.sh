#!/usr/bin/env bash
# The whole test suite, set-up included: run as root on a fresh Debian 12 / Ubuntu 22.04+ machine.
#
#   scripts/test.sh                 # set-up, lint, static checks, unit + functional tests with coverage, quick benchmarks
#   scripts/test.sh tests/unit      # same set-up, then only the given pytest arguments
#
# Real parts (LXD, dockerd) are started here; redis-server, moto_server, vcsim and the emulators are started by the
# test fixtures on free loopback ports. On CI (CI=true) a part that cannot start fails its tests instead of skipping.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n=== %s ===\n' "$*"; }

step "set-up (scripts/dev-setup.sh)"
bash scripts/dev-setup.sh
PY="$ROOT/.venv/bin"
export PATH="$PY:$PATH"

step "real parts"
for part in start-lxd start-dockerd; do
  if [[ -x scripts/$part.sh ]]; then
    bash "scripts/$part.sh" || echo "warning: scripts/$part.sh failed; tests needing it will say so"
  fi
done

if [[ $# -gt 0 ]]; then
  step "pytest $*"
  exec "$PY/python" -m pytest "$@"
fi

step "lint (ruff, codespell)"
"$PY/ruff" check src tests scripts benchmarks
"$PY/ruff" format --check src tests scripts benchmarks
"$PY/codespell" src tests scripts docs templates README.md *.yaml

step "static (mypy on src/)"
"$PY/mypy" src

step "tests (pytest, 2 workers, branch coverage on src/github_runner_manager)"
rm -f .coverage .coverage.*
set +e
"$PY/python" -m pytest -n 2 --dist loadgroup -ra \
  --cov=src/github_runner_manager --cov-branch --cov-report=term --cov-report=xml:build/coverage.xml \
  --cov-fail-under=85 tests
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
[[ $rc -eq 0 ]] || exit "$rc"

if [[ -x benchmarks/run.py || -f benchmarks/run.py ]]; then
  step "benchmarks (quick mode: the harness must not rot)"
  "$PY/python" benchmarks/run.py --quick --out build/bench-quick.json
fi
echo "all checks passed"
