#!/usr/bin/env bash
# Builds the Python package (crates/engram-py) as a wheel into the workspace's target folder,
# installs it into target/pyenv and runs its tests against the CLI (target/debug/engram).
set -euo pipefail
cd "$(dirname "$0")/.."

root=$(pwd)
venv="$root/target/pyenv"
# The shared virtual environment: created once, packages only ever added.
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q maturin pytest numpy safetensors ml_dtypes

# The CLI the tests compare with: ENGRAM_BIN if set, else target/debug/engram, built (or
# brought up to date) here so that both sides run the same library code.
if [ -z "${ENGRAM_BIN:-}" ]; then
  cargo build -q -p engram-cli
  ENGRAM_BIN="$root/target/debug/engram"
fi

# The dev profile reuses the workspace's debug artifacts; wheels go to target/wheels.
wheels="$root/target/wheels"
rm -f "$wheels"/engram-*.whl
CARGO_TARGET_DIR="$root/target" "$venv/bin/maturin" build --profile dev \
  --strip -m crates/engram-py/Cargo.toml -i "$venv/bin/python" -o "$wheels"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheels"/engram-*.whl

ENGRAM_BIN="$ENGRAM_BIN" "$venv/bin/python" -m pytest -q crates/engram-py/tests "$@"
