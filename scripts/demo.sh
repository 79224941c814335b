#!/usr/bin/env bash
# The main job: set up (venv, wheel) and run `resumeflow demo` on the embedded SQLite store.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$("$ROOT/scripts/setup-venv.sh" | tail -n 1)
exec "$VENV/bin/resumeflow" demo "$@"
