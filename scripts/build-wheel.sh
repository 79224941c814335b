#!/usr/bin/env bash
# Builds the portable wheel and the sdist into dist/: one abi3 wheel (CPython >= 3.11) for
# manylinux2014 (glibc >= 2.17), cross-linked with zig (`ziglang` from PyPI, in the venv) so it
# installs on any x86_64 Linux without a Rust toolchain; `auditwheel show` must report a
# manylinux tag. Usage: scripts/build-wheel.sh VENV (a venv with maturin, ziglang, auditwheel).
# Prints the wheel's path on its last line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:?usage: build-wheel.sh VENV}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/resumeflow/target}
export PATH="$VENV/bin:$PATH"  # maturin finds zig through `python -m ziglang`
rm -rf "$ROOT/dist"
cd "$ROOT"
maturin build --release --quiet --compatibility manylinux2014 --zig --out dist >&2
maturin sdist --out dist >&2
WHEEL=$(ls dist/resumeflow-*.whl)
SHOWN=$(auditwheel show "$WHEEL")
echo "$SHOWN" | grep -q '"manylinux_2_17_x86_64"' || {
  echo "build-wheel: auditwheel does not report manylinux_2_17 for $WHEEL:" >&2
  echo "$SHOWN" >&2
  exit 1
}
echo "build-wheel: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB), manylinux_2_17_x86_64 per auditwheel; sdist $(ls dist/*.tar.gz)" >&2
echo "$ROOT/$WHEEL"
