#!/usr/bin/env bash
# Every test: the Rust workspace (cargo test, clippy, fmt) and the Python suite (pytest)
# against the freshly built wheel.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/resumeflow/target}

echo "== cargo fmt --check, clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --quiet

echo "== python setup"
VENV=$("$ROOT/scripts/setup-venv.sh" | tail -n 1)

echo "== browser for the web monitor tests (Debian's chromium and chromedriver)"
if [ ! -x /usr/bin/chromedriver ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y chromium chromium-driver \
    || { $SUDO apt-get update && $SUDO apt-get install -y chromium chromium-driver; }
fi

echo "== PostgreSQL server binaries for the PostgreSQL store tests (Debian's postgresql)"
# tests/pg_cluster.py runs its own throwaway cluster from /usr/lib/postgresql/*/bin; the
# package's own cluster is not used.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y postgresql \
    || { $SUDO apt-get update && $SUDO apt-get install -y postgresql; }
fi

echo "== ruff"
"$VENV/bin/ruff" check python tests benches scripts

echo "== pytest"
# pytest exits 5 when it collects no test at all: that is a failure here too (set -e).
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider "$@"

echo "== the portable wheel on CPython 3.11, 3.12, 3.13 (fresh venvs, no Rust on PATH)"
"$ROOT/scripts/check-wheel.sh" "$VENV" "$(ls "$ROOT"/dist/resumeflow-*.whl)"

echo "== benchmark smoke (compare.py --quick: fails only if a workload errors, never on timing)"
SMOKE=$(mktemp)
"$VENV/bin/python" benches/compare.py --quick > "$SMOKE" 2>&1 || {
  cat "$SMOKE"
  exit 1
}
tail -n 3 "$SMOKE"
rm -f "$SMOKE"
