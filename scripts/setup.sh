#!/usr/bin/env bash
# Prepares a fresh machine for quoll: a virtualenv in .venv with quoll built
# and installed (`pip install .`, which compiles the Rust engine with maturin)
# and the test tools. Idempotent; later runs only rebuild what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! command -v cargo >/dev/null; then
    echo "setup: cargo (Rust) is needed to build quoll's engine: install it from rustup.rs" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet maturin pytest pytest-timeout hypothesis
# A wheel built by maturin into target/, so repeated runs are incremental.
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps .
echo "setup: quoll installed in .venv ($(.venv/bin/quoll --help >/dev/null && echo ok))"
