#!/bin/sh
# Start the runner: ./run.sh [--jitconfig ENCODED] (or set ACTIONS_RUNNER_INPUT_JITCONFIG),
# or plain ./run.sh after ./config.sh.
set -eu
dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
if ! command -v python3 >/dev/null 2>&1; then
    echo "run.sh: python3 is required" >&2
    exit 1
fi
exec python3 "$dir/bin/Runner.Listener" run "$@"
