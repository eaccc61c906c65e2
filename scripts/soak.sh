#!/usr/bin/env bash
# The daemon under a long mixed load, checked for lost captions and leaks (scripts/soak.py says what
# runs and what is checked). Needs target/release built (clipcap and the plugins) and export/.venv (scripts/setup-export.sh).
# usage: scripts/soak.sh SECONDS [--uploaders N] [--streams N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/export/.venv/bin/python" "$root/scripts/soak.py" "$@"
