#!/usr/bin/env bash
# Runs every test of quoll: Rust unit and property tests, the Python API
# tests, and the end-to-end tests that start real workers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release -p quoll-core -p quoll-tools -p quoll-py
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout 300 tests/python tests/e2e
