#!/bin/sh
# Configure this runner against the GitHub emulator.
#   ./config.sh --url URL --token REGISTRATION_TOKEN [--name N] [--labels a,b] [--runnergroup G]
#               [--work DIR] [--ephemeral] [--replace] [--unattended] [--no-default-labels]
#   ./config.sh remove --token REMOVE_TOKEN
set -eu
dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
if ! command -v python3 >/dev/null 2>&1; then
    echo "config.sh: python3 is required" >&2
    exit 1
fi
if [ "${1:-}" = "remove" ]; then
    shift
    exec python3 "$dir/bin/Runner.Listener" remove "$@"
fi
exec python3 "$dir/bin/Runner.Listener" configure "$@"
