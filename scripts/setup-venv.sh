#!/usr/bin/env bash
# Creates (once) and fills the virtual environment used by the demo and the tests, then
# builds resumeflow's portable abi3 wheel (scripts/build-wheel.sh) and installs it there: the
# tests run against the wheel users get. Heavy dependencies (torch) stay in the
# venv under ~/.cache between runs; a fresh machine gets them installed here.
# Prints the venv's path on its last line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${RESUMEFLOW_VENV:-$HOME/.cache/resumeflow/venv}
PYTHON=${PYTHON:-python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/resumeflow/target}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements-$(sha256sum "$ROOT/requirements-dev.txt" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing requirements-dev.txt (torch is a large download the first time)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-dev.txt"
  touch "$stamp"
fi

echo "setup: building the portable resumeflow wheel (release, abi3, manylinux2014)" >&2
WHEEL=$("$ROOT/scripts/build-wheel.sh" "$VENV" | tail -n 1)
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$WHEEL"
echo "$VENV"
