#!/usr/bin/env bash
# The portable wheel on CPython 3.11, 3.12 and 3.13: each in its own venv (under
# ~/.cache/resumeflow/wheel-venvs, created when missing) with the wheel installed from the
# file, run with no cargo or rustc on PATH. On each: every extra installs and imports, and the
# contract tests (tests/test_api_contract.py, tests/test_resumption.py) pass against the
# installed wheel. `resumeflow demo` needs torch; PyPI's torch is the 4 GB CUDA build, so the
# 3.11 venv borrows the torch of the test venv ($1) through a .pth file instead of downloading
# it again, and runs the demo; 3.12 and 3.13 run everything but the demo.
# Usage: scripts/check-wheel.sh TEST_VENV WHEEL
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TEST_VENV=${1:?usage: check-wheel.sh TEST_VENV WHEEL}
WHEEL=${2:?usage: check-wheel.sh TEST_VENV WHEEL}
BASE=${RESUMEFLOW_WHEEL_VENVS:-$HOME/.cache/resumeflow/wheel-venvs}
PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}
# What the extras import: each must load from the installed wheel.
EXTRA_IMPORTS='import resumeflow, resumeflow.langgraph, resumeflow.server, resumeflow.tracing
from resumeflow.server import mcp_tools
print("extras import:", resumeflow.__version__, resumeflow.__file__)'
for version in 3.11 3.12 3.13; do
  python=$(ls -d "$PYENV_ROOT"/versions/"$version".*/bin/python3 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$python" ]; then
    echo "check-wheel: no CPython $version under $PYENV_ROOT/versions" >&2
    exit 1
  fi
  venv="$BASE/py$version"
  if [ ! -x "$venv/bin/python" ]; then
    echo "check-wheel: creating $venv" >&2
    mkdir -p "$BASE"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
  fi
  # The extras' dependencies (not torch: see above) and the test runner; the wheel itself
  # is reinstalled from the file every time, with its own dependencies.
  stamp="$venv/.deps-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$venv/bin/python" -m pip install -q "${WHEEL}[langgraph,server,mcp,otel]" pytest pytest-timeout
    touch "$stamp"
  fi
  "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$WHEEL"
  if [ "$version" = 3.11 ]; then
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    test_site=$("$TEST_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # Appended after the venv's own site-packages: the wheel installed here comes first.
    echo "import sys; sys.path.append('$test_site')" > "$site/zz_borrowed_torch.pth"
  fi
  # No Rust on PATH: only the venv and the system's binaries.
  clean_path="$venv/bin:/usr/local/bin:/usr/bin:/bin"
  run() { (cd "$ROOT" && env -u PYTHONPATH PATH="$clean_path" "$@"); }
  if run sh -c 'command -v cargo || command -v rustc' >/dev/null; then
    echo "check-wheel: cargo/rustc visible on the clean PATH" >&2
    exit 1
  fi
  echo "== CPython $version: $("$venv/bin/python" -V 2>&1), wheel $(basename "$WHEEL")" >&2
  run "$venv/bin/python" -c "$EXTRA_IMPORTS"
  run "$venv/bin/python" -m pytest tests/test_api_contract.py tests/test_resumption.py -q -p no:cacheprovider
  if [ "$version" = 3.11 ]; then
    run "$venv/bin/resumeflow" demo
  fi
done
