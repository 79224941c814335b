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

echo "== PostgreSQL server binaries for the PostgreSQL store tests (Debian's postgresql)"
# tests/pg_cluster.py runs its own throwaway cluster from /usr/lib/postgresql/*/bin; the
# package's own cluster is not used.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y postgresql \
    || { $SUDO apt-get update && $SUDO apt-get install -y postgresql; }
fi

echo "== cargo test on PostgreSQL"
# The core's store, queue, resumption and property tests again on a throwaway cluster
# (tests/pg_cluster.py, system python3): with RESUMEFLOW_TEST_PG_URL set, each test's TempStore
# is a fresh schema of that database. The cluster is stopped and removed even on failure.
PG_OUT=$(python3 "$ROOT/tests/pg_cluster.py" start)
PG_URL=$(sed -n 's/^URL=//p' <<<"$PG_OUT")
PG_DIR=$(sed -n 's/^DIR=//p' <<<"$PG_OUT")
if [ -z "$PG_URL" ] || [ -z "$PG_DIR" ]; then
  echo "tests/pg_cluster.py start printed no URL=/DIR=: $PG_OUT" >&2
  exit 1
fi
trap 'python3 "$ROOT/tests/pg_cluster.py" stop "$PG_DIR"' EXIT
RESUMEFLOW_TEST_PG_URL="$PG_URL" cargo test -p resumeflow-core --quiet \
  --test store --test queue --test workflow_resumption --test properties
python3 "$ROOT/tests/pg_cluster.py" stop "$PG_DIR"
trap - EXIT

echo "== python setup"
VENV=$("$ROOT/scripts/setup-venv.sh" | tail -n 1)

echo "== browser for the web monitor tests (Debian's chromium and chromedriver)"
if [ ! -x /usr/bin/chromedriver ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y chromium chromium-driver \
    || { $SUDO apt-get update && $SUDO apt-get install -y chromium chromium-driver; }
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
# The LangGraph saver's parity workloads (issue 21: L large values, F filter scan, G growing list).
"$VENV/bin/python" benches/langgraph_saver_parity.py --quick > "$SMOKE" 2>&1 || {
  cat "$SMOKE"
  exit 1
}
tail -n 5 "$SMOKE"
rm -f "$SMOKE"
