#!/usr/bin/env bash
# Creates (once) and fills the virtual environment used by the demo and the tests, then
# builds resumeflow's abi3 wheel and installs it there. Heavy dependencies (torch) stay in the
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

echo "setup: building the resumeflow wheel (release, abi3)" >&2
rm -rf "$ROOT/dist"
(cd "$ROOT" && "$VENV/bin/maturin" build --release --quiet --out dist >&2)
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$ROOT"/dist/resumeflow-*.whl
echo "$VENV"
